"""One result, one picture: the window's File > Export and the command line's --out write
the same pixels, for each kind the canvas draws (a map over the photo, a tile grid, a
gallery) and for a scatter, which the window shows as a live plot but exports as the
engine draws it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QFileDialog

from engine.view.display import Gallery, MapOverPhoto, Scatter, TileGrid
from tests.test_cli import cli

TIMEOUT = 120_000


@pytest.mark.parametrize("method, values, kind", [
    ("saliency", {"target": "tabby"}, MapOverPhoto),
    ("activations", {"layer": "stages.1.1.expand_relu6"}, TileGrid),
    ("neighbors", {"dataset": "samples", "k": 3}, Gallery),
    ("embed", {"dataset": "samples", "algo": "pca"}, Scatter),
])
def test_the_window_and_the_command_line_export_identical_pixels(qtbot, window, capsys, tmp_path, monkeypatch,
                                                                  method, values, kind):
    panel = window.select_method(method)
    for name, value in values.items():
        panel.set_value(name, value)
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        panel.run_button.click()
    assert isinstance(window.session.shown.display, kind)
    from_window = tmp_path / "window.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(from_window), "PNG image (*.png)"))
    window.menus.export_action.trigger()

    from_cli = tmp_path / "cli.png"
    flags = [item for name, value in values.items() for item in (f"--{name}", value)]
    code, _out, err = cli(capsys, "run", method, "--image", window.image_info.path, *flags, "--out", from_cli)
    assert code == 0, err
    window_pixels, cli_pixels = np.asarray(Image.open(from_window)), np.asarray(Image.open(from_cli))
    assert window_pixels.shape == cli_pixels.shape and window_pixels.std() > 0  # a picture, not a blank
    np.testing.assert_array_equal(window_pixels, cli_pixels)
    bare = window.session.picture(window.canvas.view_settings())
    # The export is the picture at its top left with the caption strip (and a map's colour bar) around it.
    assert window_pixels.shape[0] > bare.shape[0]
    np.testing.assert_array_equal(window_pixels[:bare.shape[0], :bare.shape[1]], bare)
    if kind is not Scatter:  # the canvas shows exactly that picture (a scatter is a live plot)
        np.testing.assert_array_equal(window.canvas.picture_item.image, bare)
    if kind in (MapOverPhoto, TileGrid):  # the canvas's colour bar carries the exported bar's ticks
        ticks = window.canvas.colorbar.axis._tickLevels[0]
        assert [label for _value, label in ticks] == json.loads(from_window.with_suffix(".json").read_text())[
            "colour_bar"]["ticks"]
