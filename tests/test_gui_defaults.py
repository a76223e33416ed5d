"""The window as a new user meets it: every panel starts on its method's own defaults,
those defaults give the right answer, and nothing the window says names a CLI flag.

Grad-CAM and guided backprop run on a composite whose object is where it was pasted, so
"the right answer" is known: the map belongs on the object. The slow methods (style,
fast-style-train) run with the panel's own defaults except their size and step count,
which a test keeps small."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QPushButton, QWidget

from engine.data.samples import sample_path
from gui.panels.method_panel import LayerPicker

TIMEOUT = 180_000
FLAG = re.compile(r"(?<![\w-])--[a-z]")
CANVAS = (448, 448)  # the composite: width, height
OBJECT_BOX = (224, 200, 448, 424)  # where the cat is pasted: left, top, right, bottom


@pytest.fixture(scope="module")
def composite(tmp_path_factory) -> str:
    """Chelsea's head and shoulders pasted into the lower right of a plain grey picture with
    a little noise: the only object there is, in a known box."""
    rng = np.random.default_rng(0)
    background = np.clip(128 + rng.normal(0, 6, (CANVAS[1], CANVAS[0], 3)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(background)
    cat = Image.open(sample_path("chelsea")).convert("RGB").crop((60, 0, 360, 300))  # the cat's head, the whole height
    left, top, right, bottom = OBJECT_BOX
    picture.paste(cat.resize((right - left, bottom - top)), (left, top))
    path = tmp_path_factory.mktemp("composite") / "cat_on_grey.png"
    picture.save(path)
    return str(path)


def run_panel(qtbot, window, method_id: str, **values):
    """Select the panel, set ``values`` (all else as the panel starts), click Run; the result shown."""
    panel = window.select_method(method_id)
    for name, value in values.items():
        panel.set_value(name, value)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert window.session.shown.method == method_id, window.last_error
    return window.session.shown.result


def open_image(qtbot, window, path: str) -> None:
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.open_image(path)
    qtbot.waitUntil(lambda: window.image_info is not None and window.image_info.path == path, timeout=TIMEOUT)


def box_share(values: np.ndarray) -> tuple[float, bool]:
    """The share of a map's mass inside OBJECT_BOX, and whether its peak is there; the map
    may be at another resolution than the picture."""
    height, width = values.shape
    left, top, right, bottom = OBJECT_BOX
    rows = slice(round(top * height / CANVAS[1]), round(bottom * height / CANVAS[1]))
    cols = slice(round(left * width / CANVAS[0]), round(right * width / CANVAS[0]))
    mass = np.clip(values, 0, None)
    peak_y, peak_x = np.unravel_index(np.argmax(values), values.shape)
    inside = rows.start <= peak_y < rows.stop and cols.start <= peak_x < cols.stop
    return float(mass[rows, cols].sum() / mass.sum()), inside


def texts(widget: QWidget) -> list[str]:
    """Everything a panel shows or says on hovering: labels, tooltips, placeholders, the
    special values of number fields, combo entries, buttons."""
    found = []
    for child in [widget, *widget.findChildren(QWidget)]:
        found.append(child.toolTip())
        if isinstance(child, (QLabel, QPushButton)):
            found.append(child.text())
        if isinstance(child, QLineEdit):
            found.append(child.placeholderText())
        if isinstance(child, QAbstractSpinBox):
            found.append(child.specialValueText())
        if isinstance(child, QComboBox):
            found.extend(child.itemText(i) for i in range(child.count()))
    return found


def test_panels_start_on_their_own_defaults_and_name_every_choice(qtbot, window):
    from tests.test_gui import click_layer

    gradcam, guided = window.panels["gradcam"], window.panels["guided-backprop"]
    # The tree starts on the model's middle layer; the buttons offer it, the fields keep their own.
    assert gradcam.editors["layer"].selected == window.model_info.presets["middle"]
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.select_method("activations")
        click_layer(qtbot, window, "stem.conv")  # activations follow the tree and rerun
    assert window.session.shown.result.layer == "stem.conv"
    # Every other panel keeps its method's default: the CLI's.
    for method_id, panel in window.panels.items():
        if panel.follows_layer:
            assert panel.values()["layer"] == "stem.conv", method_id
            continue
        for param in panel.spec.params:
            if param.kind == "layer":
                assert param.coerce(panel.values()[param.name]) == param.coerce(param.default), (method_id, param.name)
    assert gradcam.values()["layer"] == "late" and guided.values()["layer"] is None
    # The optional layer is a named entry, not a blank one.
    picker = guided.editors["layer"]
    assert picker.box.currentText() == picker.box.itemText(0) == "class score (no layer)"
    # The tree's layer, on request: the button beside the field says what it does.
    window.select_method("gradcam")
    button = gradcam.editors["layer"].use_selected
    assert button.isVisible() and button.isEnabled() and button.text() == "use selected layer"
    button.click()
    assert gradcam.values()["layer"] == "stem.conv"
    # No unnamed choice in any panel: every combo entry has words, and every layer field its button.
    for method_id, panel in window.panels.items():
        for combo in panel.findChildren(QComboBox):
            assert all(combo.itemText(i).strip() for i in range(combo.count())), (method_id, combo)
        for param in panel.spec.params:
            if param.kind == "layer":
                assert isinstance(panel.editors[param.name], LayerPicker), (method_id, param.name)


def test_no_text_the_window_shows_names_a_flag(qtbot, window):
    for method_id, panel in window.panels.items():
        flagged = [text for text in texts(panel) if FLAG.search(text)]
        assert flagged == [], method_id
    # The fast-style-train field whose zero means "as the size field" says so in the form's words.
    special = window.panels["fast-style-train"].editors["style_size"].specialValueText()
    assert special == "'size'"
    # An error from the engine, shown as a dialog and in the status bar, names the field.
    open_image(qtbot, window, str(sample_path("chelsea")))
    top1 = window.image_info.top5[0][0]  # the index: the image is already that class
    panel = window.select_method("adversarial")
    panel.set_value("target", top1)
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT):
        panel.run_button.click()
    assert "choose another 'target'" in window.last_error and not FLAG.search(window.last_error)
    assert not FLAG.search(window.status.text.text())


def test_gradcam_and_guided_backprop_defaults_explain_the_object(qtbot, window, composite):
    open_image(qtbot, window, composite)
    assert "cat" in window.prediction.text()
    cam = run_panel(qtbot, window, "gradcam")
    assert cam.layer != "stem.conv" and cam.params["layer"] == cam.layer  # the late layer, not the tree's
    share, peak_inside = box_share(cam.array)
    assert peak_inside and share > 0.6, share  # the box is a quarter of the picture
    guided = run_panel(qtbot, window, "guided-backprop")
    assert guided.layer is None  # the class score, not one neuron
    share, peak_inside = box_share(guided.array)
    assert peak_inside and share > 0.6, share
    # A class map, not one neuron's dot: the mass is spread over the object. Half of it
    # lies beyond the strongest 2% of the pixels (a stem neuron's map is a 3x3 dot).
    values = np.sort(np.clip(guided.array, 0, None).ravel())[::-1]
    strongest = values[: max(1, len(values) // 50)].sum() / values.sum()
    assert strongest < 0.5, strongest


def test_adversarial_default_flips_the_prediction_to_its_target(qtbot, window):
    result = run_panel(qtbot, window, "adversarial")
    metrics = result.metrics
    assert metrics["success_after_quantisation"] and metrics["top1"] == result.target["label"]
    assert metrics["original_class"]["label"] != result.target["label"]
    assert metrics["linf_levels"] <= 2 and metrics["linf_8bit"] <= metrics["eps"] == 2 / 255
    assert "fooled" in window.canvas.note.text() and not FLAG.search(window.canvas.note.text())


def test_style_and_fast_style_defaults_restyle_the_photo(qtbot, window, tmp_path):
    photo = np.asarray(Image.open(window.image_info.path).convert("RGB"))
    style = run_panel(qtbot, window, "style", steps=5, size=96)
    assert style.params["style"] == ["stained-glass"]
    content = np.asarray(Image.fromarray(photo).resize(style.display.rgb.shape[1::-1]), dtype=np.float64)
    assert np.abs(style.display.rgb - content).mean() > 3  # five L-BFGS steps move it visibly
    fast = run_panel(qtbot, window, "fast-style")
    assert fast.metrics["styles"] == ["stained-glass"]
    content = np.asarray(Image.fromarray(photo).resize(fast.display.rgb.shape[1::-1]), dtype=np.float64)
    assert np.abs(fast.display.rgb - content).mean() > 20
    # Training from the panel's defaults (but a tiny run) needs no style picture chosen.
    trained = run_panel(qtbot, window, "fast-style-train", steps=2, size=32, batch=1, width=8, blocks=1)
    assert trained.metrics["styles"] == ["stained-glass"] and trained.metrics["steps"] == 2
