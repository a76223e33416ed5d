"""`run METHOD --images DIR --out-dir OUT`: one model load, a picture and sidecar per photo, resumable."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

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
    # The same picture as a single run of the same photo writes
    single = tmp_path / "single.png"
    assert cli(capsys, "run", "saliency", "--image", photo_folder / "coffee.png", "--out", single)[0] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(out / "coffee.png")))
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
