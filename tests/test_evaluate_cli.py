"""`python main.py evaluate`: methods scored over a folder, resumable, with a summary and a report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import cli
from engine.evaluation.folder import read_boxes
from engine.core.errors import MethodInputError

QUICK = ["--methods", "saliency,gradcam", "--steps", "4"]


def test_evaluate_scores_every_photo_reports_an_unreadable_one_and_writes_the_summary(capsys, photo_folder,
                                                                                       tmp_path):
    out = tmp_path / "scores"
    code, stdout, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", out, *QUICK)
    assert code == 0, err
    line = json.loads(stdout)
    assert line["photos"] == 2 and line["unreadable"] == 1
    assert set(line["maps"]) == {"saliency", "gradcam", "reference: random", "reference: centre", "reference: edges"}
    lines = [json.loads(text) for text in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted(entry["image"] for entry in lines) == ["broken.jpg", "cats/chelsea.png", "coffee.png"]
    assert "not" in next(entry for entry in lines if entry["image"] == "broken.jpg")["error"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 2 * 5 and {"deletion", "insertion", "beats_edges"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    chelsea = next(entry for entry in lines if entry["image"] == "cats/chelsea.png")
    coffee = next(entry for entry in lines if entry["image"] == "coffee.png")
    mean = np.mean([chelsea["maps"]["gradcam"]["scores"]["insertion"], coffee["maps"]["gradcam"]["scores"]["insertion"]])
    assert summary["maps"]["gradcam"]["insertion"]["mean"] == pytest.approx(mean, abs=1e-6)
    report = np.asarray(Image.open(out / "report.png"))
    assert report.shape[0] > 600 and report.std() > 10  # two plots with lines on them
    assert "photos to score" in err  # progress on stderr


def test_evaluate_resumes_where_it_stopped_and_refuses_other_settings_in_the_same_folder(capsys, photo_folder, tmp_path):
    out = tmp_path / "scores"
    assert cli(capsys, "evaluate", "--images", photo_folder, "--out", out, *QUICK)[0] == 0
    first = (out / "scores.jsonl").read_text().splitlines()
    kept = [text for text in first if "broken" in text]  # as if the run had stopped while writing chelsea's line
    (out / "scores.jsonl").write_text("\n".join(kept) + "\n" + '{"image": "cats/chel')
    code, stdout, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", out, *QUICK)
    assert code == 0, err
    assert "2 of 3 photos to score (1 scored before)" in err
    assert json.loads(stdout)["photos"] == 2
    code, _, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", out, "--methods", "saliency",
                       "--steps", "4")
    assert code == 2 and "other settings" in err


def test_the_pointing_game_reads_boxes_in_the_photos_pixels(capsys, photo_folder, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nchelsea.png,20,0,400,300\n")  # the cat, which fills most of the photo
    out = tmp_path / "scores"
    code, stdout, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", out, "--methods", "gradcam",
                            "--metrics", "pointing", "--boxes", boxes)
    assert code == 0, err
    lines = {json.loads(t)["image"]: json.loads(t) for t in (out / "scores.jsonl").read_text().splitlines()}
    assert lines["cats/chelsea.png"]["maps"]["gradcam"]["scores"]["pointing"] == 1.0
    assert lines["coffee.png"]["maps"]["gradcam"]["scores"] == {}  # no boxes: not scored on them


@pytest.mark.parametrize("text, suffix, message", [
    ("chelsea.png,1,2,3\n", ".csv", "expected image,x0,y0,x1,y1"),
    ("chelsea.png,1,2,a,4\n", ".csv", "four numbers"),
    ("chelsea.png,5,2,3,4\n", ".csv", "x1 > x0"),
    ("[1, 2]", ".json", "must map each image's name"),
    ("{", ".json", "is not JSON"),
])
def test_a_bad_boxes_file_is_refused_with_the_line_and_the_reason(tmp_path, text, suffix, message):
    path = tmp_path / f"boxes{suffix}"
    path.write_text(text)
    with pytest.raises(MethodInputError, match=message):
        read_boxes(path)


def test_evaluate_refuses_unknown_methods_metrics_and_a_pointing_game_without_boxes(capsys, photo_folder, tmp_path):
    code, _, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", tmp_path / "a", "--methods", "magic")
    assert code == 2 and "no method magic" in err
    code, _, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", tmp_path / "b", "--metrics", "beauty")
    assert code == 2 and "no metric beauty" in err
    code, _, err = cli(capsys, "evaluate", "--images", photo_folder, "--out", tmp_path / "c", "--metrics", "pointing")
    assert code == 2 and "needs a boxes file" in err
    code, _, err = cli(capsys, "evaluate", "--images", tmp_path / "nowhere", "--out", tmp_path / "d")
    assert code == 2 and "no such folder" in err
