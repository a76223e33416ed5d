"""The bundled EfficientNet-Lite0: same numbers as the reference, every operation hookable."""

from collections import Counter

import pytest
import torch
from torch import nn

from engine.anatomy.hooks import capture_outputs
from engine.models.efficientnet_lite import bundled_weights_path


def test_logits_match_the_reference_package(bundled):
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    reference = efficientnet_lite_pytorch.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=bundled_weights_path()).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = bundled.module(x), reference(x)
    assert ours.shape == (2, 1000)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_every_activation_is_its_own_module_and_runs_once(bundled):
    modules = list(bundled.module.named_modules(remove_duplicate=False))
    ids = Counter(id(module) for _name, module in modules)
    assert max(ids.values()) == 1, "a module object is reused under two names"
    relus = [name for name, module in modules if isinstance(module, nn.ReLU6)]
    assert len(relus) == 33  # stem + head + 2 per block (expansion-free first block has 1): 2 + 15*2 + 1

    calls = Counter()
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: calls.update([n])) for name, m in modules]
    try:
        with torch.no_grad():
            bundled.module(torch.zeros(1, 3, 224, 224))
    finally:
        for handle in handles:
            handle.remove()
    assert set(calls.values()) == {1}, "a module ran more than once per forward"


def test_classifies_a_real_photo(bundled, chelsea):
    from engine.anatomy.activations import compute_features

    top = compute_features(bundled, chelsea).top_k(bundled.labels)
    assert top[0][1] in {"tabby", "tiger cat", "Egyptian cat"}
    assert sum(p for _i, _l, p in top) > 0.6


def test_presets_name_real_layers_of_increasing_depth(bundled):
    names = [name for name, _ in bundled.module.named_modules()]
    positions = [names.index(bundled.layer_presets[key]) for key in ("early", "middle", "late")]
    assert positions == sorted(positions)


def test_captured_activations_are_the_forward_tensors(bundled):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), capture_outputs(bundled.module) as captured:
        logits = bundled.module(x)
        head = bundled.module.head(bundled.module.stages(bundled.module.stem(x)))
    assert torch.equal(captured[""], logits)
    assert torch.allclose(captured["head.relu6"], head)
    assert captured["stages.3.2.expand_relu6"].min() >= 0 and captured["stages.3.2.expand_relu6"].max() <= 6
