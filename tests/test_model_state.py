"""ModelState: everything worked out about a loaded model, once, thread-safe, freed with the model."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch
import torchvision
from torch import nn

from engine.anatomy import fast_copy, model_state
from engine.anatomy.activations import compute_features
from engine.anatomy.hooks import capture_outputs, first_tensor, hooked
from engine.attribution.gradients import gradient_network
from engine.core.errors import MethodInputError
from engine.methods import MethodContext
from engine.models.model import LoadedModel
from engine.models.preprocessing import Preprocessing
from engine.optvis.tiling import tiling_geometry
from tests.test_methods import random_image


class ConvNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.flatten(self.pool(self.relu(self.norm(self.conv(x))))))


def trained(net: ConvNormNet, seed: int = 0) -> ConvNormNet:
    torch.manual_seed(seed)
    with torch.no_grad():  # statistics far from 0/1, so folding changes the weights
        net.norm.running_mean.uniform_(-2, 2)
        net.norm.running_var.uniform_(0.5, 4)
    return net.eval().requires_grad_(False)


def loaded(module: nn.Module, size: int = 12, classes: int = 4) -> LoadedModel:
    return LoadedModel(name="net", module=module, preprocessing=Preprocessing(size=size, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[str(i) for i in range(classes)], weights="random")


def counting(monkeypatch, name: str, pause: float = 0.0) -> list:
    """Replace ``model_state.<name>`` by a spy that records each call (and takes ``pause`` s,
    so that threads asking at the same moment really do overlap)."""
    calls = []
    real = getattr(model_state, name)

    def spy(*args, **kwargs):
        calls.append(args)
        time.sleep(pause)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_state, name, spy)
    return calls


def direct_shapes(module: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple]]:
    with torch.no_grad(), capture_outputs(module) as captured:
        module(x)
    return [(path, tuple(tensor.shape)) for path, tensor in captured.items()]


# -- one object per model -------------------------------------------------------------------------
def test_the_state_belongs_to_the_model_and_follows_a_new_network():
    model = loaded(trained(ConvNormNet()))
    assert model.state is model.state
    assert loaded(model.module).state is not model.state  # another LoadedModel: its own state
    other = trained(ConvNormNet(), seed=1)
    model.module = other
    assert model.state.module is other  # what was known about the old network does not carry over


def test_each_thing_is_worked_out_once(monkeypatch):
    traces = counting(monkeypatch, "trace_model")
    builds = counting(monkeypatch, "build_fast_copy")
    backward_checks = counting(monkeypatch, "backward_works")
    relu_searches = counting(monkeypatch, "functional_relu_calls")
    model = loaded(trained(ConvNormNet()))
    state = model.state
    sample = torch.randn(1, 3, 12, 12)
    for _ in range(3):
        shapes = state.output_shapes()
        fields = state.receptive_fields()
        tree = state.layer_tree()
        copy = state.fast_copy(sample)
        assert state.gradient_network(sample) is copy
        relus = state.functional_relus(sample)
    # Shapes, fields and the tree come from one traced pass; the copy is built and its backward tried once.
    assert len(traces) == len(builds) == len(backward_checks) == len(relu_searches) == 1
    assert state.output_shapes() is shapes and state.receptive_fields() is fields and state.layer_tree() is tree
    assert state.functional_relus(sample) is relus and dict(relus) == {}
    assert tree.find("conv").output_shape == shapes["conv"] == (1, 6, 12, 12)
    assert fields["conv"] == tree.find("conv").receptive_field
    state.output_shapes((12, 20))
    assert len(traces) == 2  # another input size is another pass


def test_concurrent_first_requests_compute_once_and_share_the_result(monkeypatch):
    traces = counting(monkeypatch, "trace_model", pause=0.2)
    builds = counting(monkeypatch, "build_fast_copy", pause=0.2)
    model = loaded(trained(ConvNormNet()))
    sample = torch.randn(1, 3, 12, 12)
    threads = 6
    start = threading.Barrier(threads)
    results: list[tuple] = [()] * threads
    errors = []

    def ask(index: int) -> None:
        try:
            start.wait()
            state = model.state
            results[index] = (state.layer_tree(), state.output_shapes(), state.fast_copy(sample))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors
    assert len(traces) == 1 and len(builds) == 1
    for tree, shapes, copy in results:
        assert tree is results[0][0] and shapes is results[0][1] and copy is results[0][2]
    assert results[0][2] is not model.module  # the fast copy itself, not a fallback


def test_other_sizes_do_not_wait_for_a_pass_in_progress(monkeypatch):
    real = model_state.trace_model
    slow_started = threading.Event()

    def trace(module, size, **kwargs):
        if size == (64, 64):
            slow_started.set()
            time.sleep(1.0)
        return real(module, size, **kwargs)

    monkeypatch.setattr(model_state, "trace_model", trace)
    state = loaded(trained(ConvNormNet())).state
    slow = threading.Thread(target=state.output_shapes, args=((64, 64),))
    slow.start()
    assert slow_started.wait(10)
    began = time.perf_counter()
    state.output_shapes((16, 16))
    assert time.perf_counter() - began < 0.9  # one lock per thing, not one for the whole state
    slow.join()


def test_a_failed_computation_publishes_nothing_and_is_tried_again():
    model = loaded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)), size=8)
    for _ in range(2):
        with pytest.raises(MethodInputError, match="1x3x9x9"):
            model.state.output_shapes(9)
    assert model.state.output_shapes(8)["2"] == (1, 2)


# -- invalidation -----------------------------------------------------------------------------------
def test_new_weights_mean_a_new_fast_copy_and_the_same_shapes(monkeypatch):
    traces = counting(monkeypatch, "trace_model")
    backward_checks = counting(monkeypatch, "backward_works")
    model = loaded(trained(ConvNormNet()))
    x = torch.randn(2, 3, 12, 12)
    shapes = model.state.output_shapes()
    first = model.state.gradient_network(x[:1])
    assert model.state.fast_copy(x[:1]) is first
    model.module.load_state_dict(trained(ConvNormNet(), seed=5).state_dict())  # other weights, same module
    second = model.state.fast_copy(x[:1])
    assert second is not first
    with torch.no_grad():
        torch.testing.assert_close(second(x), model.module(x), atol=1e-5, rtol=0)  # folded from the new weights
    assert model.state.gradient_network(x[:1]) is second and len(backward_checks) == 2  # tried again on the new copy
    assert model.state.output_shapes() is shapes and len(traces) == 1  # the architecture did not change


def test_a_model_moved_to_another_device_gets_no_stale_copy():
    model = loaded(trained(ConvNormNet()))
    x = torch.randn(1, 3, 12, 12)
    first = model.state.fast_copy(x)
    assert first is not model.module
    model.to("meta")  # the parameters keep their objects; their data moves
    moved = model.state.fast_copy(x.to("meta"))
    assert moved is not first
    assert all(p.device.type == "meta" for p in moved.parameters())


def test_a_model_with_nothing_to_fold_runs_itself_without_a_weights_check_or_a_sample(monkeypatch):
    versions = counting(monkeypatch, "weights_version")
    builds = counting(monkeypatch, "build_fast_copy")
    monkeypatch.setattr(fast_copy, "convolution_outpaces_matmul", lambda: False)  # else its linear could be a copy's
    norm_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.GELU(), nn.Flatten(), nn.LazyLinear(4))
    norm_net(torch.zeros(1, 3, 12, 12))
    model = loaded(norm_net.eval().requires_grad_(False))
    samples = []

    def sample():
        samples.append(1)
        return torch.randn(1, 3, 12, 12)

    for _ in range(3):
        assert model.state.gradient_network(sample) is model.module
        assert model.state.fast_copy(sample) is model.module
    assert not model.state.could_speed_up
    assert versions == builds == samples == []  # a GELU and a group norm: no copy could differ, whatever the weights
    folding = loaded(trained(ConvNormNet()))
    assert folding.state.could_speed_up
    assert folding.state.gradient_network(sample) is not folding.module and len(samples) == 2  # built, then its backward tried
    assert folding.state.gradient_network(sample) is not folding.module and len(samples) == 2  # kept: no sample made
    assert len(builds) == 1 and len(versions) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_moved_to_the_gpu_and_back_gets_a_copy_where_it_is():
    model = loaded(trained(ConvNormNet()))
    x = torch.randn(2, 3, 12, 12)
    on_cpu = model.state.fast_copy(x[:1])
    model.to("cuda")
    on_gpu = model.state.fast_copy(x[:1].cuda())
    assert on_gpu is not on_cpu and on_gpu is not model.module
    assert all(p.is_cuda for p in on_gpu.parameters())
    with torch.no_grad():
        torch.testing.assert_close(on_gpu(x.cuda()), model.module(x.cuda()), atol=1e-4, rtol=0)
    model.to("cpu")
    back = model.state.fast_copy(x[:1])
    assert back is not on_gpu and all(not p.is_cuda for p in back.parameters())


# -- freed with the model ---------------------------------------------------------------------------
def test_the_state_goes_with_the_model():
    net = torchvision.models.resnet18(weights=None, num_classes=4)
    model = loaded(net.eval().requires_grad_(False), size=32)
    pixels = torch.rand(1, 3, 32, 32)
    image = random_image((40, 32))
    model.state.layer_tree()
    model.state.receptive_fields((32, 40))
    gradient_network(model, pixels)
    model.state.functional_relus(model.preprocessing.normalise(pixels))
    compute_features(model, image)
    MethodContext(model=model, image=image).output_shapes()
    tiling_geometry(model, ["layer2"])
    alive = weakref.ref(model), weakref.ref(net), weakref.ref(model.state)
    del model, net
    gc.collect()
    assert [ref() for ref in alive] == [None, None, None]  # no module-level cache holds any of them


# -- one way to the shapes ----------------------------------------------------------------------------
class LooksAtValues(nn.Module):
    """Branches on a value, which the meta device cannot follow: its shapes come from a real pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.conv(x)
        return self.pool(x) if float(x.abs().max()) >= 0 else x


