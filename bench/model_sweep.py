"""Any model a user brings: for 22 timm architectures of 20 families, how long until the
first Grad-CAM map, with peak memory, and saliency and integrated gradients beside Captum's.

Each architecture runs in a process of its own, so its peak memory (the process's maximum
resident set, after torch and the engine are imported) is its own. Its weights are saved
from a randomly initialised model first (no download here); then, timed as the user meets
them: opening it (``load_model("timm:NAME", weights_path=...)``), the layer tree with each
layer's layout and the recommended Grad-CAM layer, and the first Grad-CAM map of a 224 px
photo at that layer. Saliency and integrated gradients (16 steps) are timed against
Captum's ``Saliency`` and ``IntegratedGradients`` on the same model and image, medians of
interleaved runs.
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


def run() -> list[Row]:
    rows = []
    for name in ARCHITECTURES:
        completed = subprocess.run([sys.executable, "-m", "bench.model_sweep", name], capture_output=True, text=True,
                                   cwd=Path(__file__).parent.parent, timeout=900)
        if completed.returncode != 0:
            rows.append(Row(f"model sweep {name}", 0.0, "s", note=f"failed: {completed.stderr.strip().splitlines()[-1]}"))
            continue
        found = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append(Row(f"timm {name}: open to first Grad-CAM", found["total_s"], "s",
                        note=f"open {found['open_s']:.2f} s, layer tree {found['tree_s']:.2f} s, Grad-CAM at "
                             f"{found['layer']} ({found['layout']}) {found['gradcam_s']:.2f} s; "
                             f"peak {found['peak_mb']:.0f} MB"))
        rows.append(Row(f"timm {name}: saliency + IG ({STEPS})", found["ours_s"], "s", reference=found["captum_s"],
                        target="at least Captum's speed", note="Captum Saliency + IntegratedGradients, same maps"))
    return rows


def measure(name: str) -> dict:
    """One architecture, in this process: the figures ``run`` reports."""
    import numpy as np
    import torch
    from captum.attr import IntegratedGradients, Saliency

    from bench.common import median_times_interleaved
    from engine.core.jobs import drive
    from engine.data.images import load_image
    from engine.data.samples import sample_path
    from engine.methods import METHODS, MethodContext
    from engine.models.registry import load_model
    from engine.models.timm_models import build_timm_architecture

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / f"{name}.pt"
        torch.save(build_timm_architecture(name).state_dict(), weights)
        image = load_image(str(sample_path("chelsea")))
        start = time.perf_counter()
        model = load_model(f"timm:{name}", weights_path=weights)
        opened = time.perf_counter()
        model.state.layer_tree()
        layer = model.presets["late"]
        tree = time.perf_counter()
        result = drive(METHODS["gradcam"].start(MethodContext(model=model, image=image), {}))  # its top-1 class
        done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    unit = model.preprocessing.to_unit_tensor(image.image)

    class Normalised(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, pixels):
            return self.module(model.preprocessing.normalise(pixels))

    reference = Normalised(model.module)
    ctx = MethodContext(model=model, image=image)

    def ours():
        drive(METHODS["saliency"].start(ctx, {"target": 281}))
        drive(METHODS["integrated-gradients"].start(ctx, {"target": 281, "steps": STEPS}))

    def captum():
        Saliency(reference).attribute(unit.clone().requires_grad_(True), target=281, abs=True)
        IntegratedGradients(reference).attribute(unit, baselines=torch.zeros_like(unit), target=281, n_steps=STEPS,
                                                 internal_batch_size=STEPS, method="gausslegendre")

    ours_s, captum_s = median_times_interleaved([ours, captum], repeats=5)
    return {"open_s": opened - start, "tree_s": tree - opened, "gradcam_s": done - tree, "total_s": done - start,
            "layer": layer, "layout": model.state.layouts()[layer].describe(), "peak_mb": peak_mb,
            "ours_s": ours_s, "captum_s": captum_s, "map_max": float(np.max(result.array))}


if __name__ == "__main__":
    from engine.core.runtime import configure_process

    configure_process()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(measure(sys.argv[1])))
