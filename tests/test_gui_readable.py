"""Results a person can read: numbers as they are typed, wrapped tooltips, a layout that
gives the picture the room, plots that keep out of the way."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from engine.methods import METHODS
from engine.methods.params import Param
from gui.panels import panel_for
from gui.panels.method_panel import ExactDoubleSpinBox, float_step, plain_number

LABELS = [f"class {i}" for i in range(10)]


def _float_field(name: str, default: float, **limits) -> ExactDoubleSpinBox:
    from gui.panels.method_panel import EDITORS

    param = Param(name, "float", default, "help", **limits)
    field = EDITORS["float"].make(param, LABELS)
    EDITORS["float"].put(field, param, default)
    return field


@pytest.mark.parametrize("value, text", [(0.001, "0.001"), (95.0, "95"), (1000.0, "1000"), (0.0001, "0.0001"),
                                         (1e-5, "0.00001"), (0.1, "0.1"), (0.0, "0"), (2.5, "2.5")])
def test_a_float_field_shows_the_number_as_a_person_types_it(qtbot, value, text):
    field = _float_field("lr", value, minimum=0.0, maximum=10_000.0)
    qtbot.addWidget(field)
    assert field.text() == text
    assert field.value() == value


def test_a_typed_number_round_trips_and_so_does_an_exponent(qtbot):
    field = _float_field("lr", 0.001, minimum=0.0, maximum=10.0)
    qtbot.addWidget(field)
    field.show()
    for typed, expected, shown in [("0.00015", 0.00015, "0.00015"), ("1e-4", 0.0001, "0.0001"), ("2,5", 2.5, "2.5")]:
        field.lineEdit().selectAll()
        qtbot.keyClicks(field, typed)
        qtbot.keyClick(field, Qt.Key.Key_Return)
        assert field.value() == expected
        assert field.text() == shown
    field.lineEdit().selectAll()
    qtbot.keyClicks(field, "abc")  # letters are refused as they are typed: the number stays
    assert field.lineEdit().text() == "2.5" and field.value() == 2.5


def test_an_exact_value_is_given_back_while_the_field_shows_it_plainly(qtbot):
    field = _float_field("eps", 2 / 255, minimum=0.0, maximum=1.0)
    qtbot.addWidget(field)
    assert field.value() == 2 / 255
    assert float(field.text()) == pytest.approx(2 / 255, rel=1e-8)


@pytest.mark.parametrize("default, step", [(95.0, 1.0), (1000.0, 100.0), (0.001, 0.0001), (0.05, 0.001), (1.0, 0.1)])
def test_the_arrows_step_by_a_tenth_of_the_defaults_magnitude(qtbot, default, step):
    field = _float_field("x", default, minimum=0.0, maximum=100_000.0)
    qtbot.addWidget(field)
    assert field.singleStep() == pytest.approx(step)
    field.stepBy(1)
    assert field.value() == pytest.approx(default + step)
    assert field.text() == plain_number(round(default + step, 10))
    assert len(field.text()) <= len(plain_number(default)) + 2  # no float noise such as 95.00000000001


def test_a_zero_default_steps_by_its_scale():
    assert float_step(Param("decay", "float", 0.0, "h", minimum=0.0, maximum=1.0)) == 0.01
    assert float_step(Param("tv", "float", 0.0, "h", minimum=0.0, maximum=1e4)) == 0.1


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_no_float_field_shows_padding_zeros(qtbot, spec):
    panel = panel_for(spec, LABELS)
    qtbot.addWidget(panel)
    for param in spec.params:
        if param.kind == "float":
            text = panel.editors[param.name].text()
            assert not (text.endswith("0") and "." in text), (param.name, text)
            assert float(text) == pytest.approx(float(param.coerce(None)), rel=1e-8, abs=1e-10), (param.name, text)
