"""Dataset methods in the window: galleries and scatters that open what is clicked."""

from PySide6.QtWidgets import QFileDialog, QPushButton

TIMEOUT = 120_000


def run_panel(qtbot, window, method, **values):
    panel = window.select_method(method)
    for name, value in values.items():
        panel.set_value(name, value)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT) as finished:
        panel.run_button.click()
    assert finished.args[1].method == method, window.last_error
    return window.session.shown.result


def test_neighbours_gallery_opens_the_clicked_image(qtbot, window):
    result = run_panel(qtbot, window, "neighbors", dataset="samples", k=3)
    assert len(result.metrics["neighbors"]) == 3
    assert window.canvas.display.regions  # the gallery is on the canvas
    neighbour = result.display.regions[1]  # first feature-space neighbour
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.canvas.path_clicked.emit(neighbour.path, neighbour.box)
    assert window.image_info.path == neighbour.path


def test_a_patch_opens_its_image_with_the_field_drawn(qtbot, window):
    result = run_panel(qtbot, window, "patches", dataset="samples", layer="stages.1.1.expand_relu6", channels="0-1", top=3)
    region = result.display.regions[0]
    x, y = (region.left + region.right) / 2, (region.top + region.bottom) / 2
    assert window.canvas.region_at(x, y) == region
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.canvas._on_scene_click_at(x, y)
    assert window.image_info.path == region.path
    assert window.canvas.display.boxes == [region.box]


def test_embedding_scatter_streams_and_exports_csv(qtbot, window, tmp_path, monkeypatch):
    frames_before = window.canvas.frames_shown
    result = run_panel(qtbot, window, "embed", dataset="samples", algo="tsne", perplexity=2.0)
    assert window.canvas.frames_shown > frames_before  # the layout settled live
    assert window.canvas.stack.currentWidget() is window.canvas.scatter
    assert len(window.canvas.scatter.paths) == 9
    target = tmp_path / "embedding.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.menus.export_action.trigger()
    assert target.exists() and target.with_suffix(".json").exists()
    lines = target.with_suffix(".csv").read_text().splitlines()
    assert lines[0] == "path,group,x,y" and len(lines) == 10
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.canvas.scatter.point_clicked.emit(result.metrics["paths"][3])
    assert window.image_info.path == result.metrics["paths"][3]


def test_the_dataset_menu_points_panels_at_a_dataset(qtbot, window):
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.use_dataset("digits")
    assert window.status_text.text() == "digits: 1,797 images in 10 labels"
    assert window.panels["embed"].values()["dataset"] == "digits"


def test_an_empty_folder_is_a_message(qtbot, window, tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        window.use_dataset(str(empty))
    assert "nothing-here" in window.last_error and "Traceback" not in window.last_error


def test_an_image_list_from_the_dataset_menu_feeds_the_dataset_methods(qtbot, window, tmp_path, monkeypatch):
    from engine.data.samples import sample_paths
    from gui import dialogs

    photos = sorted(sample_paths().items())[:4]
    listed = tmp_path / "photos.csv"
    listed.write_text("".join(f"{path},{'cat' if name == 'chelsea' else 'other'}\n" for name, path in photos))
    monkeypatch.setattr(dialogs, "choose_image_list", lambda parent: str(listed))
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        dataset_menu = next(action.menu() for action in window.menuBar().actions() if action.text() == "&Dataset")
        next(action for action in dataset_menu.actions() if action.text() == "Open image &list…").trigger()
    assert window.status_text.text() == "photos.csv: 4 images in 2 labels"
    result = run_panel(qtbot, window, "neighbors", k=2)  # the field holds the list now
    assert result.metrics["images"] == 4
    assert {n["path"] for n in result.metrics["neighbors"]} <= {str(path) for _name, path in photos}


def test_the_dataset_fields_browse_offers_a_folder_or_a_list(qtbot, window, tmp_path, monkeypatch):
    from gui import dialogs

    picker = window.select_method("embed").editors["dataset"]
    menu = picker.findChild(QPushButton).menu()
    assert [action.text() for action in menu.actions()] == ["Folder of images…", "List of image paths…"]
    listed = tmp_path / "few.txt"
    listed.write_text("a.png\n")
    monkeypatch.setattr(dialogs, "choose_image_list", lambda parent: str(listed))
    menu.actions()[1].trigger()
    assert window.panels["embed"].values()["dataset"] == str(listed)