@pytest.mark.parametrize("architecture, size", [("resnet18", (48, 64)), ("googlenet", (64, 64)),
                                                ("looks-at-values", (20, 17))])
def test_output_shapes_agree_with_a_direct_forward_in_the_same_order(architecture, size):
    if architecture == "looks-at-values":
        net = LooksAtValues()
    else:
        net = getattr(torchvision.models, architecture)(weights=None, num_classes=5, init_weights=False) \
            if architecture == "googlenet" else torchvision.models.resnet18(weights=None, num_classes=5)
    model = loaded(net.eval(), size=size[0], classes=5)
    expected = direct_shapes(net, torch.zeros(1, 3, *size))
    assert list(model.state.output_shapes(size).items()) == expected
    assert all(not module._forward_hooks for module in net.modules())  # traced on a twin, not on the model


def test_the_context_s_shapes_are_those_of_the_image_s_model_input(bundled):
    image = random_image((300, 200))
    shapes = MethodContext(model=bundled, image=image).output_shapes()
    features = compute_features(bundled, image)
    assert list(shapes.items()) == [(path, tuple(t.shape)) for path, t in features.activations.items()]
    assert shapes["stem.conv"] == (1, 32, 112, 168)  # 224 x 336: the shorter side at the model's size
    with pytest.raises(TypeError):
        shapes["stem.conv"] = (1,)  # shared by every caller: read-only


