"""The fast-style panel: trained styles offered by name, one slider per style to blend them."""

from __future__ import annotations

import numpy as np
import torch

from engine.style_library import library_dir, save_style
from engine.style_net import build_style_net

TIMEOUT = 120_000


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
    assert picker.field.count() == 0 and not panel.mixer.sliders
    save_two_style_network("pair")
    picker.field.showPopup()  # the list is asked for afresh: a style trained a minute ago is there
    picker.field.hidePopup()
    assert [picker.field.itemText(i) for i in range(picker.field.count())] == ["pair"]
    picker.field.setCurrentIndex(0)
    assert panel.mixer.names == ["brick", "coffee"] and len(panel.mixer.sliders) == 2
    assert panel.values()["style_mix"] == "0.5,0.5"
    panel.set_value("size", 32)

    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.last_result[0] == "fast-style" and window.last_result[1].metrics["mix"] == [0.5, 0.5]
    even = window.last_result[1].array

    brick, coffee = panel.mixer.sliders
    coffee.setValue(0)
    assert panel.mixer.shares[0].text() == "100%"
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        coffee.sliderReleased.emit()  # letting go of a slider restyles: one forward pass
    result = window.last_result[1]  # the blend's arithmetic is checked in test_fast_style
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
