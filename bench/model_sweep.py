"""Any model a user brings: for 22 timm architectures of 20 families, how long until the
first Grad-CAM map, with peak memory, and each attribution method beside Captum's.

Each architecture runs in a process of its own, so its peak memory (the process's maximum
resident set, after torch and the engine are imported) is its own. Its weights are saved
from a randomly initialised model first (no download here); then, timed as the user meets
them: opening it (``load_model("timm:NAME", weights_path=...)``), the layer tree with each
layer's layout and the recommended Grad-CAM layer, and the first Grad-CAM map of the
sample photo at that layer (224 px on its shorter side).

Then saliency, integrated gradients (16 steps), SmoothGrad (16 samples), guided backprop
and Grad-CAM are timed against Captum's ``Saliency``, ``IntegratedGradients``,
``NoiseTunnel(Saliency)``, ``GuidedBackprop`` and ``LayerGradCam`` (plus upsampling) on
the same model, photo and class: our whole method (map, metrics and the picture for the
canvas) against Captum's map alone, medians of interleaved runs. Guided backprop is left
out where the network has no ReLU-like unit: ours refuses and says why (Captum's would
time a plain gradient). The photo's predictions
are computed first, as the window shows them when a photo opens. Captum's Grad-CAM reads
a layer's output as a map, so it is timed only where the recommended layer is one
(not on token or channels-last layers).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row

ARCHITECTURES = (
    "resnet18", "resnet50d", "convnext_atto", "convnextv2_atto", "efficientnet_b0", "efficientnetv2_rw_t",
    "regnetx_002", "regnety_002", "mobilenetv3_small_100", "mobilenetv4_conv_small", "ghostnet_100",
    "resnetrs50", "densenet121", "dla34", "repvgg_a0", "edgenext_xx_small", "poolformer_s12", "levit_128s",
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224", "mixer_s16_224",
)
STEPS = 16  # integrated gradients' steps
SAMPLES, NOISE = 16, 0.15  # SmoothGrad's
TARGET = 281  # tabby cat, the photo's class; random weights make any class as good as another
REPEATS = 7


def run() -> list[Row]:
    rows, ratios = [], []
    for name in ARCHITECTURES:
        completed = subprocess.run([sys.executable, "-m", "bench.model_sweep", name], capture_output=True, text=True,
                                   cwd=Path(__file__).parent.parent, timeout=1800)
        if completed.returncode != 0:
            rows.append(Row(f"model sweep {name}", 0.0, "s", note=f"failed: {completed.stderr.strip().splitlines()[-1]}"))
            continue
        found = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append(Row(f"timm {name}: open to first Grad-CAM", found["total_s"], "s",
                        note=f"open {found['open_s']:.2f} s, layer tree {found['tree_s']:.2f} s, Grad-CAM at "
                             f"{found['layer']} ({found['layout']}) {found['gradcam_s']:.2f} s; "
                             f"peak {found['peak_mb']:.0f} MB"))
        methods = found["methods"]
        ratios += [(captum / ours, name, method) for method, (ours, captum) in methods.items()]
        rows.append(Row(f"timm {name}: {len(methods)} attribution methods", sum(o for o, _ in methods.values()), "s",
                        reference=sum(c for _, c in methods.values()), target="each at least Captum's speed",
                        note="; ".join(f"{method} {captum / ours:.2f}x" for method, (ours, captum) in methods.items())))
    if ratios:
        slowest = sorted(ratios)[:3]
        rows.append(Row("model sweep: slowest method against Captum", slowest[0][0], "x", target=">= 1x",
                        note="then " + ", ".join(f"{method} on {name} {ratio:.2f}x" for ratio, name, method in slowest)))
    return rows


def measure(name: str) -> dict:
    """One architecture, in this process: the figures ``run`` reports."""
    import torch
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

    from bench.common import median_times_interleaved
    from engine.anatomy.layers import find_module
    from engine.anatomy.layouts import MAP
    from engine.core.errors import MethodInputError
    from engine.core.jobs import drive
    from engine.data.images import load_image
    from engine.data.samples import sample_path
    from engine.methods import METHODS, MethodContext
    from engine.models.registry import load_model
    from engine.models.timm_models import build_timm_architecture

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / f"{name}.pt"
        network = build_timm_architecture(name)
        for module in network.modules():  # timm starts some heads at zero (MLP-Mixer): every class would tie
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                torch.nn.init.normal_(module.weight, std=0.02)
        torch.save(network.state_dict(), weights)
        image = load_image(str(sample_path("chelsea")))
        start = time.perf_counter()
        model = load_model(f"timm:{name}", weights_path=weights)
        opened = time.perf_counter()
        model.state.layer_tree()
        layer = model.presets["late"]
        tree = time.perf_counter()
        drive(METHODS["gradcam"].start(MethodContext(model=model, image=image), {}))  # its top-1 class
        done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    unit = model.preprocessing.to_unit_tensor(image.image)

    class Normalised(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module  # a submodule, so Captum's hooks reach its ReLUs

        def forward(self, pixels):
            return self.module(model.preprocessing.normalise(pixels))

    reference = Normalised(model.module)
    ctx = MethodContext(model=model, image=image)
    ctx.image_features()  # as in the window, which shows the photo's top classes when it opens

    def ours(method: str, **params):
        return lambda: drive(METHODS[method].start(ctx, {"target": TARGET, **params}))

    def captum_gradcam():
        cam = LayerGradCam(reference, find_module(model.module, layer)).attribute(unit, target=TARGET,
                                                                                 relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(unit.shape[-2:]), interpolate_mode="bilinear")

    pairs = {
        "saliency": (ours("saliency"), lambda: Saliency(reference).attribute(unit.clone().requires_grad_(True),
                                                                               target=TARGET, abs=True)),
        f"integrated gradients ({STEPS})": (
            ours("integrated-gradients", steps=STEPS),
            lambda: IntegratedGradients(reference).attribute(unit, baselines=torch.zeros_like(unit), target=TARGET,
                                                             n_steps=STEPS, method="gausslegendre")),
        f"SmoothGrad ({SAMPLES})": (
            ours("smoothgrad", samples=SAMPLES, noise=NOISE),
            lambda: NoiseTunnel(Saliency(reference)).attribute(unit.clone().requires_grad_(True), nt_type="smoothgrad",
                                                              nt_samples=SAMPLES, stdevs=NOISE, target=TARGET)),
        "guided backprop": (ours("guided-backprop"),
                            lambda: GuidedBackprop(reference).attribute(unit.clone(), target=TARGET)),
    }
    if model.state.layouts()[layer].kind == MAP:
        pairs["Grad-CAM"] = (ours("gradcam", layer=layer), captum_gradcam)
    methods = {}
    for method, (our_fn, captum_fn) in pairs.items():
        try:
            our_fn()
        except MethodInputError:  # guided backprop on a network without ReLUs: refused, with the reason
            continue
        methods[method] = median_times_interleaved([our_fn, captum_fn], repeats=REPEATS)
    return {"open_s": opened - start, "tree_s": tree - opened, "gradcam_s": done - tree, "total_s": done - start,
            "layer": layer, "layout": model.state.layouts()[layer].describe(), "peak_mb": peak_mb, "methods": methods}


if __name__ == "__main__":
    from engine.core.runtime import configure_process

    configure_process()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(measure(sys.argv[1])))