def test_until_stops_before_a_head_that_takes_one_size_only():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    model = loaded(net, size=16)
    with pytest.raises(MethodInputError, match="does not accept a 1x3x40x30 input"):
        model.state.output_shapes((40, 30))
    assert dict(model.state.output_shapes((40, 30), until="1")) == {"0": (1, 4, 38, 28), "1": (1, 4, 38, 28)}
    assert tiling_geometry(model, ["1"]).jumps == {"1": 1}


def test_many_input_sizes_do_not_grow_the_state_without_bound(monkeypatch):
    traces = counting(monkeypatch, "trace_model")
    state = loaded(nn.Sequential(nn.Conv2d(3, 2, 1))).state
    for side in range(8, 8 + model_state.KEPT_RESULTS):
        state.output_shapes(side)
    assert len(traces) == model_state.KEPT_RESULTS
    state.output_shapes(8)  # the oldest was let go: traced again
    assert len(traces) == model_state.KEPT_RESULTS + 1


# -- learnt from use ----------------------------------------------------------------------------------
def test_in_place_overwrites_are_learnt_once_and_later_images_need_one_pass():
    net = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    model = loaded(net, size=32)
    passes = []
    net.register_forward_pre_hook(lambda *_: passes.append(1))
    first = compute_features(model, random_image((32, 32)))
    assert len(passes) == 2 and "layer1.0.bn2" in model.state.overwritten_paths()  # `out += identity` overwrote it
    second = compute_features(model, random_image((32, 32), seed=1))
    assert len(passes) == 3
    with torch.no_grad():
        direct = net.layer1[0].bn2(net.layer1[0].conv2(net.layer1[0].relu(net.layer1[0].bn1(net.layer1[0].conv1(
            net.maxpool(net.relu(net.bn1(net.conv1(second.input)))))))))
    torch.testing.assert_close(second.activations["layer1.0.bn2"], direct)  # the copy, not the overwritten tensor
    assert first.activations.keys() == second.activations.keys()


