"""Vision transformers and channels-last layers: token grids read as maps, by every method that
reads a layer, and Grad-CAM where a ViT's score can see it.

The models are timm's, randomly initialised (no weights can be downloaded here); what is
checked holds for any weights: each map equals the one computed by hand from the raw token
tensor (class token set aside, patches laid out row by row), as pytorch-grad-cam's
``reshape_transform`` recipe does it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engine.anatomy.layouts import CHANNELS_LAST, TOKENS
from engine.core.jobs import drive
from engine.data.extraction import layer_rows
from engine.methods import METHODS, MethodContext
from engine.models.labels import imagenet_labels
from engine.models.model import LoadedModel
from engine.models.timm_models import _pretrained_config, build_timm_architecture, preprocessing_of


def timm_model(name: str) -> LoadedModel:
    torch.manual_seed(0)
    module = build_timm_architecture(name)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(name=f"timm:{name}", module=module, preprocessing=preprocessing_of(module, _pretrained_config(name)),
                       labels=imagenet_labels(), weights="random")


@pytest.fixture(scope="module")
def vit():
    return timm_model("vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def swin():
    return timm_model("swin_tiny_patch4_window7_224")


def run(model, image, method, **params):
    return drive(METHODS[method].start(MethodContext(model=model, image=image), params))


def raw_output(model, pixels, path, grad=False):
    """The layer's raw output (tokens, channels-last) for 0..1 pixels, by a plain hook."""
    kept = {}
    handle = model.module.get_submodule(path).register_forward_hook(lambda _m, _i, out: kept.setdefault("out", out))
    try:
        x = model.preprocessing.normalise(pixels)
        logits = model.module(x)
    finally:
        handle.remove()
    return kept["out"], logits


def test_a_photo_keeps_its_aspect_ratio_as_a_non_square_token_grid(vit, chelsea):
    width, height = vit.preprocessing.input_size(*chelsea.size)
    assert (width % 16, height % 16) == (0, 0) and (width, height) == (336, 224)
    layout = vit.state.layouts()["blocks.5"]
    assert layout.kind == TOKENS and layout.prefix == 1 and layout.describe() == "tokens 14x14 + class token"

    result = run(vit, chelsea, "activations", layer="blocks.5")
    assert result.array.shape == (192, 14, 21)
    pixels = vit.preprocessing.to_unit_tensor(chelsea.image)
    with torch.no_grad():
        tokens, _ = raw_output(vit, pixels, "blocks.5")
    by_hand = tokens[0, 1:].reshape(14, 21, 192).permute(2, 0, 1).numpy()
    np.testing.assert_allclose(result.array, by_hand, rtol=1e-5, atol=1e-5)


def hand_vit_cam(vit, pixels, target):
    tokens, logits = raw_output(vit, pixels.clone().requires_grad_(True), "blocks.11.norm1")
    gradient, = torch.autograd.grad(logits[0, target], tokens)
    activation = tokens.detach()[0, 1:].reshape(14, 21, -1).permute(2, 0, 1)[None]
    weights = gradient[0, 1:].reshape(14, 21, -1).permute(2, 0, 1).mean(dim=(1, 2))
    cam = F.relu((weights[None, :, None, None] * activation).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=(224, 336), mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.fixture(scope="module")
def vit_target(vit, chelsea):
    """With random weights, a class whose Grad-CAM is not below zero everywhere (and so ReLU'd
    away to nothing), as a trained model's top class would be; and that map by hand."""
    pixels = vit.preprocessing.to_unit_tensor(chelsea.image)
    return next((c, cam) for c in range(100) if np.any(cam := hand_vit_cam(vit, pixels, c)))


def test_gradcam_on_a_vit_uses_the_last_attentions_input_and_equals_the_hand_computation(vit, chelsea, vit_target):
    target, expected = vit_target
    result = run(vit, chelsea, "gradcam", target=target)
    assert result.layer == "blocks.11.norm1"  # the last block's output never reaches the class token's score
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-6)
    assert result.metrics["layer_grid"] == [14, 21]


def test_the_last_blocks_output_of_a_class_token_vit_is_refused_as_blank(vit, chelsea):
    from engine.core.errors import MethodInputError

    with pytest.raises(MethodInputError, match="zero everywhere"):
        run(vit, chelsea, "gradcam", layer="blocks.11", target=0)


def test_gradcam_on_swins_channels_last_stages_equals_the_hand_computation(swin, chelsea):
    result = run(swin, chelsea, "gradcam", target=1)
    layout = swin.state.layouts()[result.layer]
    assert layout.kind == CHANNELS_LAST and result.layer == "norm"
    pixels = swin.preprocessing.to_unit_tensor(chelsea.image)
    nhwc, logits = raw_output(swin, pixels.clone().requires_grad_(True), "norm")
    gradient, = torch.autograd.grad(logits[0, 1], nhwc)
    activation, gradient = nhwc.detach().permute(0, 3, 1, 2), gradient.permute(0, 3, 1, 2)
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True))
    expected = F.interpolate(cam, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-6)


