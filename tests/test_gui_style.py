"""Texture and style in the window: frames and losses stream into the panel, a trained
style network joins the library, and the fast-style panel blends its styles by sliders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.samples import sample_path
from engine.style.style_library import library_dir, list_styles, save_style
from engine.style.style_net import build_style_net

TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def every_frame(monkeypatch):
    """These runs are a second long and count their frames; the window's pacing of frames
    (five a second) has its own test in test_worker."""
    from gui import worker

    monkeypatch.setattr(worker, "FRAME_INTERVAL_S", 0.0)


def save_two_style_network(name: str) -> None:
    """A small network whose two styles differ clearly, as after training, in the library."""
    generator = torch.Generator().manual_seed(0)
    net = build_style_net({"styles": 2, "width": 4, "blocks": 1}, generator=generator).eval()
    with torch.no_grad():
        for parameter_name, parameter in net.named_parameters():
            if parameter_name.endswith(("gamma", "beta")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    library_dir().mkdir(parents=True, exist_ok=True)
    save_style(library_dir() / f"{name}.pt", net, ["brick", "coffee"], {"steps": 10})


def test_trained_styles_are_offered_and_the_sliders_blend_them(qtbot, window):
    panel = window.select_method("fast-style")
    picker = panel.editors["style_model"]
    # The shipped style is there from the start, and chosen: one style, nothing to mix.
    assert [picker.field.itemText(i) for i in range(picker.field.count())] == ["stained-glass"]
    assert picker.edit.text() == "stained-glass" and not panel.mixer.sliders
    save_two_style_network("pair")
    picker.field.showPopup()  # the list is asked for afresh: a style trained a minute ago is there
    picker.field.hidePopup()
    assert [picker.field.itemText(i) for i in range(picker.field.count())] == ["pair", "stained-glass"]
    picker.field.setCurrentIndex(0)
    assert panel.mixer.names == ["brick", "coffee"] and len(panel.mixer.sliders) == 2
    assert panel.values()["style_mix"] == "0.5,0.5"
    panel.set_value("size", 32)

    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.session.shown.method == "fast-style" and window.session.shown.result.metrics["mix"] == [0.5, 0.5]
    even = window.session.shown.result.array

    brick, coffee = panel.mixer.sliders
    coffee.setValue(0)
    assert panel.mixer.shares[0].text() == "100%"
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        coffee.sliderReleased.emit()  # letting go of a slider restyles: one forward pass
    result = window.session.shown.result  # the blend's arithmetic is checked in test_fast_style
    assert result.metrics["mix"] == [1.0, 0.0] and result.array.shape == even.shape
    assert np.abs(result.array - even).mean() > 0.01


def test_a_path_that_is_no_style_network_says_so_under_the_field(qtbot, window, tmp_path, chelsea_path):
    panel = window.select_method("fast-style")
    panel.editors["style_model"].set_value(chelsea_path)
    assert not panel.mixer.sliders and "not a PyTorch file at all" in panel.mixer.note.text()
    panel.editors["style_model"].set_value(str(tmp_path / "missing"))
    assert "no style model" in panel.mixer.note.text()
    panel.editors["style_model"].set_value("")
    assert "choose a style network" in panel.mixer.note.text()


def run_panel(qtbot, window, method_id: str, **values):
    """Run a panel with ``values`` set; returns (frames shown while it ran, its result)."""
    panel = window.select_method(method_id)
    for name, value in values.items():
        panel.set_value(name, value)
    before = window.canvas.frames_shown
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.session.shown.method == method_id, window.statusBar().currentMessage()
    return panel, window.canvas.frames_shown - before, window.session.shown.result


def test_style_transfer_streams_frames_and_plots_falling_losses(qtbot, window):
    panel, frames, result = run_panel(qtbot, window, "style", style=str(sample_path("brick")), size=48, steps=6)
    assert frames >= 2 and not panel.loss_plot.isHidden()
    _steps, style_losses = panel.loss_plot.series["style_loss"]
    assert len(style_losses) >= 2 and style_losses[-1] < style_losses[0]
    assert result.metrics["style_loss_last"] < result.metrics["style_loss_first"]


def test_texture_synthesis_runs_in_the_window(qtbot, window):
    window.open_image(str(sample_path("gravel")))
    qtbot.waitUntil(lambda: window.image_info is not None and "gravel" in window.image_info.path, timeout=TIMEOUT)
    _, frames, result = run_panel(qtbot, window, "texture", size=64, sample_size=48, steps=5)
    assert frames >= 1 and result.display.rgb.shape[:2] == (64, 64)


def test_a_style_trained_in_the_window_is_then_offered_by_fast_style(qtbot, window, tmp_path):
    folder = tmp_path / "content"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        Image.open(sample_path(name)).convert("RGB").resize((48, 40)).save(folder / f"{name}.png")
    panel, frames, result = run_panel(qtbot, window, "fast-style-train", dataset=str(folder),
                                      style=str(sample_path("brick")), steps=4, batch=2, size=32, width=8, blocks=1,
                                      preview_every=2, save="bricks")
    assert frames >= 2 and not panel.loss_plot.isHidden()
    assert [entry.name for entry in list_styles()] == ["bricks", "stained-glass"]  # and the shipped one
    picker = window.select_method("fast-style").editors["style_model"]
    picker.field.showPopup()
    picker.field.hidePopup()
    assert picker.field.findText("bricks") >= 0
