"""``fast-style``: stylise the image with a trained style network, in one forward pass.

The network comes from ``fast-style-train`` (a file, a name in the style library, or a
training checkpoint). A network trained on several styles mixes them by their
conditional instance-norm parameters: ``--style-mix 0.7,0.3`` runs it with
gamma = 0.7 gamma_1 + 0.3 gamma_2 (and beta likewise); the weights are normalised to
sum 1. The loss model plays no part here; the current model only classifies the image.
The default network is the one ConvScope ships (``stained-glass``, see
``engine.style.style_library``), so the method runs before anything was trained.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.style.style_library import DEFAULT_STYLE, list_styles, load_style
from engine.style.style_net import MIN_SIDE, style_mix as normalised_mix
from engine.methods.params import WEIGHT_LIMIT, MethodSpec, Param


def run(ctx, p):
    image = ctx.require_image()
    size = p.size
    yield Progress(-1.0, "loading the style network")
    loaded = load_style(p.style_model, ctx.device)
    net = loaded.net
    asked = p.style_mix
    mix = normalised_mix(asked, net.styles)
    unit = (ctx.model.preprocessing.to_unit_tensor(image.image, size) if size else _as_loaded(image.image)).to(ctx.device)
    if min(unit.shape[-2:]) < MIN_SIDE:
        raise MethodInputError(f"the picture is too small to stylise: at least {MIN_SIDE} pixels a side")
    ctx.cancel.check()
    yield Progress(0.5, "stylising")
    with torch.no_grad():
        stylised = net(unit, mix)
    rgb = unit_tensor_to_rgb(stylised)
    weights = [round(float(w), 6) for w in mix]
    if net.styles == 1:
        blend = loaded.style_names[0]
        ignored = asked is not None
    else:
        blend = " + ".join(f"{w:.2g} {name}" for w, name in zip(weights, loaded.style_names) if w > 0)
        ignored = False
    note = f"{blend}{' (a single-style network: --style-mix ignored)' if ignored else ''}"
    if loaded.from_checkpoint:
        note += f"; from a training checkpoint at step {loaded.info.get('steps', '?')}"
    height, width = unit.shape[-2:]
    metrics = {"styles": loaded.style_names, "mix": weights, "mix_ignored": ignored, "size": [int(width), int(height)],
               "style_model": str(loaded.path), "trained_steps": loaded.info.get("steps")}
    p.record(style_model=str(loaded.path), style_mix=weights)
    return Result(display=Picture(rgb=rgb, note=note), array=stylised[0].permute(1, 2, 0).cpu().numpy(),
                  metrics=metrics)


def _as_loaded(picture) -> torch.Tensor:
    """The picture at its own size, as a 1 x 3 x H x W tensor in 0..1."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


SPEC = MethodSpec(
    id="fast-style",
    title="Fast style",
    summary="Stylise the image in one forward pass of a network trained with fast-style-train; "
            "a multi-style network blends its styles by their instance-norm parameters.",
    params=(
        Param("style_model", "file", DEFAULT_STYLE, "a style network file from fast-style-train, or the name of a "
              f"style in the library ({DEFAULT_STYLE}: the network ConvScope ships, trained on its stained-glass "
              "picture)", suggest=lambda: [entry.name for entry in list_styles()]),
        Param("style_mix", "weights", None, "for a network of several styles: one weight per style, e.g. 0.7,0.3 "
              "(normalised; empty: equal)", maximum=WEIGHT_LIMIT),
        Param("size", "int", 512, "shorter side of the stylised picture in pixels (0: the image as loaded)",
              minimum=0, maximum=4096, special="image size"),
    ),
    run=run,
)