# -- hooks --------------------------------------------------------------------------------------------
def test_hooks_are_removed_when_the_block_fails():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(forward=[(net[0], lambda *_: seen.append("after"))], pre=[(net[1], lambda *_: seen.append("before"))]):
            net(torch.zeros(1, 3, 5, 5))
            raise RuntimeError("boom")
    assert seen == ["after", "before"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_hooks_registered_before_a_failure_in_registering_are_removed():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))

    def pairs():
        yield net[0], lambda *_: None
        yield net[1], lambda *_: None
        raise RuntimeError("no more")

    with pytest.raises(RuntimeError, match="no more"):
        with hooked(pairs()):
            pass
    assert not any(m._forward_hooks for m in net.modules())


def test_first_tensor_looks_inside_what_a_module_returns():
    a, b = torch.zeros(1), torch.ones(1)
    assert first_tensor(a) is a
    assert first_tensor((None, [a, b])) is a
    assert first_tensor({"out": b, "aux": a}) is b
    assert first_tensor(("text", 3)) is None


# -- memory per image, and the automatic batch ------------------------------------------------------
def test_activation_bytes_count_each_leaf_output_once_and_scale_with_the_pixels():
    model = loaded(trained(ConvNormNet()), size=12)
    # conv, norm and relu give 6x12x12 each, pool 6, flatten 6, head 4; the root (the head's output again) is not a leaf
    leaves = 3 * 6 * 12 * 12 + 6 + 6 + 4
    assert model.state.activation_bytes() == model_state.ActivationBytes(total=4 * leaves, largest=4 * 6 * 12 * 12)
    doubled = model.state.activation_bytes((24, 12))
    assert doubled.total == 8 * leaves and doubled.largest == 8 * 6 * 12 * 12


def test_the_automatic_batch_fits_the_memory_budget_and_a_larger_network_takes_fewer_images(monkeypatch):
    from engine.attribution import maps

    small = loaded(trained(ConvNormNet()), size=32)
    wide = loaded(nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(24, 4)).eval(), size=32)  # 48 values a pixel, against 18
    per_image = small.state.activation_bytes((32, 32)).total * maps.BACKWARD_KEEPS
    monkeypatch.setattr(maps, "cpu_pass_bytes", lambda: int(per_image * 10.5))
    assert maps.automatic_batch(small, 32, 32) == 10
    assert maps.automatic_batch(small, 64, 64) == 2  # four times the pixels: a quarter of the images
    assert maps.automatic_batch(wide, 32, 32) == 3
    monkeypatch.setattr(maps, "cpu_pass_bytes", lambda: 1)
    assert maps.automatic_batch(small, 32, 32) == 1  # never none
    monkeypatch.setattr(maps, "cpu_pass_bytes", lambda: 2**50)
    assert maps.automatic_batch(small, 32, 32) == maps.MOST_PER_PASS["cpu"]
    # An inference pass holds a few of its largest outputs, not all of them
    monkeypatch.setattr(maps, "cpu_pass_bytes", lambda: int(per_image * 10.5))
    assert maps.automatic_batch(small, 32, 32, backward=False) > maps.automatic_batch(small, 32, 32)
