"""What each layer is good for: layouts in the layer tree, the layers whose units see the whole
image, the guide's marks (Grad-CAM, early/middle/late) and the CLI's listings of them.

Every model here has random weights: a toy transformer whose answers are known by
construction, and timm's ViT-Tiny saved to a weights file by the test itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.app.cli import main
from engine.models.registry import load_model
from engine.models.timm_models import build_timm_architecture, name_matches, timm_catalogue
from tests.test_timm_models import hub_cache  # noqa: F401 - the fixture: an empty cache, the hub unreachable

VIT = "vit_tiny_patch16_224"


class WindowMean(nn.Module):
    """Each patch token plus the mean of its 2x2-patch window (the class token kept as it is):
    mixing that stays local, as a Swin block's does."""

    def forward(self, tokens):
        cls, patches = tokens[:, :1], tokens[:, 1:]
        n, _, c = patches.shape
        grid = patches.reshape(n, 2, 2, 2, 2, c)  # (window row, row in it, window column, column in it)
        mean = grid.mean(dim=(2, 4), keepdim=True).expand_as(grid).reshape(n, 16, c)
        return torch.cat([cls, patches + mean], 1)


class GlobalMix(nn.Module):
    """Every token plus the mean of all of them: mixing across the whole image, as attention does."""

    def forward(self, tokens):
        return tokens + tokens.mean(1, keepdim=True)


