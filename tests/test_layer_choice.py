"""Help choosing the layer: "early", "middle", "late" and the recommended Grad-CAM layer on
networks ConvScope has no hand-picked presets for (timm's families, randomly initialised)."""

from __future__ import annotations

import pytest
import torch

from engine.anatomy.layouts import CHANNELS_LAST, MAP, TOKENS, VECTOR, find_layouts
from engine.models.model import LoadedModel
from engine.models.timm_models import _pretrained_config, build_timm_architecture, preprocessing_of

# (timm name, the recommended layer) for 21 architectures of 19 families (Swin's: test_vision_transformers).
ARCHITECTURES = [
    ("resnet18", "layer4"), ("convnext_atto", "stages.3"), ("convnextv2_atto", "stages.3"),
    ("efficientnet_b0", "bn2"), ("regnetx_002", "s4"), ("mobilenetv3_small_050", "blocks.5"),
    ("ghostnet_050", "blocks"), ("vit_tiny_patch16_224", "blocks.11.norm1"),
    ("deit_tiny_distilled_patch16_224", "blocks.11.norm1"), ("levit_128s", "stages.2"), ("mixer_s16_224", "norm"),
    ("poolformer_s12", "stages.3"), ("edgenext_xx_small", "stages.3"), ("repvgg_a0", "stages"),
    ("mobilevit_xxs", "final_conv"), ("efficientvit_b0", "head.in_conv"), ("pvt_v2_b0", "stages.3"),
    ("tinynet_e", "bn2"), ("mnasnet_050", "bn2"), ("dla34", "level5"), ("fastvit_t8", "final_conv"),
]


def loaded(name: str) -> LoadedModel:
    torch.manual_seed(0)
    module = build_timm_architecture(name)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(name=name, module=module, preprocessing=preprocessing_of(module, _pretrained_config(name)),
                       labels=[], weights="random")


@pytest.mark.parametrize("name, recommended", ARCHITECTURES, ids=[name for name, _ in ARCHITECTURES])
def test_depth_keywords_fall_in_order_on_spatial_layers(name, recommended):
    model = loaded(name)
    presets, layouts = model.presets, model.state.layouts()
    order = list(layouts)
    assert presets["late"] == model.state.score_layer() == recommended
    early, middle, late = (presets[key] for key in ("early", "middle", "late"))
    assert order.index(early) < order.index(middle) < order.index(late)
    cells = [layouts[path].grid[0] * layouts[path].grid[1] for path in (early, middle, late)]
    assert all(layouts[path].spatial for path in (early, middle, late))
    assert cells[0] >= cells[1] >= cells[2] > 1  # coarser with depth, and never a single cell


def test_layouts_are_read_from_shapes():
    shapes = {
        "stem": (1, 64, 56, 80),  # a map at stride 4
        "norm": (1, 56, 80, 96),  # the same grid, channels last
        "embed": (1, 384, 14, 20),  # a patch embedding of a 224 x 320 input
        "tokens": (1, 281, 384),  # its 280 patches and a class token
        "registers": (1, 285, 384),  # ... and 4 registers
        "attention": (1, 6, 281, 281),  # per-head attention: no grid of the image
        "pooled": (1, 384, 1, 1),
        "logits": (1, 1000),
    }
    layouts = find_layouts(shapes, (224, 320), registers=4)
    assert [layouts[path].kind for path in shapes] == [MAP, CHANNELS_LAST, MAP, TOKENS, TOKENS, "other", VECTOR, VECTOR]
    assert layouts["norm"].grid == (56, 80) and layouts["tokens"].grid == (14, 20)
    assert layouts["tokens"].describe() == "tokens 14x20 + class token"
    assert layouts["registers"].describe() == "tokens 14x20 + class token + 4 register tokens"
    # Another photo's tokens lay out on its own grid: 10 x 24 patches, from a 160 x 384 input.
    tokens = torch.arange(241 * 2, dtype=torch.float32).reshape(1, 241, 2)
    grid = layouts["tokens"].as_map(tokens, (160, 384))
    assert grid.shape == (1, 2, 10, 24) and float(grid[0, 0, 1, 0]) == float(tokens[0, 1 + 24, 0])
