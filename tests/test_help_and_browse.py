"""Help > Methods, F1 and Ctrl+Return; where export dialogs open; the small-dataset note and
Dataset > Browse (a lazily loaded thumbnail grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QStandardPaths, Qt
from PySide6.QtWidgets import QFileDialog

from engine.app.help import HELP_FILE, method_help
from engine.data.dataset_size import ENOUGH_IMAGES, count_images, small_dataset_note

TIMEOUT = 120_000
ROOT = Path(__file__).resolve().parent.parent


# -- the help text ----------------------------------------------------------------------------------
def test_every_registered_method_has_a_help_entry_with_its_definition_paper_and_what_to_look_for():
    from engine.methods import METHODS

    entries = method_help()
    assert set(entries) == set(METHODS)
    for method_id, entry in entries.items():
        assert entry.title == METHODS[method_id].title
        for part in ("**What it is.**", "**Paper.**", "**What to look for.**"):
            assert part in entry.markdown, (method_id, part)
        assert "--" not in entry.markdown, method_id  # the window names fields, never CLI flags


def test_the_help_text_ships_as_package_data():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert HELP_FILE.name in config["tool"]["setuptools"]["package-data"]["engine.app"]
    assert HELP_FILE.parent == ROOT / "engine" / "app" and HELP_FILE.is_file()


# -- where the export dialog opens -----------------------------------------------------------------
def test_the_export_folder_is_the_last_one_then_pictures_then_home(tmp_path):
    from gui.export_dialogs import start_folder

    last, pictures, home = tmp_path / "last", tmp_path / "Pictures", tmp_path / "home"
    for folder in (last, pictures, home):
        folder.mkdir()
    assert start_folder(str(last), str(pictures), str(home)) == last
    assert start_folder(None, str(pictures), str(home)) == pictures  # the first time
    assert start_folder(str(tmp_path / "gone"), str(pictures), str(home)) == pictures  # the last one was removed
    assert start_folder("", "", str(home)) == home  # no Pictures folder on this system
    assert start_folder(None, str(tmp_path / "no-pictures"), str(home)) == home


# -- small datasets ---------------------------------------------------------------------------------
def make_folder(folder: Path, count: int, label: str | None = None) -> list[Path]:
    target = folder / label if label else folder
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = target / f"img{index:05d}.png"
        Image.fromarray(np.full((12, 16, 3), index % 256, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_the_dataset_panels_note_a_dataset_too_small_to_mean_anything(tmp_path):
    note = small_dataset_note("embed", "samples")
    assert note.startswith("Only 9 images in the built-in samples") and "Dataset > Open dataset folder" in note
    assert small_dataset_note("neighbors", "samples") and small_dataset_note("patches", "samples")
    assert small_dataset_note("saliency", "samples") == ""  # not a dataset method
    assert small_dataset_note("embed", "digits") == ""  # 1,797 images
    make_folder(tmp_path / "few", 7, "cats")
    assert "Only 7 images in few" in small_dataset_note("neighbors", str(tmp_path / "few"))
    make_folder(tmp_path / "many", ENOUGH_IMAGES["embed"] + 20)
    assert small_dataset_note("embed", str(tmp_path / "many")) == ""
    # Counting stops once there are enough: a large folder is not listed on the way.
    assert count_images(str(tmp_path / "many"), 10) == 10
    assert count_images(str(tmp_path / "missing"), 10) is None
    # A folder typed on the way to the right one ("/") is not walked to its end.
    for index in range(30):
        (tmp_path / "notes" / f"{index}").mkdir(parents=True)
    assert count_images(str(tmp_path / "notes"), 10, most_entries=20) is None
    assert small_dataset_note("embed", str(tmp_path / "notes")).startswith("Only 0 images in notes: too few")


# -- the window -----------------------------------------------------------------------------------
def test_f1_shows_the_current_methods_help_and_ctrl_return_runs_it(qtbot, window):
    window.select_method("gradcam")
    qtbot.keyClick(window, Qt.Key.Key_F1)
    dialog = window.methods_help
    assert dialog.isVisible() and dialog.current_method() == "gradcam"
    assert "Selvaraju" in dialog.text.toPlainText() and dialog.text.toPlainText().startswith("Grad-CAM")
    window.select_method("saliency")
    window.menus.methods_help_action.trigger()
    assert dialog.current_method() == "saliency" and "Simonyan" in dialog.text.toPlainText()
    dialog.methods.setCurrentRow(0)  # choosing from the list shows that method
    assert dialog.current_method() == "filters" and "Krizhevsky" in dialog.text.toPlainText()

    window.activateWindow()
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT) as finished:
        # From a form field, as a person typing in it would: the window's shortcut, not the button.
        qtbot.keyClick(window.panels["saliency"].editors["target"], Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert finished.args[1].method == "saliency" and window.session.shown.method == "saliency"


def test_exports_open_in_pictures_then_the_last_folder_and_the_bar_can_be_turned_off(qtbot, window, tmp_path,
                                                                                    monkeypatch):
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    monkeypatch.setattr(QStandardPaths, "writableLocation", lambda _location: str(pictures))
    panel = window.select_method("saliency")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.request_run()
    asked = []
    chosen = tmp_path / "exports" / "cam.png"
    chosen.parent.mkdir()

    def save_dialog(_parent, _title, suggested, *_args, **_kwargs):
        asked.append(Path(suggested))
        return str(chosen), "PNG image (*.png)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    window.menus.export_action.trigger()
    assert asked[0].parent == pictures and asked[0].name.endswith("_saliency.png")  # not beside the sample photo
    annotated = np.asarray(Image.open(chosen))
    bare = window.session.picture(window.canvas.view_settings())
    assert annotated.shape[0] > bare.shape[0] and annotated.shape[1] > bare.shape[1]
    sidecar = json.loads(chosen.with_suffix(".json").read_text())
    assert sidecar["caption"][0].startswith("Saliency · target ") and "99th percentile" in sidecar["caption"][1]
    # The canvas states the same clipping under the picture.
    assert window.canvas.scale_caption.text() == sidecar["caption"][1]

    window.menus.annotate_action.setChecked(False)  # File > Export with colour bar and caption, off
    chosen = tmp_path / "exports" / "bare.png"
    window.menus.export_action.trigger()
    assert asked[1].parent == tmp_path / "exports"  # the folder used last
    np.testing.assert_array_equal(np.asarray(Image.open(chosen)), bare)
    assert window.settings.value("export/annotate", type=bool) is False  # remembered for the next run


def test_the_browser_lists_the_dataset_loads_only_visible_thumbnails_and_opens_the_clicked_image(qtbot, window,
                                                                                                  tmp_path):
    from gui.dataset_browser import browse_dataset

    embed_note = window.dataset_notes["embed"]
    assert not embed_note.isHidden() and "Only 9 images" in embed_note.text()  # the samples, by default
    folder = tmp_path / "big"
    paths = make_folder(folder, 1200, "grey")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.use_dataset(str(folder))
    assert embed_note.isHidden()  # 1,200 images are enough

    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        browse_dataset(window)  # the current dataset: the folder just chosen
    browser = window.dataset_browser
    model = browser.model
    assert browser.isVisible() and model.rowCount() == 1200
    assert [model.index(row).data(Qt.ItemDataRole.UserRole) for row in range(3)] == [str(p) for p in paths[:3]]
    assert model.index(0).data() == "grey\nimg00000.png"  # the label and the file name
    qtbot.waitUntil(lambda: model.requested > 0 and model.pending() == 0 and bool(model.loaded()), timeout=30_000)
    first_screen = model.requested
    assert first_screen < 100  # a screenful, not 1,200
    rows = {model._rows[path] for path in model.loaded()}
    assert sum(row >= 100 for row in rows) <= 1  # the first screen (Qt may measure one item elsewhere)
    thumbnail = model.index(0).data(Qt.ItemDataRole.DecorationRole)
    assert (thumbnail.width(), thumbnail.height()) == (96, 72)  # 16x12 enlarged to the thumbnail size
    assert thumbnail.toImage().pixelColor(48, 36).red() == 0  # img00000 is black
    assert model.index(7).data(Qt.ItemDataRole.DecorationRole).toImage().pixelColor(48, 36).red() == 7
    browser.view.scrollToBottom()
    qtbot.waitUntil(lambda: str(paths[-1]) in model.loaded(), timeout=30_000)
    assert model.requested < 2 * first_screen + 50  # the last screen, not everything between

    index = model.index(5)
    browser.view.scrollTo(index)
    rect = browser.view.visualRect(index)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        qtbot.mouseClick(browser.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.image_info.path == str(paths[5])


def test_an_unreadable_thumbnail_is_a_placeholder_not_an_error(tmp_path):
    from gui.dataset_browser import thumbnail_image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert thumbnail_image(str(broken)).isNull()
    assert thumbnail_image(str(tmp_path / "gone.png")).isNull()


def test_browse_and_run_say_why_they_cannot(qtbot, window, tmp_path, monkeypatch):
    from gui.dataset_browser import browse_dataset
    from gui.help_dialog import run_current_panel

    missing = tmp_path / "holiday-photos"
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        browse_dataset(window, str(missing))
    assert "holiday-photos" in window.last_error and "Traceback" not in window.last_error
    assert not window.dataset_browser.isVisible()
    monkeypatch.setattr(window, "current_panel", lambda: None)  # no panels yet: the model is loading
    run_current_panel(window)
    assert "once the model has loaded" in window.last_error
    monkeypatch.setattr(window, "session", None)
    browse_dataset(window, "samples")
    assert "still loading" in window.last_error
