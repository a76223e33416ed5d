"""Evaluate > Compare methods and Evaluate > Run on a folder, in the real window."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
from PIL import Image

from engine.data.samples import sample_path

TIMEOUT = 120_000


def compare(window, qtbot, methods=("saliency", "gradcam"), steps=6):
    window.open_compare_view()
    view = window.compare_view
    for method_id, box in view.method_boxes.items():
        box.setChecked(method_id in methods)
    view.steps.setValue(steps)
    view.start()
    qtbot.waitUntil(lambda: view.compare_button.isEnabled(), timeout=TIMEOUT)
    return view


def test_the_compare_view_scores_the_methods_beside_the_references_and_sorts(window, qtbot):
    view = compare(window, qtbot)
    report = window.session.comparison
    names = [m.name for m in report.maps]
    assert names == ["saliency", "gradcam", "reference: random", "reference: centre", "reference: edges"]
    assert view.table.rowCount() == 5
    for kind, plot in view.plots.items():  # a curve per map, references dashed
        assert len(plot.getPlotItem().listDataItems()) == 5
    assert view.strip.count() - 1 == 5  # a tile per map (and the stretch)
    assert "Scored for" in view.status.text() and view.export_figure_button.isEnabled()
    # The table sorts by a score, as numbers
    view.table.sortItems(1)
    deletions = [float(view.table.item(row, 1).text()) for row in range(5)]
    assert deletions == sorted(deletions)
    # A row's scores are the report's
    row = next(r for r in range(5) if view.table.item(r, 0).text() == "gradcam")
    gradcam = next(m for m in report.maps if m.name == "gradcam")
    assert view.table.item(row, 2).text() == f"{gradcam.scores['insertion']:.3f}"


def test_a_compared_map_opens_on_the_canvas_and_the_comparison_exports(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    view = compare(window, qtbot, methods=("gradcam",))
    view.open_map("gradcam")
    shown = window.session.shown
    assert shown.provenance.method == "gradcam" and window.canvas.display is shown.display
    figure, table = tmp_path / "comparison.png", tmp_path / "comparison.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(figure), ""))
    view.export_figure()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(table), ""))
    view.export_table()
    picture = np.asarray(Image.open(figure))
    assert picture.shape[0] > 500 and picture.std() > 10
    rows = list(csv.DictReader(table.open()))
    assert [row["map"] for row in rows] == ["gradcam", "reference: random", "reference: centre", "reference: edges"]


def test_a_refused_method_is_listed_with_its_reason_and_the_rest_is_scored(window, qtbot):

    view = compare(window, qtbot, methods=("saliency", "attention-rollout"))  # the bundled CNN has no attention
    from gui.compare_view import NOTE

    rows = {view.table.item(r, 0).text(): view.table.item(r, NOTE).text() for r in range(view.table.rowCount())}
    assert "attention" in rows["attention-rollout"]
    assert rows["saliency"] == ""


def test_run_on_a_folder_keeps_the_photo_on_show(window, qtbot, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_path("coffee"), photos / "coffee.png")
    (photos / "broken.jpg").write_bytes(b"no")
    out = tmp_path / "out"
    before = window.session.image.path
    done = []
    handle = window.run_on_folder("saliency", window.panels["saliency"].values(), str(photos), str(out))
    handle.finished.connect(done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)
    run = done[0]
    assert run.done == ["coffee.png"] and run.failed[0][0] == "broken.jpg"
    assert json.loads((out / "coffee.json").read_text())["method"] == "saliency"
    assert (out / "contact-sheet.png").exists()
    assert window.session.image.path == before  # the window's own session was left alone
    assert "1 skipped: broken.jpg" in window.status.text.text()


def test_the_randomisation_score_has_its_column_when_ticked(window, qtbot):
    from gui.compare_view import METRIC_COLUMNS

    window.open_compare_view()
    view = window.compare_view
    view.score_boxes["randomisation"].setChecked(True)
    view.score_boxes["insertion"].setChecked(False)
    try:
        view = compare(window, qtbot, methods=("saliency",))
    finally:
        view.score_boxes["randomisation"].setChecked(False)
        view.score_boxes["insertion"].setChecked(True)
    column = METRIC_COLUMNS["randomisation"]
    assert not view.table.isColumnHidden(column) and view.table.isColumnHidden(METRIC_COLUMNS["insertion"])
    values = {view.table.item(r, 0).text(): float(view.table.item(r, column).text()) for r in range(4)}
    assert values["reference: edges"] == 1.0 and values["saliency"] < 1.0