class ToyTransformer(nn.Module):
    """16 px in, 4 px patches: a 4x4 token grid after a class token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.local = nn.Linear(8, 8)
        self.window = WindowMean()
        self.everything = GlobalMix()
        self.after = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        tokens = self.after(self.everything(self.window(self.local(tokens))))
        return self.head(tokens[:, 0])


def loaded(module: nn.Module, size: int):
    from engine.models.model import LoadedModel
    from engine.models.preprocessing import Preprocessing

    return LoadedModel(name="toy", module=module.eval(), preprocessing=Preprocessing(size=size), labels=list("abcde"),
                       weights="random")


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.pt"
    torch.save(build_timm_architecture(VIT).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vit(vit_weights):
    return load_model(f"timm:{VIT}", weights_path=vit_weights)


def test_only_layers_after_global_mixing_see_the_whole_image():
    model = loaded(ToyTransformer(), 16)
    tree = model.state.layer_tree()
    assert tree.find("local").layout_text == "tokens 4x4 + class token"
    assert tree.find("embed").layout_text == "spatial 4x4" and tree.find("head").layout_text == "vector of 5"
    # Tokens have no traced field; the probe finds which see the whole image: not a
    # per-token layer, not mixing inside windows, but everything from the global mix on.
    assert tree.find("window").receptive_field is None
    assert model.state.whole_image_layers() == {"everything", "after"}
    guide = model.layer_guide()
    assert guide.whole_image == {"everything", "after"}
    assert [node.path for node in tree.walk() if node.sees_whole_image(guide)] == ["everything", "after"]
    assert not tree.find("after").sees_whole_image()  # without the guide the trace cannot tell


def test_a_vits_blocks_see_the_whole_image_from_the_first_attention_on(vit):
    whole = vit.state.whole_image_layers()
    assert {"blocks.0.attn", "blocks.0.mlp", "blocks.5", "blocks.11", "blocks.11.norm1", "norm"} <= whole
    # Before the first attention each token still sees its own patch only.
    assert not {"pos_drop", "norm_pre", "blocks.0.norm1", "blocks.0.attn.qkv"} & whole


def test_the_guide_marks_the_gradcam_layer_and_the_presets(vit):
    guide = vit.layer_guide()
    assert guide.gradcam == "blocks.11.norm1"  # the last attention's input: the class token's score reaches it
    assert guide.roles("blocks.11.norm1") == ["Grad-CAM", "late"]
    assert guide.roles("blocks.2") == ["early"] and guide.roles("blocks.5") == ["middle"]
    assert guide.roles("blocks.11") == [] and vit.layer_guide() == guide  # worked out once


def test_a_cancel_between_the_passes_stops_the_guide(vit):
    from engine.core.jobs import CancelToken, JobCancelled

    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        vit.layer_guide(token.check)


def test_the_listing_shows_layouts_fields_and_marks(vit):
    from engine.anatomy.layer_tree import format_layers

    lines = format_layers(vit.state.layer_tree(), vit.layer_guide()).splitlines()
    assert lines[0].split() == ["layer", "type", "output", "layout", "params", "receptive", "field", "use"]
    by_path = {line.split()[0]: line for line in lines[1:]}
    assert by_path["blocks.11.norm1"].split()[1:] == ["LayerNorm", "1x197x192", "tokens", "14x14", "+", "class",
                                                      "token", "384", "whole", "image", "Grad-CAM,", "late"]
    assert by_path["patch_embed.proj"].split()[1:] == ["Conv2d", "1x192x14x14", "spatial", "14x14", "147,648",
                                                       "16", "px,", "jump", "16,", "start", "8"]
    assert by_path["patch_embed.norm"].split()[3:6] == ["spatial", "14x14,", "channels"]
    assert by_path["pos_drop"].split()[1:] == ["Dropout", "1x197x192", "tokens", "14x14", "+", "class", "token", "0"]
    assert by_path["blocks.2"].split()[-3:] == ["whole", "image", "early"]
    assert by_path["head"].split()[1:] == ["Linear", "1x1000", "vector", "of", "1,000", "193,000"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_a_timm_models_layers_offline_from_its_architecture(capsys, hub_cache):
    code, out, err = cli(capsys, "layers", "--model", f"timm:{VIT}", "--size", "160")
    assert code == 0, err
    assert "model.safetensors is not on this machine; listing the architecture without weights" in err
    line = next(line for line in out.splitlines() if line.split()[0] == "blocks.11.norm1")
    # --size 160: a 10x10 grid; the marks as with weights (they come from the architecture).
    assert "tokens 10x10 + class token" in line and line.split()[-4:] == ["whole", "image", "Grad-CAM,", "late"]


def test_cli_lists_timm_models_holding_every_word(capsys):
    code, out, _ = cli(capsys, "models", "--timm", "ConvNeXt tiny")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and "timm:convnext_tiny.fb_in1k" in names and "timm:convnextv2_tiny.fcmae_ft_in1k" in names
    expected = [f"timm:{entry.name}" for entry in timm_catalogue()
                if "convnext" in entry.name.lower() and "tiny" in entry.name.lower()]
    assert names == expected
    line = out.splitlines()[names.index("timm:convnext_tiny.fb_in22k_ft_in1k")]
    assert line.split(None, 1)[1].startswith("ImageNet-22k then 1k, 1,000 classes, 224x224 px")
    assert name_matches("convnext_tiny.fb_in1k", "tiny CONVNEXT") and not name_matches("convnext_small", "convnext tiny")

    # What it learnt from, in the order it learnt: BEiT v2 fine-tuned from 1k to 22k classes.
    code, out, _ = cli(capsys, "models", "--timm", "beitv2_base in1k_ft_in22k")
    assert out.split(None, 1)[1].startswith("ImageNet-1k then 22k, 21,841 classes")

    code, _, err = cli(capsys, "models", "--timm", "no such network")
    assert code == 2 and "no timm model's name holds every word of 'no such network'" in err


def test_cli_says_which_timm_weights_are_on_this_computer(capsys, hub_cache):
    from tests.test_timm_models import place_in_hub_cache

    place_in_hub_cache(hub_cache, "timm/resnet18.a1_in1k", "model.safetensors",
                       build_timm_architecture("resnet18.a1_in1k").state_dict())
    code, out, _ = cli(capsys, "models", "--timm", "resnet18.a")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and lines["timm:resnet18.a1_in1k"].endswith("(weights on this computer)")
    assert not lines["timm:resnet18.a2_in1k"].endswith("(weights on this computer)")
