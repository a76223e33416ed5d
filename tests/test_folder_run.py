"""`run METHOD --images DIR --out-dir OUT`: one model load, a picture and sidecar per photo, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.app.folder_run import run_on_folder
from engine.app.session import Session
from engine.core.jobs import CancelToken, drive
from tests.conftest import make_tiny_model
from tests.test_cli import cli


def test_a_method_runs_on_every_photo_skips_a_broken_one_and_resumes(capsys, photo_folder, tmp_path):
    out = tmp_path / "maps"
    code, stdout, err = cli(capsys, "run", "saliency", "--images", photo_folder, "--out-dir", out)
    assert code == 0, err
    line = json.loads(stdout)
    assert line["done"] == ["cats/chelsea.png", "coffee.png"] and line["skipped"] == []
    assert line["failed"][0]["image"] == "broken.jpg" and "skipped broken.jpg" in err
    for name in ("cats/chelsea", "coffee"):
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["method"] == "saliency" and sidecar["image_path"].endswith(f"{name.split('/')[-1]}.png")
        assert np.asarray(Image.open(out / f"{name}.png")).std() > 10
    # The picture a single run of the same photo writes, but for the few pixels at a ReLU6's
    # kink: the single run's map is the model's own gradient (its photo's kept graph), the
    # folder run's the fast copy's, whose folded norms round differently
    single = tmp_path / "single.png"
    assert cli(capsys, "run", "saliency", "--image", photo_folder / "coffee.png", "--out", single)[0] == 0
    alone, in_folder = (np.asarray(Image.open(path)).astype(int) for path in (single, out / "coffee.png"))
    assert np.abs(alone - in_folder).max() <= 4 and (alone != in_folder).mean() < 1e-3
    sheet = np.asarray(Image.open(out / "contact-sheet.png"))
    assert sheet.shape[1] >= 2 * 200
    (out / "coffee.png").unlink()  # as if the run had stopped before coffee
    code, stdout, err = cli(capsys, "run", "saliency", "--images", photo_folder, "--out-dir", out)
    line = json.loads(stdout)
    assert line["done"] == ["coffee.png"] and line["skipped"] == ["cats/chelsea.png"]


def test_a_folder_run_says_which_flags_go_together(capsys, photo_folder, tmp_path):
    code, _, err = cli(capsys, "run", "saliency", "--images", photo_folder)
    assert code == 2 and "--images and --out-dir go together" in err
    code, _, err = cli(capsys, "run", "saliency", "--images", photo_folder, "--out-dir", tmp_path / "o",
                       "--out", "x.png")
    assert code == 2 and "--out name one photo's files" in err
    code, _, err = cli(capsys, "run", "saliency", "--images", tmp_path / "none", "--out-dir", tmp_path / "o")
    assert code == 2 and "no such folder" in err


def tiny_session() -> Session:
    session = Session()
    session.model = make_tiny_model(size=16)
    return session


def test_photos_are_predicted_a_group_to_a_pass_and_each_map_uses_its_own_class(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"square{number}.png")
    Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(folder / "wide.png")
    session = tiny_session()
    copy = session.model.state.gradient_network(torch.zeros(1, 3, 16, 16))  # built and checked beforehand
    predictions, gradients = [], []
    hooks = [net.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(tuple(args[0].shape)))
             for net, seen in ((session.model.module, predictions), (copy, gradients))]
    try:
        run = drive(run_on_folder(session, "saliency", {}, folder, tmp_path / "out"))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(run.done) == 6
    # One pass for the five squares and one for the wide photo, to predict, then the same to take gradients.
    assert sorted(predictions) == sorted(gradients) == [(1, 3, 16, 32), (5, 3, 16, 16)]
    for name in run.done:
        sidecar = json.loads((tmp_path / "out" / name).with_suffix(".json").read_text())
        alone = Session()
        alone.model = session.model
        alone.open_image(str(folder / name))
        assert sidecar["target"]["index"] == alone.top5()[0][0]  # the class the window shows for the photo
        single = drive(alone.start("saliency", {}, CancelToken())).provenance
        assert sidecar["image_path"] == single.image_path
        for key in ("score", "max", "mean"):  # each photo's own map, as a run of it alone
            assert sidecar["metrics"][key] == pytest.approx(single.metrics[key], rel=1e-5, abs=1e-7)


def test_a_picture_that_cannot_be_written_fails_its_photo_only(tmp_path, photo_folder):
    out = tmp_path / "out"
    (out / "coffee.png").mkdir(parents=True)  # a folder where coffee's picture goes
    run = drive(run_on_folder(tiny_session(), "saliency", {}, photo_folder, out))
    assert run.done == ["cats/chelsea.png"]
    failed = dict(run.failed)
    assert "coffee.png" in failed and "folder" in failed["coffee.png"] and "broken.jpg" in failed
    assert (out / "cats" / "chelsea.png").is_file() and not (out / "coffee.json").exists()


@pytest.mark.parametrize("variant", ["gradcam", "gradcam++", "scorecam"])
def test_grad_cam_photos_of_one_size_share_a_pass_and_match_their_single_runs(tmp_path, variant):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for number in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"square{number}.png")
    session = tiny_session()
    passes = []
    networks = {session.model.module, session.model.state.gradient_network(torch.zeros(1, 3, 16, 16))}
    hooks = [net.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[0])) for net in networks]
    try:
        run = drive(run_on_folder(session, "gradcam", {"variant": variant}, folder, tmp_path / "out"))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(run.done) == 4
    # The predictions in one pass; then the four maps in one pass, or Score-CAM's passes photo by photo.
    assert passes.count(4) == (1 if variant == "scorecam" else 2)
    for name in run.done:
        sidecar = json.loads((tmp_path / "out" / name).with_suffix(".json").read_text())
        alone = Session()
        alone.model = session.model
        alone.open_image(str(folder / name))
        single = drive(alone.start("gradcam", {"variant": variant}, CancelToken())).provenance
        assert sidecar["params"] == single.params and sidecar["layer"] == single.layer
        for key in ("score", "max", "mean"):
            assert sidecar["metrics"][key] == pytest.approx(single.metrics[key], rel=1e-5, abs=1e-7)