def test_a_token_unit_is_the_token_at_its_place_in_the_grid(vit, chelsea):
    from engine.attribution.gradients import score_gradient, unit_score

    pixels = vit.preprocessing.to_unit_tensor(chelsea.image)
    gradient, scores = score_gradient(vit, pixels, unit_score("blocks.3", 5, (2, 7), vit), vit.module)
    leaf = pixels.clone().requires_grad_(True)
    tokens, _ = raw_output(vit, leaf, "blocks.3")
    token = 1 + 2 * 21 + 7  # after the class token, row 2, column 7 of a 14x21 grid
    assert float(scores[0]) == pytest.approx(float(tokens[0, token, 5]), rel=1e-4)
    expected, = torch.autograd.grad(tokens[0, token, 5], leaf)
    torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-7)


def test_guided_backprop_says_why_a_gelu_transformer_has_no_guided_map(vit, chelsea):
    from engine.core.errors import MethodInputError

    with pytest.raises(MethodInputError, match="has none \\(it uses GELU\\)"):
        run(vit, chelsea, "guided-backprop", target=1)


def test_extracted_vectors_of_a_token_layer_average_its_patch_tokens(vit, chelsea):
    x = vit.preprocessing.to_tensor(chelsea.image, 224)
    rows = layer_rows(vit, "blocks.11", "avgpool", x)
    with torch.no_grad():
        tokens, _ = raw_output(vit, vit.preprocessing.to_unit_tensor(chelsea.image, 224), "blocks.11")
    np.testing.assert_allclose(rows[0], tokens[0, 1:].mean(dim=0).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, params", [
    ("saliency", {}), ("integrated-gradients", {"steps": 4}), ("smoothgrad", {"samples": 3}),
    ("occlusion", {"window": 64, "stride": 64}), ("gradcam", {"variant": "layercam"}),
    ("gradcam", {"variant": "gradcam++"}),
])
def test_attribution_methods_give_maps_over_the_whole_photo(vit, chelsea, vit_target, method, params):
    result = run(vit, chelsea, method, target=vit_target[0], **params)
    height, width = result.array.shape
    assert width / height == 1.5 and np.isfinite(result.array).all() and np.any(result.array)


def test_optimisation_methods_read_token_layers(vit, chelsea):
    dream = run(vit, chelsea, "dream", layer="blocks.4", steps=2, octaves=1)
    assert dream.metrics["loss_last"] < dream.metrics["loss_first"]  # it ascends the tokens' norm
    octaves = run(vit, chelsea, "dream", layer="blocks.4", steps=1, octaves=3)  # smaller octaves in whole patches
    assert octaves.array.shape[:2] == (224, 336)
    unit = run(vit, None, "class-viz", objective="channel", layer="blocks.6", channel=3, steps=4, size=64)
    assert unit.layer == "blocks.6" and unit.metrics["loss_last"] < unit.metrics["loss_first"]


def test_top_patches_of_a_token_channel_are_the_patches_its_tokens_sit_on(vit):
    result = run(vit, None, "patches", dataset="samples", layer="blocks.5", channels=[3], top=2)
    # Its units see the whole image (attention); each crop is the 16 px patch the token sits on.
    assert vit.state.layer_tree(224).find("blocks.5").receptive_field is None
    assert result.metrics["receptive_field"] == "16 px, jump 16, start 8"


# -- attention rollout -------------------------------------------------------------------------


def hand_rollout(vit, pixels):
    """Abnar & Zuidema's rollout from timm's own unfused attention (its attn_drop sees the
    probabilities), computed in float64 with numpy."""
    import copy

    twin = copy.deepcopy(vit.module)
    seen = []
    for block in twin.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0][0].double().numpy()))
    with torch.no_grad():
        twin(vit.preprocessing.normalise(pixels))
    rollout = np.eye(seen[0].shape[-1])
    for attention in seen:
        mixed = 0.5 * attention.mean(axis=0) + 0.5 * np.eye(attention.shape[-1])
        rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
    return rollout


def test_attention_rollout_equals_the_papers_computation_from_the_models_own_probabilities(vit, chelsea):
    result = run(vit, chelsea, "attention-rollout")
    pixels = vit.preprocessing.to_unit_tensor(chelsea.image)
    flow = torch.from_numpy(hand_rollout(vit, pixels)[0, 1:].reshape(14, 21)).float()
    expected = F.interpolate(flow[None, None], size=(224, 336), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.array, expected, rtol=1e-4)
    assert result.metrics["layers"] == 12 and result.metrics["heads"] == 3 and result.metrics["layer_grid"] == [14, 21]


def test_attention_rollout_refuses_windowed_attention_and_models_without_any(swin, chelsea):
    from engine.core.errors import MethodInputError
    from tests.conftest import make_tiny_model

    with pytest.raises(MethodInputError, match="within windows"):
        run(swin, chelsea, "attention-rollout")
    tiny = make_tiny_model()
    with pytest.raises(MethodInputError, match="no attention layers"):
        run(tiny, chelsea, "attention-rollout")


