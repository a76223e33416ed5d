"""The real window, driven as a person would: open, click, run, cancel, export."""

import json
from pathlib import Path

import numpy as np
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine.core.jobs import Frame, Result
from engine.view.display import MapOverPhoto, Picture, TileGrid

TIMEOUT = 60_000  # the window fixture is in conftest.py


def click_layer(qtbot, window, path):
    index = window.layer_tree.index_of(path)
    parent = index.parent()
    while parent.isValid():
        window.layer_tree.view.expand(parent)
        parent = parent.parent()
    window.layer_tree.view.scrollTo(index)
    rect = window.layer_tree.view.visualRect(index)
    qtbot.mouseClick(window.layer_tree.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_starts_with_the_bundled_model_and_a_sample_photo(window):
    assert window.model_info.name == "efficientnet_lite0"
    assert Path(window.image_info.path).name == "chelsea.png"
    assert "cat" in window.prediction.text()
    assert window.canvas.display.rgb.shape == (300, 451, 3)
    assert "stages.3.2.expand_relu6" in window.layer_tree.paths()
    # Receptive fields are shown for convolutions in the tree.
    item = window.layer_tree._items["stem.conv"]
    field = item.parent().child(item.row(), 2).text()
    assert field.startswith("3")


def test_clicking_layers_changes_the_activation_grid(qtbot, window):
    window.select_method("activations")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        click_layer(qtbot, window, "stages.1.1.expand_relu6")
    first = window.canvas.display
    assert window.session.shown.result.layer == "stages.1.1.expand_relu6"
    assert isinstance(first, TileGrid) and window.canvas.note.text().startswith("144 channels")

    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        click_layer(qtbot, window, "head.relu6")
    second = window.canvas.display
    assert window.session.shown.result.layer == "head.relu6"
    assert second.tiles.values.shape != first.tiles.values.shape


def test_clicking_a_tile_shows_that_channel_over_the_image(qtbot, window):
    window.select_method("activations")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        click_layer(qtbot, window, "head.relu6")
    display = window.canvas.display
    tile_h, tile_w = display.tile_size
    x, y = 1 * (tile_w + 1) + 2, 0 + 2  # row 0, column 1
    assert window.session.canvas_click(x, y).values() == {"channel": 1}
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.canvas.clicked.emit(x, y)
    assert isinstance(window.canvas.display, MapOverPhoto)
    assert window.session.shown.result.params["channel"] == 1  # unsorted tiles: tile 1 is channel 1


def test_dream_streams_frames_then_shows_the_result(qtbot, window, monkeypatch):
    from gui import worker as worker_module

    monkeypatch.setattr(worker_module, "FRAME_INTERVAL_S", 0.0)  # every frame of this short run; pacing: test_worker
    panel = window.select_method("dream")
    panel.set_value("steps", 4)
    panel.set_value("octaves", 2)
    panel.set_value("size", 128)
    before = window.canvas.frames_shown
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT) as blocker:
        panel.run_button.click()
    assert blocker.args[1].method == "dream"
    assert window.canvas.frames_shown - before >= 3
    assert window.session.shown.method == "dream"
    metrics = window.session.shown.result.metrics
    assert metrics["norm_last"] > metrics["norm_first"]
    assert "norm" in panel.status.text()
    # The loss plot follows the run and starts afresh with the next one.
    steps, losses = panel.loss_plot.series["loss"]
    assert panel.loss_plot.isVisible() and len(steps) >= 3 and steps == sorted(steps)
    assert losses[-1] > losses[0]  # DeepDream ascends its objective
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert len(panel.loss_plot.series["loss"][0]) <= 8


def test_escape_cancels_a_running_dream(qtbot, window):
    panel = window.select_method("dream")
    panel.set_value("steps", 500)
    panel.set_value("size", 128)
    with qtbot.waitSignal(window.canvas.display_changed, timeout=TIMEOUT):  # the first frame
        panel.run_button.click()
    assert window.cancel_button.isEnabled() and panel.cancel_button.isEnabled()
    with qtbot.waitSignal(window.worker.job_cancelled, timeout=10_000):
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not window.worker.is_busy(), timeout=10_000)
    assert window.session.shown is None or window.session.shown.method != "dream"
    assert panel.status.text() == "cancelled" and not window.cancel_button.isEnabled()


