"""The command line: METHODS.md's contract, one JSON line, exit status 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_the_bundled_model_and_the_zoo(capsys):
    code, out, _ = cli(capsys, "models")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names[0] == "efficientnet_lite0"
    assert {"alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "googlenet", "squeezenet1_1",
            "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"} <= set(names)


def test_layers_prints_shapes_and_receptive_fields(capsys):
    code, out, _ = cli(capsys, "layers")
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("stem.conv"))
    assert "32" in line and "112" in line and "3" in line


def test_classify_prints_top5_json(capsys, chelsea_path):
    code, out, _ = cli(capsys, "classify", "--image", chelsea_path)
    result = json.loads(out)
    assert code == 0 and len(result["top5"]) == 5
    assert result["top5"][0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}


@pytest.mark.parametrize("method, extra", [
    ("filters", []),
    ("activations", ["--layer", "early"]),
    ("saliency", ["--target", "tabby"]),
    ("dream", ["--steps", "2", "--octaves", "2", "--size", "96", "--seed", "1"]),
])
def test_run_prints_one_json_line_and_writes_outputs(capsys, tmp_path, chelsea_path, method, extra):
    out_png, array = tmp_path / f"{method}.png", tmp_path / f"{method}.npy"
    code, out, err = cli(capsys, "run", method, "--image", chelsea_path, "--out", out_png, "--save-array", array, *extra)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("method", "model", "layer", "target", "seconds", "top5", "out", "metrics"):
        assert key in result
    assert result["method"] == method and result["model"] == "efficientnet_lite0"
    assert result["top5"][0][0] in {"Egyptian cat", "tabby", "tiger cat"}
    assert Path(result["out"]) == out_png and out_png.exists()
    assert json.loads(out_png.with_suffix(".json").read_text())["method"] == method
    saved = np.load(array)
    assert saved.dtype == np.float32 and np.isfinite(saved).all()
    if method == "saliency":
        assert result["target"] == {"index": 281, "label": "tabby"}
        # Raw map at the model input's resolution: 224 on the short side, no crop.
        assert saved.shape == (224, 337)
    if method == "dream":
        assert {"loss_first", "loss_last", "norm_first", "norm_last"} <= set(result["metrics"])
    if method == "activations":
        assert result["layer"] == "stages.1.1.expand_relu6" and saved.shape[0] == 144


@pytest.mark.parametrize("args, message", [
    (["run", "saliency", "--image", "{missing}"], "no such file"),
    (["run", "saliency", "--image", "{text}"], "not an image"),
    (["run", "saliency", "--image", "{empty}"], "empty (0 bytes)"),
    (["classify", "--image", "{truncated}"], "truncated"),
    (["run", "saliency", "--image", "{photo}", "--target", "nonsense-class"], "no class is called"),
    (["run", "activations", "--image", "{photo}", "--layer", "no.such.layer"], "has no layer"),
    (["run", "dream", "--image", "{photo}", "--steps", "0"], "at least 1"),
    (["run", "saliency"], "needs an image"),
    (["classify", "--image", "{photo}", "--model", "resnet9000"], "unknown model"),
    (["run", "nosuchmethod"], "invalid choice"),
    (["run", "saliency", "--image", "{photo}", "--device", "cuda:7"], "cuda"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, chelsea_path, args, message):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.jpg"
    Image.open(chelsea_path).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    paths = {"missing": tmp_path / "nope.png", "text": text, "photo": chelsea_path, "empty": empty, "truncated": truncated}
    code, out, err = cli(capsys, *[a.format(**paths) for a in args])
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err.lower()


def test_missing_zoo_weights_say_which_file_and_how_to_supply_it(capsys, tmp_path, monkeypatch, chelsea_path):
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _out, err = cli(capsys, "classify", "--image", chelsea_path, "--model", "squeezenet1_1")
    assert code == 2
    assert "squeezenet1_1-b8a52dc0.pth" in err and str(tmp_path) in err and "--weights" in err


def test_cli_and_engine_never_import_qt():
    code = ("import sys, engine.app.cli, engine.app.session, engine.methods, engine.view.export; "
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_main_py_runs_the_cli_as_a_subprocess(tmp_path, chelsea_path):
    out = tmp_path / "f.png"
    completed = subprocess.run([sys.executable, "main.py", "run", "filters", "--out", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["layer"] == "stem.conv"
    assert Image.open(out).size[0] > 20
    bad = subprocess.run([sys.executable, "main.py", "run", "saliency", "--image", str(tmp_path / "none.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_out_of_memory_exits_3_with_one_line(capsys, monkeypatch, chelsea_path):
    from engine import methods

    def greedy(ctx, p):
        raise MemoryError()
        yield  # a generator, like every method

    monkeypatch.setitem(methods.METHODS, "saliency", methods.METHODS["saliency"].__class__(
        **{**methods.METHODS["saliency"].__dict__, "run": greedy}))
    code, out, err = cli(capsys, "run", "saliency", "--image", chelsea_path)
    assert code == 3 and out == ""
    assert err.strip().splitlines() == ["error: ran out of memory: try a smaller image size or fewer steps, or close other programs (on a GPU, the CPU has more memory)"]


def test_dataset_methods_report_and_skip_a_corrupt_file(capsys, tmp_path, monkeypatch, labelled_folder):
    """neighbors, embed and patches on a folder with one damaged file: it is listed, the rest works."""
    (labelled_folder / "photo" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    chelsea = labelled_folder / "photo" / "chelsea.png"
    runs = {
        "neighbors": ["--image", chelsea, "--k", "3"],
        "embed": ["--algo", "pca", "--save-array", tmp_path / "xy.npy"],
        "patches": ["--layer", "stages.1.1.expand_relu6", "--channels", "0-2", "--top", "2"],
    }
    for method, extra in runs.items():
        code, out, err = cli(capsys, "run", method, "--dataset", labelled_folder, *extra)
        assert code == 0, err
        result = json.loads(out)
        assert [s["path"].rsplit("/", 1)[1] for s in result["metrics"]["skipped"]] == ["broken.jpg"], method
    xy = np.load(tmp_path / "xy.npy")
    assert xy.shape == (9, 2) and len(result["metrics"]["patches"]["0"]) == 2


# --------------------------------------------------------------------------- writing the outputs


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag", ["--out", "--save-array", "--animation"])
def test_an_output_naming_a_folder_exits_2_before_the_run(capsys, tmp_path, monkeypatch, flag, chelsea_path):
    from engine.app import session

    folder = tmp_path / ("taken.gif" if flag == "--animation" else "taken")
    folder.mkdir()
    monkeypatch.setattr(session, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code, out, err = cli(capsys, "run", "dream", "--image", chelsea_path, flag, folder, "--steps", "1", "--size", "32")
    assert code == 2 and out == ""
    assert one_line(err) == f"error: cannot write {folder} ({flag}): it is a folder"


def test_an_output_under_a_file_exits_2(capsys, tmp_path, chelsea_path):
    (tmp_path / "notes.txt").write_text("a file")
    target = tmp_path / "notes.txt" / "out.png"
    code, out, err = cli(capsys, "run", "saliency", "--image", chelsea_path, "--out", target)
    assert code == 2 and out == ""
    assert one_line(err) == f"error: cannot write {target} (--out): {tmp_path / 'notes.txt'} is a file, not a folder"


def test_existing_files_are_refused_without_overwrite(capsys, tmp_path, chelsea_path):
    out = tmp_path / "saliency.png"
    assert cli(capsys, "run", "saliency", "--image", chelsea_path, "--out", out)[0] == 0
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    code, printed, err = cli(capsys, "run", "saliency", "--image", chelsea_path, "--target", "1", "--out", out)
    assert code == 2 and printed == ""
    assert one_line(err) == f"error: {out} (--out) exists already; add --overwrite to replace it"
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    out.unlink()  # the sidecar alone is in the way too
    code, _printed, err = cli(capsys, "run", "saliency", "--image", chelsea_path, "--out", out)
    assert code == 2 and "saliency.json (the sidecar of --out) exists already" in one_line(err)
    code, _printed, err = cli(capsys, "run", "saliency", "--image", chelsea_path, "--target", "1", "--out", out, "--overwrite")
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["target"]["index"] == 1


def test_a_full_disk_exits_2_and_writes_none_of_the_outputs(capsys, tmp_path, monkeypatch, chelsea_path):
    from engine.data import images

    real_stage = images._stage

    def disk_full_for_the_animation(target, write):
        if Path(target).suffix == ".gif":
            raise OSError(28, "No space left on device")
        return real_stage(target, write)

    monkeypatch.setattr(images, "_stage", disk_full_for_the_animation)
    out, array, animation = tmp_path / "d.png", tmp_path / "d.npy", tmp_path / "d.gif"
    code, printed, err = cli(capsys, "run", "dream", "--image", chelsea_path, "--steps", "2", "--octaves", "1", "--size", "32",
                             "--out", out, "--save-array", array, "--animation", animation)
    assert code == 2 and printed == ""
    assert one_line(err) == f"error: cannot write {animation} (--animation): the disk is full"
    assert list(tmp_path.iterdir()) == []  # the picture, its sidecar and the array were not left without it


def test_a_read_only_folder_exits_2(capsys, tmp_path, monkeypatch):
    import errno
    import os

    from engine.data import images

    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:  # root writes anyway: there the refusal is injected below
        folder.chmod(0o500)
        try:
            code, _out, err = cli(capsys, "run", "filters", "--out", folder / "f.png")
            assert code == 2 and "no permission to write in" in one_line(err)
        finally:
            folder.chmod(0o700)
    monkeypatch.setattr(images, "_stage", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    code, _out, err = cli(capsys, "run", "filters", "--save-array", folder / "f.npy")
    assert code == 2
    assert one_line(err) == f"error: cannot write {folder / 'f.npy'} (--save-array): no permission to write in {folder}"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--animation", "{tmp}/run.avi"], "run.avi: an animation is written as .gif or .mp4, not '.avi'"),
    (["--out", "{tmp}/a.png", "--save-array", "{tmp}/a.json"], "the sidecar is written there too"),
    (["--out", "{tmp}/a.json"], "give the picture a .png name"),
])
def test_output_names_that_cannot_work_exit_2_before_the_run(capsys, tmp_path, args, message):
    code, out, err = cli(capsys, "run", "dream", "--steps", "1", "--size", "32", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and out == "" and message in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_the_window_and_the_command_line_write_the_same_sidecar(capsys, tmp_path, chelsea_path, bundled):
    from engine.app.session import Session
    from engine.core.jobs import CancelToken, drive

    out = tmp_path / "cli.png"
    assert cli(capsys, "run", "saliency", "--image", chelsea_path, "--target", "tabby", "--out", out)[0] == 0
    session = Session()
    session.model = bundled
    session.open_image(chelsea_path)
    session.show(drive(session.start("saliency", {"target": "tabby"}, CancelToken())))
    from_cli = json.loads(out.with_suffix(".json").read_text())
    from_session = session.sidecar()
    drop = {"created", "metrics"}  # the time, and the float noise of two runs
    assert {k: v for k, v in from_cli.items() if k not in drop} == {k: v for k, v in from_session.items() if k not in drop}
    np.testing.assert_array_equal(np.asarray(Image.open(out)), session.figure())
