"""The attribution methods beside their Captum counterparts: same model, photo, class and settings.

Each row times our whole method (map, metrics and the picture for the canvas) against
Captum computing the same map, interleaved in one process, on the bundled model at
224 x 224. Captum gets its fastest batch setting of the ones tried. Guided backprop and
guided Grad-CAM run on a copy of the bundled model with every ReLU6 swapped for nn.ReLU,
because Captum guides nn.ReLU only (on ReLU6 it would time a plain gradient). Guided
backprop and the DeconvNet rule are also timed on torchvision's ResNet-18 (random
weights: none can be downloaded here, and the time is the architecture's), whose ReLUs
are nn.ReLU already, beside Captum's GuidedBackprop and Deconvolution on the model itself.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from engine.data.images import load_image
from engine.core.jobs import drive
from engine.core.memory import keep_freed_memory
from engine.methods import METHODS, MethodContext
from engine.models.labels import imagenet_labels
from engine.models.model import LoadedModel
from engine.models.registry import load_model
from engine.models.zoo import ZOO_SPECS, build_architecture
from engine.data.samples import sample_path

from bench.common import Row, median_time, median_times_interleaved

TARGET = 281  # tabby
SAMPLES, NOISE, STEPS = 25, 0.15, 32
REPEATS = 5
RESNET_REPEATS = 15  # a pass takes a tenth of a second: more runs, for a steadier median on a noisy machine


class _Normalised(nn.Module):
    """The model on 0..1 pixels, normalisation included: what our methods differentiate."""

    def __init__(self, model: LoadedModel):
        super().__init__()
        self.net = model.module  # a submodule, so Captum's hooks reach its ReLUs
        self.preprocessing = model.preprocessing

    def forward(self, x):
        return self.net(self.preprocessing.normalise(x))


def _relu_copy(model: LoadedModel) -> LoadedModel:
    module = copy.deepcopy(model.module)
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    return LoadedModel(name=f"{model.name} (ReLU)", module=module, preprocessing=model.preprocessing,
                       labels=model.labels, weights=model.weights, layer_presets=model.layer_presets)


def _resnet18() -> LoadedModel:
    """torchvision's ResNet-18 as the zoo builds it, with random weights."""
    spec = next(spec for spec in ZOO_SPECS if spec.name == "resnet18")
    torch.manual_seed(0)
    module = build_architecture("resnet18").eval().requires_grad_(False)
    return LoadedModel(name="resnet18 (random weights)", module=module, preprocessing=spec.preprocessing,
                       labels=imagenet_labels(), weights="random")


