"""Which layers' units see the whole image, where the traced receptive field lost track of them.

The receptive-field trace (``engine.anatomy.receptive_field``) follows sliding windows and
element-wise operations. A transformer's tokens pass through reshapes and matrix products
it does not model, so their field is unknown (None) from the patch embedding on; and not
every such layer sees the whole image: the patch embedding's tokens see one patch, a Swin
stage's first blocks one window and its neighbours. So it is found by trying: a random
image, the same image again, and the same image with its top-left corner changed, in one
batch through a twin of the model; a layer whose bottom-right unit (the one farthest from
the change) holds other values for the changed image depends on the opposite corner, so
its units see all of it (attention mixes every patch with every other). The unchanged
copy measures the arithmetic's own noise between batch rows, which a change must exceed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from engine.anatomy.hooks import first_tensor, hooked
from engine.anatomy.layouts import MapLayout
from engine.anatomy.receptive_field import ReceptiveField
from engine.anatomy.twin import has_script_modules, module_twin

CORNER = 4  # pixels on a side of the top-left square that is changed
CHANGE = 8.0  # added to it, in normalised input units: far outside what a photo gives
# A difference counts when it exceeds this share of the unit's largest value as well as
# ten times the noise between two identical batch rows.
RELATIVE_CHANGE = 1e-5


def whole_image_layers(module: nn.Module, layouts: Mapping[str, MapLayout],
                       fields: Mapping[str, ReceptiveField | None], input_size: tuple[int, int]) -> frozenset[str]:
    """The spatial layers (more than one cell, no traced field) whose bottom-right unit
    changes with the image's top-left corner, for an input of ``input_size`` (H, W); empty
    when there are none to try or the pass fails."""
    candidates = [path for path, layout in layouts.items()
                  if layout.spatial and layout.grid and layout.grid[0] * layout.grid[1] > 1 and fields.get(path) is None]
    if not candidates or has_script_modules(module):
        return frozenset()
    try:
        twin = module_twin(module).eval()
    except Exception:  # noqa: BLE001 - a model that cannot be copied has nothing marked
        return frozenset()
    modules = dict(twin.named_modules())
    corners: dict[str, torch.Tensor] = {}

    def keep(path: str):
        layout = layouts[path]

        def hook(_module, _inputs, output):
            tensor = first_tensor(output)
            if path in corners or tensor is None:
                return  # a module called again: its first call counts, as in the trace
            try:
                grid = layout.as_map(tensor, input_size)
            except (RuntimeError, ValueError):
                return
            corners[path] = grid[:, :, -1, -1].detach().double().cpu()
        return hook

    parameter = next((p for p in twin.parameters() if p.is_floating_point()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    image = torch.randn((1, 3, *input_size), generator=torch.Generator().manual_seed(0))
    pixels = image.repeat(3, 1, 1, 1)
    pixels[2, :, :CORNER, :CORNER] += CHANGE
    try:
        with torch.no_grad(), hooked((modules[path], keep(path)) for path in candidates if path in modules):
            twin(pixels.to(device=device, dtype=dtype))
    except Exception:  # noqa: BLE001 - the pass may fail for a model's own reasons: nothing is marked
        return frozenset()
    found = set()
    for path, corner in corners.items():
        noise = float((corner[1] - corner[0]).abs().max())
        change = float((corner[2] - corner[0]).abs().max())
        if change > max(10 * noise, RELATIVE_CHANGE * float(corner.abs().max())):
            found.add(path)
    return frozenset(found)
