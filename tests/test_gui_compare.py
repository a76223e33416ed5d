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


def test_run_on_a_folder_keeps_the_photo_on_show_and_shows_its_contact_sheet(window, qtbot, tmp_path, monkeypatch):
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
    qtbot.waitUntil(lambda: window.folder_run_dialog is not None and window.folder_run_dialog.isVisible(),
                    timeout=TIMEOUT)
    assert "Saliency on 1 photo; 1 skipped (see below)." in window.status.text.text()
    dialog = window.folder_run_dialog
    assert not dialog.sheet.pixmap().isNull()  # the contact sheet, shown
    assert dialog.failures.isVisibleTo(dialog) and dialog.failures.toPlainText().startswith("broken.jpg ")
    assert str(out) in dialog.summary.text()
    opened = []
    monkeypatch.setattr("gui.folder_run_dialog.QDesktopServices.openUrl", lambda url: opened.append(url.toLocalFile()))
    dialog.open_folder.click()
    assert opened == [str(out)]
    dialog.close()


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


# -- the pointing game: boxes around the object --------------------------------------------------
def drag(qtbot, picker, box) -> None:
    """Drag on the picker from the photo's pixel (x0, y0) to (x1, y1)."""
    from PySide6.QtCore import Qt

    x0, y0, x1, y1 = box
    start, end = picker.widget_point(x0, y0).toPoint(), picker.widget_point(x1, y1).toPoint()
    qtbot.mousePress(picker, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(picker, pos=(start + end) / 2)
    qtbot.mouseRelease(picker, Qt.MouseButton.LeftButton, pos=end)


def pointing_only(view) -> None:
    for metric, box in view.score_boxes.items():
        box.setChecked(metric == "pointing")


def pointing(view) -> dict[str, str]:
    from gui.compare_view import METRIC_COLUMNS

    column = METRIC_COLUMNS["pointing"]
    return {view.table.item(r, 0).text(): view.table.item(r, column).text() for r in range(view.table.rowCount())}


def test_without_boxes_the_pointing_game_waits_for_one_and_says_how(window, qtbot):
    from gui.compare_view import NEEDS_BOXES

    window.open_compare_view()
    view = window.compare_view
    assert not view.score_boxes["pointing"].isEnabled() and not view.score_boxes["pointing"].isChecked()
    assert view.score_boxes["pointing"].toolTip() == NEEDS_BOXES
    view.score_boxes["pointing"].setChecked(True)  # as if ticked all the same
    view.start()
    assert view.status.text() == NEEDS_BOXES and "Load boxes file" in NEEDS_BOXES
    assert view.compare_button.isEnabled() and window.session.comparison is None  # nothing ran


def test_boxes_drawn_on_the_photo_score_the_pointing_game_and_export_with_it(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from engine.evaluation.folder import read_boxes
    from engine.evaluation.pointing import pointing_game
    from engine.evaluation.report import boxes_in_input

    window.open_compare_view()
    view = window.compare_view
    drag(qtbot, view.picker, (4, 4, 44, 44))  # a corner of the 451x300 photo (QTest takes (0, 0) for the middle)
    (corner,) = window.session.boxes
    assert all(abs(a - b) <= 2 for a, b in zip(corner, (4, 4, 44, 44))) and corner == tuple(map(int, corner))
    assert view.picker.boxes == [corner] and view.score_boxes["pointing"].isChecked()  # drawn: the game is asked for
    pointing_only(view)
    compare(window, qtbot, methods=("saliency",))
    report = window.session.comparison
    assert report.boxes == [corner] and pointing(view)["reference: centre"] == "miss"  # its peak is in the middle
    saliency = report.maps[0]
    height, width = saliency.values.shape
    assert saliency.scores["pointing"] == pointing_game(saliency.values, boxes_in_input([corner], (451, 300),
                                                                                        (width, height))).hit
    # A box on saliency's peak and one in the middle: both maps point at the object
    row, column = np.unravel_index(np.argmax(saliency.values), saliency.values.shape)
    x, y = (column + 0.5) * 451 / width, (row + 0.5) * 300 / height
    view.clear_boxes()
    assert window.session.boxes == () and view.picker.boxes == [] and not view.score_boxes["pointing"].isEnabled()
    drag(qtbot, view.picker, (max(x - 12, 2), max(y - 12, 2), min(x + 12, 449), min(y + 12, 298)))
    drag(qtbot, view.picker, (200, 125, 250, 175))
    assert len(window.session.boxes) == 2 and view.picker.boxes == list(window.session.boxes)
    pointing_only(view)
    compare(window, qtbot, methods=("saliency",))
    assert pointing(view)["saliency"] == "hit" and pointing(view)["reference: centre"] == "hit"
    assert "Peak on the object: saliency." in view.status.text()
    table = tmp_path / "comparison.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(table), ""))
    view.export_table()
    assert read_boxes(tmp_path / "comparison.boxes.csv") == {"chelsea.png": list(window.session.boxes)}


def test_boxes_load_from_a_boxes_file_and_go_with_the_photo(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from engine.evaluation import folder

    window.open_compare_view()
    view = window.compare_view
    boxes = tmp_path / "boxes.csv"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(boxes), ""))
    reader, read = folder.read_boxes, []
    monkeypatch.setattr(folder, "read_boxes", lambda path: read.append(path) or reader(path))  # the CLI's reader
    boxes.write_text("image,x0,y0,x1,y1\ncoffee.png,1,1,9,9\n")
    view.load_boxes()
    assert view.status.text() == "No boxes: boxes.csv has no boxes for chelsea.png: it has boxes for coffee.png"
    boxes.write_text("image,x0,y0,x1,y1\nchelsea.png,20,0,400,300\nchelsea.png,1,2,3,4\n")
    view.load_boxes()
    assert read == [str(boxes)] * 2
    assert window.session.boxes == ((20, 0, 400, 300), (1, 2, 3, 4)) == tuple(view.picker.boxes)
    assert view.score_boxes["pointing"].isEnabled() and view.score_boxes["pointing"].isChecked()
    assert view.boxes_label.text().startswith("2 boxes")
    # Another photo: its own boxes (none yet)
    done = []
    window.open_image(str(sample_path("coffee"))).finished.connect(done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)
    assert window.session.boxes == () and view.picker.boxes == []
    assert not view.score_boxes["pointing"].isEnabled() and not view.score_boxes["pointing"].isChecked()