def run() -> list[Row]:
    torch.set_num_threads(2)
    kept = keep_freed_memory()  # as the engine does at start-up; Captum's runs get it too
    model = load_model()
    relu_model = _relu_copy(model)
    resnet = _resnet18()
    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((224, 224))
    unit = model.preprocessing.to_unit_tensor(image.image)
    try:
        from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, IntegratedGradients, LayerAttribution, \
            LayerGradCam, NoiseTunnel, Saliency
    except ImportError:
        captum = None
    else:
        captum = True

    def ours(method: str, params: dict, on=model, shown: bool = False):
        ctx = MethodContext(model=on, image=image)
        if shown:  # the photo on show: the window keeps its every layer's output from opening it
            ctx.image_features()
        spec = METHODS[method]
        bound = spec.bind({"target": TARGET, **params})
        return lambda: drive(spec.start(ctx, bound))

    cases = [
        ("smoothgrad, 25 samples", ours("smoothgrad", {"samples": SAMPLES, "noise": NOISE})),
        ("integrated-gradients, 32 steps", ours("integrated-gradients", {"steps": STEPS})),
        ("gradcam, head.relu6", ours("gradcam", {})),
        ("gradcam of the photo on show, head.relu6", ours("gradcam", {}, shown=True)),
        ("guided-backprop (ReLU copy)", ours("guided-backprop", {}, on=relu_model)),
        ("guided-gradcam (ReLU copy)", ours("guided-gradcam", {}, on=relu_model)),
        ("guided-backprop, resnet18", ours("guided-backprop", {}, on=resnet)),
        ("guided-backprop deconvnet, resnet18", ours("guided-backprop", {"rule": "deconvnet"}, on=resnet)),
    ]
    memory = "glibc keeps freed memory" if kept else "glibc settings not applied"
    if captum is None:
        return [Row(name, median_time(fn, repeats=REPEATS), "s", note="captum not installed (make bench installs it)")
                for name, fn in cases]

    plain, relu, resnet_pixels = _Normalised(model), _Normalised(relu_model), _Normalised(resnet)
    layer, relu_layer = model.module.head.relu6, relu_model.module.head.relu6
    size = tuple(unit.shape[-2:])

    def smoothgrad(batch):
        def attribute():
            torch.manual_seed(0)
            gradient = NoiseTunnel(Saliency(plain)).attribute(unit.clone().requires_grad_(), nt_type="smoothgrad",
                                                              nt_samples=SAMPLES, nt_samples_batch_size=batch,
                                                              stdevs=NOISE, target=TARGET, abs=False)
            return gradient.abs().amax(dim=1)[0]
        return attribute

    def integrated(batch):
        def attribute():
            return IntegratedGradients(plain).attribute(unit, baselines=torch.zeros_like(unit), target=TARGET,
                                                        n_steps=STEPS, method="gausslegendre",
                                                        internal_batch_size=batch).sum(dim=1)[0]
        return attribute

    def gradcam():
        cam = LayerGradCam(plain, layer).attribute(unit, target=TARGET, relu_attributions=True)
        return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")[0, 0]

    def guided():
        return GuidedBackprop(relu).attribute(unit.clone(), target=TARGET).abs().amax(dim=1)[0]

    def guided_gradcam():
        return GuidedGradCam(relu, relu_layer).attribute(unit, target=TARGET, interpolate_mode="bilinear") \
            .abs().amax(dim=1)[0]

    def resnet_rule(kind):
        def attribute():
            return kind(resnet_pixels).attribute(unit.clone(), target=TARGET).abs().amax(dim=1)[0]
        return attribute

    references = [
        ({"all 25": smoothgrad(None), "8": smoothgrad(8)}, "NoiseTunnel(Saliency), nt_samples_batch_size"),
        ({"all 32": integrated(None), "8": integrated(8)}, "IntegratedGradients gausslegendre, internal_batch_size"),
        ({"": gradcam}, "LayerGradCam + interpolate bilinear"),
        ({"": gradcam}, "LayerGradCam + interpolate bilinear (ours: the kept output through the head alone)"),
        ({"": guided}, "GuidedBackprop"),
        ({"": guided_gradcam}, "GuidedGradCam bilinear"),
        ({"": resnet_rule(GuidedBackprop)}, "GuidedBackprop"),
        ({"": resnet_rule(Deconvolution)}, "Deconvolution"),
    ]
    rows = []
    for (name, our_fn), (settings, what) in zip(cases, references):
        result = our_fn()  # also the warm-up
        single = {}
        for label, reference_fn in settings.items():  # one timing each; the fastest is compared
            start = time.perf_counter()
            reference_map = reference_fn()
            single[label] = time.perf_counter() - start
        best = min(single, key=single.get)
        repeats = RESNET_REPEATS if "resnet18" in name else REPEATS
        ours_s, captum_s = median_times_interleaved([our_fn, settings[best]], repeats=repeats, warmup=0)
        agreement = _agreement(result.array, reference_map.detach().numpy(), statistical=name.startswith("smoothgrad"))
        tried = f" ({', '.join(f'{k}: {v:.2f} s' for k, v in single.items())}; best {best})" if len(single) > 1 else ""
        rows.append(Row(name + ", 224 px", ours_s, "s", ">= 1x Captum", reference=captum_s,
                        note=f"captum {what}{tried}; {agreement}; our batch {result.metrics.get('batch', 1)}; {memory}"))
    return rows


def _agreement(ours: np.ndarray, reference: np.ndarray, statistical: bool) -> str:
    if statistical:  # Captum draws its noise from the global generator: compared in shape, by correlation
        return f"correlation with Captum's map {np.corrcoef(ours.ravel(), reference.ravel())[0, 1]:.3f}"
    # Folding batch norms changes rounding, which flips the odd ReLU6 unit sitting at a kink:
    # a few pixels differ visibly, the rest to rounding. Both figures are reported.
    scale = float(np.abs(reference).max()) or 1.0
    difference = np.abs(ours - reference) / scale
    return f"difference to Captum's map, of its max: largest {difference.max():.1e}, 99th percentile " \
           f"{np.percentile(difference, 99):.1e}"
