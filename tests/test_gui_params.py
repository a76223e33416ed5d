"""The method panels' forms: every kind of field gives back what was put in it, and a value
that does not fit is said under its field instead of starting a run."""

from __future__ import annotations

import pytest

from engine.methods import METHODS
from gui.panels import panel_for
from gui.panels.method_panel import EDITORS, TOP1
from tests.test_params import BOUND_SAMPLES

LABELS = [f"class {i}" for i in range(10)]


def sample(param):
    """A value the field can hold, other than its default, as bound."""
    if param.kind == "choice":
        return param.choices[-1]
    if param.kind in ("int", "float"):
        low = param.minimum if param.minimum is not None else param.above if param.above is not None else 0
        high = param.maximum if param.maximum is not None else 1000
        value = min(max(BOUND_SAMPLES[param.kind] + (param.default or 0), low), high)
        return int(value) if param.kind == "int" else value
    if param.kind == "bool":
        return not param.default
    return BOUND_SAMPLES[param.kind]


def test_every_kind_has_one_editor():
    from engine.methods.params import KINDS

    assert set(EDITORS) == set(KINDS)


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_every_field_gives_back_the_value_put_in_it(qtbot, spec):
    panel = panel_for(spec, LABELS)
    qtbot.addWidget(panel)
    for param in spec.params:
        if param.name in panel.custom_editors:
            continue  # the fast-style sliders: tests/test_gui_style.py
        for value in (sample(param), param.coerce(param.default)):
            panel.set_value(param.name, value)
            assert param.coerce(panel.values()[param.name]) == param.coerce(value), (param.name, value)
        if param.kind == "channel" and param.minimum is None:
            panel.set_value(param.name, None)
            assert panel.values()[param.name] is None
    if "target" in panel.editors:
        panel.set_value("target", None)
        # The first entry, named: the top-1 prediction, or the method's own default.
        shown = panel.editors["target"].currentText()
        assert shown == (TOP1 if spec.param("target").default is None else "least-likely class")
        assert panel.editors["target"].itemText(0) == shown and panel.values()["target"] is None


def test_a_float_field_keeps_the_exact_default(qtbot):
    panel = panel_for(METHODS["adversarial"], LABELS)
    qtbot.addWidget(panel)
    assert panel.values()["eps"] == 2 / 255  # shown as 0.0078, which would be 1.99 levels, not 2
    panel.editors["eps"].setValue(0.5)
    assert panel.values()["eps"] == 0.5


def test_a_fields_special_value_is_named_not_shown_as_a_number(qtbot):
    panel = panel_for(METHODS["adversarial"], LABELS)
    qtbot.addWidget(panel)
    step = panel.editors["lr"]
    assert step.text() == "eps / 4" and panel.values()["lr"] == 0.0  # 0 stands for eps / 4
    step.setValue(0.01)
    assert step.text() == "0.01" and panel.values()["lr"] == 0.01


def errors_shown(panel) -> dict[str, str]:
    return {name: label.text() for name, label in panel.field_errors.items() if panel.form.isRowVisible(label)}


def test_a_value_that_does_not_fit_is_said_under_its_field_and_nothing_runs(qtbot):
    panel = panel_for(METHODS["guided-backprop"], LABELS)
    qtbot.addWidget(panel)
    panel.set_value("layer", "middle")
    panel.set_value("channel", 5)
    panel.editors["at"].setText("three")
    with qtbot.assertNotEmitted(panel.run_requested):
        panel.run_button.click()
    assert errors_shown(panel) == {"at": "takes a row and a column of the layer's map as Y,X, such as 3,5; not 'three'"}
    assert "under them" in panel.status.text()
    panel.editors["at"].setText("3, 5")
    with qtbot.waitSignal(panel.run_requested) as sent:
        panel.run_button.click()
    assert errors_shown(panel) == {} and sent.args == ["guided-backprop", panel.values()]


def test_a_relation_between_fields_is_said_in_the_forms_words(qtbot):
    panel = panel_for(METHODS["segment"], LABELS)
    qtbot.addWidget(panel)
    panel.set_value("fg_level", 0.5)
    panel.set_value("bg_level", 0.6)
    with qtbot.assertNotEmitted(panel.run_requested):
        panel.request_run()
    assert errors_shown(panel) == {"bg_level": "(0.6) must be below 'fg level' (0.5), both fractions of the map's "
                                               "maximum between 0 and 1"}
    style = panel_for(METHODS["style"], LABELS)
    qtbot.addWidget(style)
    style.set_value("style_weights", (0.7, 0.3))  # two weights for the one default picture
    with qtbot.assertNotEmitted(style.run_requested):
        style.request_run()
    assert errors_shown(style) == {"style_weights": "gives 2 weights for 1 style picture; give one weight per picture"}
    # Every method's defaults pass the form's checks: nothing is required but not given.
    for spec in METHODS.values():
        panel = panel_for(spec, LABELS)
        qtbot.addWidget(panel)
        with qtbot.waitSignal(panel.run_requested):
            panel.request_run()
        assert errors_shown(panel) == {}, spec.id


def test_every_bad_text_field_is_marked_at_once(qtbot):
    panel = panel_for(METHODS["style"], LABELS)
    qtbot.addWidget(panel)
    panel.set_value("style", ["a.png"])
    panel.editors["style_weights"].setText("a,b")
    panel.editors["content_layers"].setText(", ,")
    with qtbot.assertNotEmitted(panel.run_requested):
        panel.request_run()
    assert set(errors_shown(panel)) == {"style_weights", "content_layers"}
