"""Exporting the canvas: a PNG with exactly its pixels, and a JSON sidecar that says how."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data

import engine
from engine.view import export
from engine.view.export import build_sidecar, export_png, sidecar_path_for, to_jsonable

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return data.chelsea()


@pytest.fixture
def sidecar(tmp_path) -> dict:
    return build_sidecar(
        model="efficientnet_lite0",
        weights="imagenet (timm)",
        layer="blocks.3.conv_pw",
        method="gradcam",
        params={"steps": np.int64(40), "sigma": np.float32(0.5), "size": (224, 224), "smooth": True},
        image_path=tmp_path / "cat.jpg",
        preprocessing={"size": 224, "mean": (0.485, 0.456, 0.406)},
        device="cpu",
        metrics={"score": np.float64(0.875), "drop": float("nan")},
        target=np.int64(281),
    )


def read_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    # parse_constant refuses NaN and Infinity, which json.dumps would write by default.
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# --------------------------------------------------------------------------- sidecar


def test_sidecar_records_what_made_the_picture(sidecar, tmp_path):
    assert sidecar["convscope_sidecar"] == export.SIDECAR_FORMAT
    assert sidecar["model"] == "efficientnet_lite0"
    assert sidecar["weights"] == "imagenet (timm)"
    assert sidecar["layer"] == "blocks.3.conv_pw"
    assert sidecar["method"] == "gradcam"
    assert sidecar["target"] == 281
    assert sidecar["params"] == {"steps": 40, "sigma": 0.5, "size": [224, 224], "smooth": True}
    assert sidecar["image_path"] == str(tmp_path / "cat.jpg")
    assert sidecar["preprocessing"] == {"size": 224, "mean": [0.485, 0.456, 0.406]}
    assert sidecar["device"] == "cpu"
    assert sidecar["metrics"] == {"score": 0.875, "drop": None}


def test_sidecar_holds_only_plain_json_types(sidecar):
    def plain(value):
        if isinstance(value, dict):
            return all(type(key) is str and plain(item) for key, item in value.items())
        if isinstance(value, list):
            return all(plain(item) for item in value)
        return value is None or type(value) in (bool, int, float, str)

    assert plain(sidecar)


def test_sidecar_records_versions(sidecar):
    versions = sidecar["versions"]
    assert versions["convscope"] == engine.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["torch"] == str(torch.__version__)
    assert versions["torchvision"] == str(torchvision.__version__)
    assert versions["numpy"] == np.__version__
    assert versions["pillow"] == PIL.__version__
    assert isinstance(versions["platform"], str) and versions["platform"]


def test_sidecar_timestamp_is_iso_with_time_zone(sidecar):
    created = datetime.datetime.fromisoformat(sidecar["created"])
    assert created.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(minutes=5)


def test_sidecar_without_optional_parts(tmp_path):
    # Feature visualisation draws from noise: no image, no preprocessing, no metrics.
    sidecar = build_sidecar(model="m", weights="w", layer=None, method="dream", params={}, image_path=None)
    assert sidecar["image_path"] is None
    assert sidecar["preprocessing"] == {} and sidecar["metrics"] == {}
    assert sidecar["device"] == "cpu" and sidecar["target"] is None


def test_to_jsonable_converts_what_json_cannot_write(tmp_path):
    value = {
        "int": np.int32(3),
        "float": np.float16(0.5),
        "bool": np.bool_(True),
        "array": np.arange(4).reshape(2, 2),
        "tensor": torch.tensor([1.5, 2.5]),
        "tuple": (1, (2, 3)),
        "set": {3, 1, 2},
        "path": tmp_path / "a b.png",
        "infinite": np.float64("inf"),
        7: "int key",
        "device": torch.device("cpu"),
    }
    assert to_jsonable(value) == {
        "int": 3,
        "float": 0.5,
        "bool": True,
        "array": [[0, 1], [2, 3]],
        "tensor": [1.5, 2.5],
        "tuple": [1, [2, 3]],
        "set": [1, 2, 3],
        "path": str(tmp_path / "a b.png"),
        "infinite": None,
        "7": "int key",
        "device": "cpu",
    }


# --------------------------------------------------------------------------- export


def test_export_writes_png_and_sidecar_side_by_side(tmp_path, picture, sidecar):
    png, sidecar_file = export_png(tmp_path / "cat.gradcam.png", picture, sidecar)
    assert png == tmp_path / "cat.gradcam.png"
    assert sidecar_file == tmp_path / "cat.gradcam.json" == sidecar_path_for(png)
    assert sorted(tmp_path.iterdir()) == [sidecar_file, png]


def test_png_pixels_equal_the_array(tmp_path, picture, sidecar):
    mirrored = picture[:, ::-1]  # a strided view, as the canvas may hand over
    png, _ = export_png(tmp_path / "out.png", mirrored, sidecar)
    with Image.open(png) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), mirrored)


def test_sidecar_round_trips_through_json(tmp_path, picture, sidecar):
    _, sidecar_file = export_png(tmp_path / "out.png", picture, sidecar)
    loaded = read_json(sidecar_file)
    assert loaded == sidecar
    assert loaded["model"] == "efficientnet_lite0"
    assert loaded["layer"] == "blocks.3.conv_pw"
    assert loaded["method"] == "gradcam"
    assert loaded["params"] == {"steps": 40, "sigma": 0.5, "size": [224, 224], "smooth": True}
    assert loaded["versions"]["torch"] == str(torch.__version__)


def test_hand_built_sidecar_is_made_valid_json(tmp_path, picture):
    sidecar = {"source": tmp_path / "x.png", "mean": np.float32(0.25), "shape": (3, 4), "score": float("nan")}
    _, sidecar_file = export_png(tmp_path / "out.png", picture, sidecar)
    assert read_json(sidecar_file) == {"source": str(tmp_path / "x.png"), "mean": 0.25, "shape": [3, 4], "score": None}


@pytest.mark.parametrize("existing", ["out.png", "out.json"])
def test_no_overwrite_without_permission(tmp_path, picture, sidecar, existing):
    taken = tmp_path / existing
    taken.write_bytes(b"someone's earlier work")
    with pytest.raises(FileExistsError, match=existing):
        export_png(tmp_path / "out.png", picture, sidecar)
    # Neither file was written: the one that existed is untouched, the other is absent.
    assert sorted(tmp_path.iterdir()) == [taken]
    assert taken.read_bytes() == b"someone's earlier work"


def test_overwrite_replaces_both_files(tmp_path, picture, sidecar):
    export_png(tmp_path / "out.png", picture, sidecar)
    inverted = 255 - picture
    changed = {**sidecar, "method": "saliency"}
    png, sidecar_file = export_png(tmp_path / "out.png", inverted, changed, overwrite=True)
    with Image.open(png) as saved:
        np.testing.assert_array_equal(np.asarray(saved), inverted)
    assert read_json(sidecar_file)["method"] == "saliency"
    assert sorted(tmp_path.iterdir()) == [sidecar_file, png]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),  # a float 0..1 picture
        np.zeros((4, 4), np.uint8),  # grayscale
        np.zeros((4, 4, 4), np.uint8),  # RGBA
    ],
    ids=["float", "2d", "rgba"],
)
def test_bad_array_is_refused_before_anything_is_written(tmp_path, sidecar, bad):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        export_png(tmp_path / "out.png", bad, sidecar)
    assert list(tmp_path.iterdir()) == []


def test_json_name_is_refused(tmp_path, picture, sidecar):
    with pytest.raises(ValueError, match=r"\.json"):
        export_png(tmp_path / "out.json", picture, sidecar)
    assert list(tmp_path.iterdir()) == []


def test_failed_sidecar_write_removes_the_new_png(tmp_path, picture, sidecar, monkeypatch):
    from engine.data import images

    real_stage = images._stage

    def disk_full_for_json(path, write, **kwargs):
        if Path(path).suffix == ".json":
            raise OSError(28, "No space left on device")
        return real_stage(path, write, **kwargs)

    monkeypatch.setattr(images, "_stage", disk_full_for_json)
    with pytest.raises(OSError, match="No space"):
        export_png(tmp_path / "out.png", picture, sidecar)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- writing files together


def _fail_on_call(real, failing_call: int, error: OSError):
    """``real`` wrapped so that its ``failing_call``-th call (from 1) raises ``error``."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == failing_call:
            raise error
        return real(*args, **kwargs)

    return wrapper, calls


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("step", ["stage", "link", "replace"])
def test_a_failure_at_any_step_leaves_all_old_or_all_new(tmp_path, picture, sidecar, monkeypatch, step):
    """A new export over an old one, failing at every single step in turn (a full disk while
    writing, a failing hard link, a failing rename): afterwards the folder holds exactly the
    old pair or exactly the new pair, and no temporary file."""
    import errno
    import os

    from engine.data import images

    work = tmp_path / "work"
    inverted, changed = 255 - picture, {**sidecar, "method": "saliency"}
    export_png(work / "out.png", inverted, changed)
    new_png = (work / "out.png").read_bytes()
    targets = {"stage": (images, "_stage"), "link": (os, "link"), "replace": (os, "replace")}
    owner, name = targets[step]
    rolled_back = 0
    for failing_call in range(1, 6):
        export_png(work / "out.png", picture, sidecar, overwrite=True)
        old = _snapshot(work)
        wrapper, calls = _fail_on_call(getattr(owner, name), failing_call, OSError(errno.ENOSPC, "No space left on device"))
        with monkeypatch.context() as patch:
            patch.setattr(owner, name, wrapper)
            try:
                export_png(work / "out.png", inverted, changed, overwrite=True)
            except OSError as error:
                assert error.errno == errno.ENOSPC and Path(error.filename).name in ("out.png", "out.json")
                assert _snapshot(work) == old  # all old, nothing else in the folder
                rolled_back += 1
            else:
                after = _snapshot(work)
                assert set(after) == {"out.png", "out.json"}  # no temporary file left behind
                assert after["out.png"] == new_png and json.loads(after["out.json"])["method"] == "saliency"
        if calls[0] < failing_call:
            break  # this step happens fewer times than that: every place has been tried
    if step == "link":
        assert rolled_back == 0  # no hard links there: the old file is moved aside instead, and all goes on
    else:
        assert rolled_back == 2  # a failure on the PNG and one on the sidecar, each undone