def test_attention_rollout_reads_torchvisions_multi_head_attention(chelsea):
    from torchvision.models import vit_b_16

    from engine.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    module = vit_b_16(weights=None, image_size=64).eval()  # 4x4 patches of 16: quick
    model = LoadedModel(name="vit_b_16", module=module, labels=imagenet_labels(), weights="random",
                        preprocessing=Preprocessing(size=64, fixed_size=(64, 64)))
    result = run(model, chelsea, "attention-rollout")
    assert result.metrics["layers"] == 12 and result.metrics["layer_grid"] == [4, 4]
    assert result.metrics["prefix_tokens"] == 1 and result.array.shape == (64, 64)


def test_a_class_token_vits_penultimate_layer_is_its_pooled_class_token(vit, chelsea):
    ctx = MethodContext(model=vit, image=chelsea)
    assert ctx.resolve_layer(None, default="penultimate") == "fc_norm"  # the class token, out of norm's tokens
    x = vit.preprocessing.to_tensor(chelsea.image, 224)
    rows = layer_rows(vit, "fc_norm", "avgpool", x)
    with torch.no_grad():
        tokens, _ = raw_output(vit, vit.preprocessing.to_unit_tensor(chelsea.image, 224), "norm")
    np.testing.assert_allclose(rows[0], tokens[0, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_torchvisions_vit_penultimate_rows_are_the_class_token_its_head_reads(chelsea):
    # torchvision's ViT takes the class token out of encoder.ln in code: no module holds it,
    # so the penultimate layer is encoder.ln and its rows are that token, not the patches' mean.
    from torchvision.models import vit_b_16

    from engine.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    module = vit_b_16(weights=None, image_size=64).eval()
    model = LoadedModel(name="vit_b_16", module=module, labels=imagenet_labels(), weights="random",
                        preprocessing=Preprocessing(size=64, fixed_size=(64, 64)))
    path = MethodContext(model=model, image=chelsea).resolve_layer(None, default="penultimate")
    assert path == "encoder.ln" and model.state.classifier_prefix(path) == (0,)
    assert model.state.classifier_prefix("encoder.layers.encoder_layer_11") == ()  # a layer picked for its patches
    x = model.preprocessing.to_tensor(chelsea.image)
    read = {}
    hook = module.heads.head.register_forward_pre_hook(lambda _module, args: read.update(features=args[0]))
    with torch.no_grad():
        module(x)
    hook.remove()
    np.testing.assert_allclose(layer_rows(model, path, "avgpool", x)[0], read["features"][0].numpy(), rtol=1e-4,
                               atol=1e-5)
    picked = layer_rows(model, "encoder.layers.encoder_layer_11", "avgpool", x)[0]
    with torch.no_grad():
        tokens, _ = raw_output(model, model.preprocessing.to_unit_tensor(chelsea.image), "encoder.layers.encoder_layer_11")
    np.testing.assert_allclose(picked, tokens[0, 1:].mean(dim=0).numpy(), rtol=1e-4, atol=1e-5)


# -- the fast copy's cut to the class tokens -------------------------------------------------------
def small_vit(cls=None, **kwargs):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    module = (cls or VisionTransformer)(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5,
                                         dynamic_img_size=True, **kwargs).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    labels = [str(i) for i in range(5)]
    return LoadedModel(name="small vit", module=module, preprocessing=preprocessing_of(module, {"input_size": (3, 32, 32)}),
                       labels=labels, weights="random")


@pytest.mark.parametrize("distilled", [False, True])
def test_a_class_token_vit_s_fast_copy_runs_its_last_mlp_on_the_class_tokens_alone(distilled):
    from timm.models.deit import VisionTransformerDistilled

    from engine.attribution.gradients import class_score, gradient_network, score_gradient

    model = small_vit(VisionTransformerDistilled) if distilled else small_vit()
    pixels = torch.rand(3, 3, 32, 40)  # a 4x5 grid
    network = gradient_network(model, pixels)
    last = network.blocks[1]
    assert type(last).__name__ == "ClassTokenBlock" and last.kept_tokens == (2 if distilled else 1)
    assert type(model.module.blocks[1]).__name__ == "Block"  # the model's own block runs whole
    seen = []
    handle = last.mlp.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    got, got_scores = score_gradient(model, pixels, class_score(3), network)
    handle.remove()
    assert seen == [last.kept_tokens]  # not 1 + 20 tokens
    expected, expected_scores = score_gradient(model, pixels, class_score(3), model.module)
    torch.testing.assert_close(got_scores, expected_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    sample = model.preprocessing.normalise(pixels[:1])
    for layer in ("blocks.1.mlp.fc1", "blocks.1", "norm"):  # their outputs hold the class tokens only
        assert model.state.fast_copy(sample, layer=layer) is model.module
    for layer in ("blocks.1.norm1", "blocks.1.attn", "fc_norm", "head"):  # as the model's
        assert model.state.fast_copy(sample, layer=layer) is network


def test_a_vit_that_averages_its_patch_tokens_is_not_cut():
    model = small_vit(global_pool="avg", class_token=False)
    network = model.state.fast_copy(model.preprocessing.normalise(torch.rand(1, 3, 32, 32)))
    assert type(network.blocks[1]).__name__ == "Block"
