"""Model > timm model...: the searchable list, loading from it (offline: the weights-file offer),
and the layer tree's layouts and marks for a ViT.

No weights are downloaded: the hub is unreachable (``hub_cache``) and every weights file is
saved here from a randomly initialised timm model.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from engine.models.timm_models import build_timm_architecture, name_matches, timm_catalogue
from tests.test_timm_models import hub_cache, place_in_hub_cache  # noqa: F401 - hub_cache is a fixture

TIMEOUT = 60_000
RESNET = "resnet18.a1_in1k"
VIT = "vit_tiny_patch16_224"


def plain(tooltip: str) -> str:
    """A rich-text tooltip's words, its tags and line breaks gone."""
    return " ".join(re.sub(r"<[^>]+>", "", tooltip.replace("<br>", " ")).split())


@pytest.fixture
def dialog(qtbot):
    """The dialog on its own, its list filled; what it chose to load is recorded."""
    from gui.timm_dialog import TimmDialog

    chosen = []
    dialog = TimmDialog(None, chosen.append)
    qtbot.addWidget(dialog)
    dialog.open_list()
    qtbot.waitUntil(lambda: dialog.catalogue.rowCount() > 0, timeout=TIMEOUT)
    return dialog, chosen


def test_the_dialog_is_on_screen_before_the_list_arrives(qtbot, monkeypatch):
    from gui import timm_dialog

    real = timm_dialog._list_catalogue
    listed_on = []

    def slow():
        listed_on.append(threading.current_thread())
        time.sleep(1.0)
        return real()

    monkeypatch.setattr(timm_dialog, "_list_catalogue", slow)
    dialog = timm_dialog.TimmDialog(None, lambda name: None)
    qtbot.addWidget(dialog)
    started = time.perf_counter()
    dialog.open_list()
    assert time.perf_counter() - started < 0.5 and dialog.isVisible()
    assert dialog.status.text() == "Listing timm's pretrained models…" and dialog.catalogue.rowCount() == 0
    qtbot.waitUntil(lambda: dialog.catalogue.rowCount() > 0, timeout=TIMEOUT)
    assert listed_on and listed_on[0] is not threading.main_thread()
    assert dialog.catalogue.rowCount() == len(timm_catalogue())


def test_the_list_keeps_the_names_holding_every_word(qtbot, dialog):
    dialog, _ = dialog
    qtbot.keyClicks(dialog.filter, "convnext TINY")
    shown = dialog.visible_names()
    # The engine's rule (python main.py models --timm uses it), in the list's order: by name.
    assert shown == sorted(f"timm:{entry.name}" for entry in timm_catalogue() if name_matches(entry.name, "convnext tiny"))
    assert "timm:convnext_tiny.fb_in1k" in shown and "timm:convnextv2_tiny.fcmae_ft_in1k" in shown
    assert all("convnext" in name and "tiny" in name for name in shown)
    assert f"{len(shown)} match “convnext TINY”" in dialog.status.text()
    row = dialog.proxy.match(dialog.proxy.index(0, 0), Qt.ItemDataRole.DisplayRole, "convnext_tiny.fb_in22k_ft_in1k")[0].row()
    assert dialog.proxy.index(row, 1).data() == "ImageNet-22k then 1k, 1,000 classes, 224x224 px"
    dialog.filter.setText("tiny convnext")
    assert dialog.visible_names() == shown  # the words in any order
    dialog.filter.setText("no such network")
    assert dialog.visible_names() == [] and not dialog.load_button.isEnabled()
    dialog.accept()
    assert dialog.isVisible()  # nothing to load: the dialog stays


def test_the_list_says_whose_weights_are_on_this_computer(qtbot, hub_cache):
    from gui.timm_dialog import CACHED, TO_DOWNLOAD, TimmDialog

    dialog = TimmDialog(None, lambda name: None)
    qtbot.addWidget(dialog)
    dialog.open_list()
    qtbot.waitUntil(lambda: dialog.catalogue.rowCount() > 0 and not dialog.listing, timeout=TIMEOUT)
    dialog.filter.setText("resnet18.a")

    def weights_column() -> dict[str, str]:
        return {dialog.proxy.index(row, 0).data(): dialog.proxy.index(row, 2).data() for row in range(dialog.proxy.rowCount())}

    assert weights_column()[RESNET] == TO_DOWNLOAD
    place_in_hub_cache(hub_cache, f"timm/{RESNET}", "model.safetensors", build_timm_architecture(RESNET).state_dict())
    dialog.reject()
    dialog.open_list()  # opened again: the cache is looked at again
    qtbot.waitUntil(lambda: not dialog.listing, timeout=TIMEOUT)
    assert weights_column()[RESNET] == CACHED and weights_column()["resnet18.a2_in1k"] == TO_DOWNLOAD
    assert "1 with their weights on this computer" in dialog.status.text()


