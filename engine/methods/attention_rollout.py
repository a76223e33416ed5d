"""``attention-rollout``: how much of each image patch flows into a vision transformer's class
token, through every layer's attention (Abnar & Zuidema 2020, "Quantifying Attention Flow
in Transformers").

At each layer the heads' attention probabilities are fused (their mean by default), the
residual connection is accounted for as 0.5 A + 0.5 I, rows are renormalised, and the
layers are multiplied first to last; the class token's row over the patch tokens, laid on
the patch grid and upsampled bilinearly, is the map. It does not depend on a class: it
shows what the network attends to, not what makes it say "tabby". A model without a class
token (one that averages its tokens) gets the attention flowing into all tokens on average.

One forward pass (``engine.attribution.attention``); no gradient. Models whose attention
is windowed (Swin) or who have none (a CNN) are refused with the reason.
"""

from __future__ import annotations

import numpy as np

from engine.anatomy.layouts import TOKENS
from engine.attribution.attention import HEAD_FUSIONS, attention_matrices, attention_rollout, token_map, upsample
from engine.attribution.maps import map_display, map_metrics, refuse_blank
from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result
from engine.methods.params import OVERLAY, MethodSpec, Param


def run(ctx, p):
    image = ctx.require_image()
    unit = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    size = tuple(unit.shape[-2:])
    yield Progress(0.2, "reading every layer's attention")
    matrices = attention_matrices(ctx.model.module, ctx.model.preprocessing.normalise(unit))
    if not matrices:
        raise MethodInputError("this model has no attention layers, so there is no attention to roll out; "
                               "attention rollout is for vision transformers (ViT, DeiT). Use Grad-CAM instead")
    ctx.cancel.check()
    tokens = _token_layout(ctx, size, matrices)
    grid = tokens.token_grid(int(matrices[0].shape[-1]), size)
    rollout = attention_rollout(matrices, p.head_fusion, p.discard)
    flow = token_map(rollout, tokens.prefix, grid)
    values = upsample(flow, size)[0].cpu().numpy().astype(np.float32)
    refuse_blank(values, "the rolled-out attention is zero everywhere")
    into = "the class token" if tokens.prefix else "the tokens (this model has no class token)"
    fused = {"mean": "averaged", "max": "maximum", "min": "minimum"}[p.head_fusion]
    discard = f", weakest {p.discard:.0%} of each layer's attention discarded" if p.discard else ""
    note = (f"attention rollout over {len(matrices)} layers, heads {fused}{discard}: how much of each patch flows "
            f"into {into} ({grid[0]}x{grid[1]} patches, upsampled to {values.shape[1]}x{values.shape[0]})")
    # Every patch keeps some flow through the residual's identity: the scale starts at the
    # least of it, so what the map shows is where attention gathers beyond that floor.
    note += f"; colours from the least flow ({values.min():.3g}) up"
    display = map_display(image, values, signed=False, overlay=p.overlay, legend="attention flow", note=note,
                          bottom=float(values.min()))
    metrics = {**map_metrics(values), "layers": len(matrices), "heads": int(matrices[0].shape[1]),
               "layer_grid": [int(grid[0]), int(grid[1])], "prefix_tokens": tokens.prefix}
    yield Progress(1.0, "done")
    return Result(display=display, array=values, metrics=metrics)


def _token_layout(ctx, size, matrices):
    """The token layout whose sequence the attention runs over, or a refusal saying why not."""
    length = int(matrices[0].shape[-1])
    if any(int(matrix.shape[0]) != 1 or int(matrix.shape[-1]) != length for matrix in matrices):
        raise MethodInputError("this model's attention runs within windows of the image (as Swin's does), not over "
                               "all of its patches at once, so it cannot be rolled out into one map; use Grad-CAM")
    for layout in ctx.model.state.layouts(size).values():
        if layout.kind == TOKENS and layout.prefix + layout.cells == length:
            return layout
    raise MethodInputError(f"this model's attention runs over {length} tokens, which do not lay out as the image's "
                           f"patches; attention rollout needs a vision transformer's patch tokens")



SPEC = MethodSpec(
    id="attention-rollout",
    title="Attention rollout",
    summary="How much of each patch flows into a vision transformer's class token through all its attention layers "
            "(Abnar & Zuidema 2020); class-agnostic, no gradients.",
    params=(
        Param("head_fusion", "choice", "mean", "how each layer's heads are combined: mean (the paper), max or min",
              choices=HEAD_FUSIONS),
        Param("discard", "float", 0.0, "fraction of each layer's weakest attention to zero before rolling out "
              "(0.9 sharpens trained models' maps; 0: the paper)", minimum=0.0, maximum=0.99),
        OVERLAY,
    ),
    run=run,
    gradients=False,
)