def test_asking_again_supersedes_the_running_job(qtbot, window):
    panel = window.select_method("dream")
    panel.set_value("steps", 500)
    panel.set_value("size", 96)
    with qtbot.waitSignal(window.canvas.display_changed, timeout=TIMEOUT):  # the first frame
        panel.run_button.click()
    panel.set_value("steps", 2)
    panel.set_value("octaves", 1)
    with qtbot.waitSignals([window.worker.job_cancelled, window.worker.job_finished], timeout=TIMEOUT):
        panel.run_button.click()
    assert window.session.shown.method == "dream" and window.session.shown.result.metrics["steps"] == 2


def test_export_writes_png_and_sidecar_and_asks_before_replacing(qtbot, window, tmp_path, monkeypatch):
    window.select_method("activations")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        click_layer(qtbot, window, "stages.2.0.expand_relu6")
    target = tmp_path / "out" / "grid.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target.with_suffix("")), "PNG image (*.png)"))
    window.menus.export_action.trigger()
    sidecar = json.loads(target.with_suffix(".json").read_text())
    assert sidecar["method"] == "activations" and sidecar["layer"] == "stages.2.0.expand_relu6"
    assert sidecar["model"] == "efficientnet_lite0" and sidecar["params"]["sort"] == "none"
    assert "torch" in sidecar["versions"] and sidecar["image_path"].endswith("chelsea.png")
    from PIL import Image

    exported = np.asarray(Image.open(target))
    grid_height, grid_width = window.canvas.display.tiles.values.shape
    assert exported.shape[0] > grid_height and exported.shape[1] > grid_width  # with the colour bar and caption
    np.testing.assert_array_equal(exported[:grid_height, :grid_width], window.canvas.picture_item.image)
    before = target.read_bytes()

    window.show_image()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    window.menus.export_action.trigger()
    assert target.read_bytes() == before
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    window.menus.export_action.trigger()
    assert target.read_bytes() != before
    assert json.loads(target.with_suffix(".json").read_text())["method"] == "image"