def test_enter_or_a_double_click_loads_the_model_chosen(qtbot, dialog):
    dialog, chosen = dialog
    qtbot.keyClicks(dialog.filter, "resnet18.a")
    assert dialog.chosen() == "timm:resnet18.a1_in1k"  # the first match is chosen at once
    qtbot.keyClick(dialog.filter, Qt.Key.Key_Down)  # the arrows move through the list from the filter field
    assert dialog.chosen() == "timm:resnet18.a2_in1k"
    qtbot.keyClick(dialog.filter, Qt.Key.Key_Return)
    assert chosen == ["timm:resnet18.a2_in1k"] and not dialog.isVisible()

    dialog.open_list()
    dialog.filter.setText("resnet18.a3")
    where = dialog.view.visualRect(dialog.view.model().index(0, 1)).center()
    qtbot.mouseClick(dialog.view.viewport(), Qt.MouseButton.LeftButton, pos=where)  # a double click's first press
    qtbot.mouseDClick(dialog.view.viewport(), Qt.MouseButton.LeftButton, pos=where)
    assert chosen == ["timm:resnet18.a2_in1k", "timm:resnet18.a3_in1k"] and not dialog.isVisible()


def test_offline_a_timm_model_offers_to_open_its_weights_file(qtbot, window, hub_cache, tmp_path, monkeypatch):
    from engine.core.errors import WeightsMissingError

    window.menus.timm_action.trigger()
    dialog = window.timm_dialog
    qtbot.waitUntil(lambda: dialog.catalogue.rowCount() > 0, timeout=TIMEOUT)
    dialog.filter.setText(RESNET)
    with qtbot.waitSignal(window.worker.job_failed, timeout=TIMEOUT) as failed:
        qtbot.keyClick(dialog.filter, Qt.Key.Key_Return)
    assert isinstance(failed.args[1], WeightsMissingError)
    assert RESNET in window.last_error and "File > Open weights file" in window.last_error
    assert window.model_info.name == "efficientnet_lite0"  # nothing lost

    weights = tmp_path / "my-resnet18.pt"
    torch.save(build_timm_architecture(RESNET).state_dict(), weights)
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: asked.append(a) or (str(weights), ""))
    pick = next(b for b in window.weights_dialog.buttons() if "Open weights" in b.text())
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        pick.click()
    assert "*.safetensors" in asked[0][3]  # timm's own format is offered too
    assert window.model_info.name == f"timm:{RESNET}" and window.model_info.weights == str(weights.resolve())
    assert "layer4.1.conv2" in window.layer_tree.paths()
    qtbot.waitUntil(lambda: window.layer_tree.guide is not None, timeout=TIMEOUT)
    assert window.layer_tree.badges("layer4") == ["Grad-CAM", "late"]


def test_a_vit_shows_its_tokens_and_is_marked_once_the_engine_knows(qtbot, window, tmp_path, monkeypatch):
    from engine.models.model import LoadedModel
    from gui.layer_tree import COLUMNS

    weights = tmp_path / "vit.pt"
    torch.save(build_timm_architecture(VIT).state_dict(), weights)
    worked_out_on = []
    real_guide = LoadedModel.layer_guide
    monkeypatch.setattr(LoadedModel, "layer_guide",
                        lambda self, check=None: worked_out_on.append(threading.current_thread()) or real_guide(self, check))
    tree = window.layer_tree
    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.load_model(f"timm:{VIT}", weights_path=str(weights))
    # The tree is there with the layouts at once; the marks come later.
    assert tree.guide is None and tree.badges("blocks.11.norm1") == []
    node = window.session.layer_tree().find("blocks.11")
    tokens, channels = node.output_shape[1:]
    # Channels × grid, as for a map: the 197-odd tokens are the grid and the class token.
    rows, columns = map(int, re.fullmatch(rf"{channels}×(\d+)×(\d+)", tree.cell_text("blocks.11", "Output")).groups())
    assert rows * columns + 1 == tokens and columns > rows  # the photo is wider than tall: its own grid
    assert f"tokens {rows}x{columns} + class token, {channels} channels each ({tokens}×{channels} as stored)" \
        in plain(tree.tooltip("blocks.11"))
    assert tree.cell_text("patch_embed.proj", "RF (px)") == "16" and tree.cell_text("blocks.11", "RF (px)") == ""

    qtbot.waitUntil(lambda: tree.guide is not None, timeout=TIMEOUT)
    assert worked_out_on and worked_out_on[0] is not threading.main_thread()
    assert tree.badges("blocks.11.norm1") == ["Grad-CAM", "late"]
    assert tree._items["blocks.11.norm1"].font().bold() and not tree._items["blocks.11"].font().bold()
    assert "recommended for Grad-CAM: the last spatial layer the class score depends on" in plain(tree.tooltip("blocks.11.norm1"))
    assert tree.badges("blocks.2") == ["early"] and tree.badges("blocks.5") == ["middle"]
    assert tree.cell_text("blocks.11", "RF (px)") == "whole image"
    assert "Attention has mixed every patch with every other" in plain(tree.tooltip("blocks.11"))
    assert tree.cell_text("pos_drop", "RF (px)") == ""  # before any attention: each token sees its patch

    # Another photo, another grid: the tree is rebuilt and keeps its marks.
    from engine.data.samples import sample_path

    with qtbot.waitSignal(window.worker.job_finished, timeout=TIMEOUT):
        window.open_image(str(sample_path("coffee")))
    assert tree.badges("blocks.11.norm1") == ["Grad-CAM", "late"] and tree.cell_text("blocks.11", "RF (px)") == "whole image"
    # The marks fit the narrow dock: no horizontal scroll.
    tree.view.expandAll()
    for column in range(len(COLUMNS)):
        tree.view.resizeColumnToContents(column)
    qtbot.wait(50)
    assert tree.view.header().length() <= tree.view.viewport().width()