def test_the_old_files_are_put_back_when_the_second_rename_fails(tmp_path, picture, sidecar, monkeypatch):
    import errno
    import os

    export_png(tmp_path / "out.png", picture, sidecar)
    before = _snapshot(tmp_path)
    wrapper, _calls = _fail_on_call(os.replace, 2, OSError(errno.EIO, "Input/output error"))
    monkeypatch.setattr(os, "replace", wrapper)
    with pytest.raises(OSError, match="Input/output") as caught:
        export_png(tmp_path / "out.png", 255 - picture, {**sidecar, "method": "x"}, overwrite=True)
    monkeypatch.undo()
    assert Path(caught.value.filename).name == "out.json"  # the file whose move failed, not a temporary
    assert _snapshot(tmp_path) == before  # the PNG moved in first was put back


def test_without_hard_links_the_old_file_is_moved_aside_and_back(tmp_path, picture, sidecar, monkeypatch):
    import errno
    import os

    export_png(tmp_path / "out.png", picture, sidecar)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "Operation not permitted")))
    real_replace = os.replace
    moves = []

    def replace_failing_on_the_json(source, target):
        moves.append((Path(source).name, Path(target).name))
        if Path(source).suffix == ".part" and Path(target).name == "out.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_failing_on_the_json)
    with pytest.raises(OSError):
        export_png(tmp_path / "out.png", 255 - picture, sidecar, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before
    assert any(target.startswith(".out.png.") for _source, target in moves)  # the old PNG was moved aside


@pytest.mark.parametrize("case", ["folder", "parent is a file"])
def test_a_folder_or_a_file_in_the_way_is_refused_before_writing(tmp_path, picture, sidecar, case):
    import errno

    if case == "folder":
        (tmp_path / "out.png").mkdir()
        target, expected = tmp_path / "out.png", errno.EISDIR
    else:
        (tmp_path / "notes").write_text("a file")
        target, expected = tmp_path / "notes" / "deeper" / "out.png", errno.ENOTDIR
    with pytest.raises(OSError) as caught:
        export_png(target, picture, sidecar, overwrite=True)
    assert caught.value.errno == expected
    assert export.describe_write_failure(target, caught.value) == (
        "it is a folder" if case == "folder" else f"{tmp_path / 'notes'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["out.png"] if case == "folder" else ["notes"])


@pytest.mark.parametrize("code, words", [(28, "the disk is full"), (30, "read-only"), (13, "no permission")])
def test_write_failures_are_said_in_plain_words(tmp_path, code, words):
    assert words in export.describe_write_failure(tmp_path / "a.png", OSError(code, "raw"))


def test_importing_export_loads_neither_torch_nor_qt():
    probe = (
        "import sys, engine.view.export; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'PySide6', 'PyQt5', 'PyQt6')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