def test_a_bad_file_gives_a_message_and_keeps_the_current_image(qtbot, window, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        window.open_image(str(bad))
    assert "notes.jpg is not an image" in window.last_error
    assert "Traceback" not in window.last_error
    assert Path(window.image_info.path).name == "chelsea.png"


def test_drop_and_recent_files(qtbot, window, chelsea_path):
    from engine.data.samples import sample_path

    coffee = str(sample_path("coffee"))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(coffee)])
    event = QDropEvent(QPointF(100, 100), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.dropEvent(event)
    assert Path(window.image_info.path).name == "coffee.png"
    assert window.recent_files()[:2] == [coffee, chelsea_path]
    assert [a.text() for a in window.menus.recent_menu.actions()][:2] == [coffee, chelsea_path]


def test_missing_weights_offer_to_open_the_file(qtbot, window, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    from engine.core.errors import WeightsMissingError

    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT) as failed:
        window.load_model("squeezenet1_1")
    assert isinstance(failed.args[1], WeightsMissingError)
    assert "squeezenet1_1-b8a52dc0.pth" in window.last_error and "Open weights file" in window.last_error
    assert window.model_info.name == "efficientnet_lite0"  # nothing lost

    weights = tmp_path / "my-squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(weights), ""))
    pick = next(b for b in window.weights_dialog.buttons() if "Open weights" in b.text())
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        pick.click()
    qtbot.waitUntil(lambda: window.model_info.name == "squeezenet1_1", timeout=TIMEOUT)
    assert window.model_info.weights == str(weights)
    assert "features.12" in window.layer_tree.paths()


def test_a_pickled_model_loads_only_after_the_user_trusts_it(qtbot, window, tmp_path, monkeypatch):
    import torch

    from tests.conftest import TinyNet

    path = tmp_path / "whole-model.pt"
    torch.save(TinyNet(classes=1000), path)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        window.load_model(str(path))
    assert asked and "pickled" in asked[0]
    assert window.model_info.name == "efficientnet_lite0"

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        window.load_model(str(path))
    qtbot.waitUntil(lambda: window.model_info.name == "whole-model", timeout=TIMEOUT)


def test_a_zoo_download_shows_its_progress(qtbot, window, tmp_path, monkeypatch):
    import torchvision

    from engine.models import zoo
    from gui import worker as worker_module
    from tests.test_zoo import save_with_hash_name

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    served = save_with_hash_name(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / "server", "squeezenet1_1")
    monkeypatch.setattr(zoo.default_weights("squeezenet1_1").value, "url", served.as_uri())
    monkeypatch.setattr(zoo, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    monkeypatch.setattr(zoo, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(worker_module, "PROGRESS_INTERVAL_S", 0.0)  # every report, to count them
    reports = []
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        handle = window.load_model("squeezenet1_1")
        handle.progress.connect(lambda fraction, message: reports.append((fraction, message)))
    downloads = [r for r in reports if served.name in r[1]]
    assert len(downloads) > 3 and downloads[-1][0] == 1.0
    assert window.model_info.name == "squeezenet1_1"
    assert (tmp_path / "hub" / "hub" / "checkpoints" / served.name).exists()  # $TORCH_HOME/hub


def test_out_of_memory_is_a_message_and_the_window_carries_on(qtbot, window, monkeypatch):
    import torch

    def greedy(method_id, values, cancel):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(window.session, "start", greedy)
        with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT) as failed:
            window.select_method("dream").request_run()
    assert isinstance(failed.args[1], torch.OutOfMemoryError) and "ran out of memory" in window.last_error
    assert not window.panels["dream"].cancel_button.isEnabled() and window.panels["dream"].status.text() == "failed"
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.select_method("saliency").request_run()
    assert window.session.shown.method == "saliency"


def test_an_unexpected_engine_error_is_reported_without_a_traceback(qtbot, window, monkeypatch):
    def broken(method_id, values, cancel):
        raise ValueError("something inside went wrong")

    monkeypatch.setattr(window.session, "start", broken)
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT) as failed:
        window.select_method("saliency").request_run()
    assert isinstance(failed.args[1], ValueError)  # the exception itself, not its name
    assert window.last_error == "Saliency failed: ValueError: something inside went wrong"


def test_open_dialog_and_shortcuts(qtbot, window, monkeypatch, tmp_path):
    from engine.data.samples import sample_path

    rocket = str(sample_path("rocket"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (rocket, ""))
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        qtbot.keyClick(window, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    assert Path(window.image_info.path).name == "rocket.jpg"
    target = tmp_path / "rocket-view.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    qtbot.keyClick(window, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert target.exists() and target.with_suffix(".json").exists()


def test_exported_overlay_is_what_the_canvas_draws(qtbot, window):
    from engine.view.colormaps import apply_colormap
    from engine.view.render import overlay_map

    panel = window.select_method("activations")
    panel.set_value("layer", "head.relu6")
    panel.set_value("channel", 5)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.request_run()
    display = window.canvas.display
    drawn = overlay_map(display)
    assert display.values.shape == (7, 11) and drawn.shape == display.photo.shape[:2]  # resampled to the photo
    opacity = window.canvas.current_opacity()
    expected = (1 - opacity) * display.photo + opacity * apply_colormap(drawn, display.levels, window.canvas.current_colormap())
    exported = window.session.picture(window.canvas.view_settings())
    assert np.abs(exported.astype(float) - expected).max() <= 1.0
    np.testing.assert_array_equal(window.canvas.picture_item.image, exported)  # the canvas shows exactly that
    # Another opacity and colormap from the toolbar: the canvas and the export follow alike.
    window.canvas.colormap_box.setCurrentText("turbo")
    window.canvas.opacity.setValue(25)
    qtbot.waitUntil(lambda: not window.canvas._opacity_redraw.isActive(), timeout=5_000)
    view = window.canvas.view_settings()
    assert view.colormap == "turbo" and view.overlay_opacity == 0.25
    np.testing.assert_array_equal(window.canvas.picture_item.image, window.session.picture(view))
    expected = 0.75 * display.photo + 0.25 * apply_colormap(drawn, display.levels, "turbo")
    assert np.abs(window.session.picture(view).astype(float) - expected).max() <= 1.0


def test_occlusion_fills_in_live_and_ends_with_the_drop_map(qtbot, window):
    panel = window.select_method("occlusion")
    panel.set_value("window", 56)
    panel.set_value("stride", 28)
    panel.set_value("batch", 4)
    before = window.canvas.frames_shown
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.canvas.frames_shown - before >= 2  # partial maps arrived before the result
    result = window.session.shown.result
    assert window.session.shown.method == "occlusion" and isinstance(window.canvas.display, MapOverPhoto)
    assert result.array.shape == tuple(result.metrics["grid"]) and not np.isnan(result.array).any()
    assert window.canvas.picture_item.image.shape == window.canvas.display.photo.shape


def test_a_superseded_runs_late_frame_never_reaches_the_canvas(qtbot, window):
    panel = window.select_method("dream")
    panel.set_value("steps", 500)
    panel.set_value("size", 64)
    first = window.run_method("dream", panel.values())
    panel.set_value("steps", 2)
    panel.set_value("octaves", 1)
    newer = window.run_method("dream", panel.values())  # supersedes the first
    stale = Frame(Picture(rgb=np.zeros((8, 8, 3), np.uint8)), step=1, metrics={"loss": 1.0})
    before = window.canvas.frames_shown
    first._frames.offer(stale)  # as if the engine thread had just made it
    assert window.canvas.frames_shown == before and "loss" not in panel.loss_plot.series
    with qtbot.waitSignal(newer.finished, timeout=TIMEOUT):
        pass
    assert first.done and window.session.shown.result.metrics["steps"] == 2


def test_raw_array_and_animation_export(qtbot, window, tmp_path, monkeypatch):
    from gui import export_dialogs

    errors = []
    monkeypatch.setattr(window, "show_error", lambda title, message: errors.append(message))
    frames = [np.full((12, 16, 3), value, np.uint8) for value in (0, 120, 240)]
    array = np.linspace(0, 1, 20, dtype=np.float64).reshape(4, 5)
    session = window.session
    session.show(session.result_shown("dream", Result(display=Picture(rgb=frames[-1]), array=array, frames=frames)))
    written = export_dialogs.export_array_to(window, str(tmp_path / "map.npy"))
    saved = np.load(written)
    assert saved.dtype == np.float32 and np.allclose(saved, array)
    gif = export_dialogs.export_animation_to(window, str(tmp_path / "run.gif"))
    from PIL import Image

    with Image.open(gif) as animation:
        assert animation.n_frames == 3 and animation.size == (16, 12)
    session.show(session.result_shown("saliency", Result(display=Picture(rgb=frames[0]), array=None)))
    assert export_dialogs.export_array_to(window, str(tmp_path / "none.npy")) is None
    assert export_dialogs.export_animation_to(window, str(tmp_path / "none.gif")) is None
    assert "no raw array" in errors[0] and "frames to animate" in errors[1]
    assert not (tmp_path / "none.npy").exists() and not (tmp_path / "none.gif").exists()


def test_a_failed_export_is_a_message_naming_the_file(qtbot, window, tmp_path, monkeypatch):
    import errno

    from engine.data import images
    from gui import export_dialogs

    errors = []
    monkeypatch.setattr(window, "show_error", lambda title, message: errors.append((title, message)))
    folder = tmp_path / "exports"
    folder.mkdir()
    in_the_way = folder / "notes.txt"
    in_the_way.write_text("a file, not a folder")
    assert export_dialogs.export_picture_to(window, str(in_the_way / "out.png")) is None
    monkeypatch.setattr(images, "_stage", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    assert export_dialogs.export_picture_to(window, str(folder / "full.png")) is None
    assert errors == [("Export failed", f"cannot write {in_the_way / 'out.png'}: {in_the_way} is a file, not a folder"),
                      ("Export failed", f"cannot write {folder / 'full.png'}: the disk is full")]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_clicking_the_single_channel_view_runs_guided_backprop_for_that_neuron(qtbot, window):
    window.select_method("activations")
    activations = window.panels["activations"]
    activations.set_value("layer", "stages.3.2.expand_relu6")
    activations.set_value("channel", 5)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        activations.request_run()
    single = window.session.shown.result
    grid_h, grid_w = single.display.values.shape
    image_h, image_w = single.display.photo.shape[:2]
    y, x = np.unravel_index(int(np.argmax(single.array)), single.array.shape)  # an active unit
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.canvas.clicked.emit((x + 0.5) * image_w / grid_w, (y + 0.5) * image_h / grid_h)
    method, result = window.session.shown.method, window.session.shown.result
    assert method == "guided-backprop" and window.current_panel() is window.panels["guided-backprop"]
    assert result.metrics["unit"] == {"layer": "stages.3.2.expand_relu6", "channel": 5, "at": [int(y), int(x)],
                                      "value": result.metrics["unit"]["value"]}
    assert result.metrics["unit"]["value"] > 0 and len(result.display.boxes) == 1  # its receptive field is drawn


def test_a_long_method_form_scrolls_inside_the_dock(qtbot, window):
    panel = window.select_method("class-viz")
    page = window.methods.pages["class-viz"]
    assert window.current_panel() is panel and page.widget() is panel
    window.resize(1200, 600)
    qtbot.waitUntil(lambda: page.verticalScrollBar().maximum() > 0, timeout=5_000)
    page.ensureWidgetVisible(panel.run_button)
    top_left = panel.run_button.mapTo(page.viewport(), panel.run_button.rect().topLeft())
    assert 0 <= top_left.y() < page.viewport().height()
    assert page.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert panel.width() >= panel.minimumSizeHint().width()  # only the height scrolls; nothing is cut at the side


def test_channel_fields_say_what_no_channel_means_or_require_one(window):
    assert window.select_method("activations").editors["channel"].specialValueText() == "all"
    neuron = window.select_method("guided-backprop").editors["channel"]
    assert neuron.specialValueText() == "strongest" and neuron.value() == -1
    required = window.select_method("class-viz").editors["channel"]
    assert required.minimum() == 0 and required.specialValueText() == ""


def test_the_window_module_imports_no_torch_so_the_window_shows_before_the_model_loads():
    """Time to first paint is 0.55 s with torch loaded after the window shows, 2.2 s with it before."""
    import subprocess
    import sys

    code = ("import sys, gui.main_window, gui.app; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]; "
            "assert not loaded, loaded[:5]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_results_first_and_last_losses_read_as_one_change():
    from engine.app.session import summarise

    result = Result(display=Picture(rgb=np.zeros((2, 2, 3), np.uint8)), array=None,
                    metrics={"loss_first": 846.7, "style_loss_first": 846.7, "tv_loss_first": 0.0, "loss_last": 43.77,
                             "style_loss_last": 43.39, "tv_loss_last": 0.0, "steps": 40, "mixed": True,
                             "psnr_last": 20.4, "size": [385, 256]})
    assert summarise(result) == "loss 846.7 → 43.77; style loss 846.7 → 43.39; steps 40; psnr last 20.4"


def test_the_window_s_saliency_of_the_photo_on_show_is_a_backward_pass_through_its_kept_graph(qtbot, window,
                                                                                             monkeypatch):
    from engine.methods import saliency

    features = window.session.features.peek(window.session.model, window.session.image)
    assert features is not None and features.graph is not None  # recorded when the photo opened, on the engine thread

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass was run")

    monkeypatch.setattr(saliency, "score_gradient", no_pass)
    panel = window.select_method("saliency")
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.session.shown.method == "saliency" and isinstance(window.canvas.display, MapOverPhoto)
