"""Cascading randomisation of a copy of a model (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

The sanity check re-initialises a trained network's weights from the output back to the
input, a block at a time, and watches whether an explanation changes. Here:

- ``model_copy`` deep-copies the network: the loaded model is never touched.
- ``parameter_blocks`` cuts the network into the blocks a person would name: its
  top-level children, with plain containers (exactly ``Sequential``, ``ModuleList`` or
  ``ModuleDict``, not subclasses, which are named blocks) opened one level, so EfficientNet-Lite0 gives classifier, head,
  stages.6 ... stages.0, stem, and a ResNet fc, layer4 ... layer1, conv1. A block holding
  nothing but a normalisation layer (a ResNet's bn1) joins the block that feeds it, and
  blocks without parameters (pooling, activations) are left out. Blocks come in execution
  order reversed, output first.
- ``cascade_groups`` splits those blocks into ``steps`` consecutive groups, the smaller
  groups first, so the first steps change only the top of the network.
- ``reinitialise`` redraws a block's parameters the way PyTorch initialises a fresh
  convolution or linear layer, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
  biases alike, from a CPU generator seeded by (seed, block name): the same block gets
  the same weights whatever the grouping, on every device. Normalisation layers are reset
  as a fresh one is (scale 1, shift 0, running mean 0, variance 1: the identity in
  evaluation mode), since their statistics describe the trained weights that fed them.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from engine.models.model import LoadedModel

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
NORMALISATIONS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class Block:
    name: str  # the module path that names the block
    paths: list[str] = field(default_factory=list)  # the module paths it re-initialises (name first)


def model_copy(model: LoadedModel) -> LoadedModel:
    """A LoadedModel around a deep copy of the network, to randomise without harm."""
    module = copy.deepcopy(model.module)
    return LoadedModel(name=f"{model.name} (randomised copy)", module=module, preprocessing=model.preprocessing,
                       labels=model.labels, weights="cascading randomisation of " + model.weights,
                       layer_presets=dict(model.layer_presets), device=model.device)


def randomised_model(model: LoadedModel, seed: int = 0) -> LoadedModel:
    """A copy of the model with every block re-initialised: the end of the cascade."""
    twin = model_copy(model)
    for block in parameter_blocks(twin.module):
        reinitialise(twin.module, block, seed)
    return twin


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _only_normalisation(module: nn.Module) -> bool:
    holders = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return bool(holders) and all(isinstance(m, NORMALISATIONS) for m in holders)


def parameter_blocks(module: nn.Module, execution_order: list[str] | None = None) -> list[Block]:
    """The network's parameterised blocks, output first (see the module docstring).

    ``execution_order`` lists module paths in the order a forward pass reaches them (the
    keys of ``MethodContext.output_shapes()``); without it, definition order is used.
    """
    candidates: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if type(child) in CONTAINERS:  # plain containers only: a ConvBnAct(Sequential) is a block of its own
            candidates.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            candidates.append((name, child))
    candidates = [(name, child) for name, child in candidates if _has_parameters(child)]
    if not candidates and _has_parameters(module):
        candidates = [("", module)]  # a single layer: the whole model is one block
    if execution_order:
        rank = {path: i for i, path in enumerate(execution_order)}

        def first_run(item):
            name = item[0]
            ranks = [i for path, i in rank.items() if path == name or path.startswith(name + ".")]
            return min(ranks) if ranks else len(rank)

        candidates.sort(key=first_run)  # stable: unexecuted blocks keep definition order, last
    blocks: list[Block] = []
    for name, child in candidates:
        if blocks and _only_normalisation(child):
            blocks[-1].paths.append(name)  # the normalisation of the block before it
        else:
            blocks.append(Block(name=name, paths=[name]))
    blocks.reverse()
    return blocks


def cascade_groups(blocks: list[Block], steps: int = 0) -> list[list[Block]]:
    """``steps`` consecutive groups of blocks (0 or too many: one block per step), smaller groups first."""
    if steps <= 0 or steps >= len(blocks):
        return [[block] for block in blocks]
    sizes = sorted(len(part) for part in np.array_split(np.arange(len(blocks)), steps))
    groups, start = [], 0
    for size in sizes:
        groups.append(blocks[start:start + size])
        start += size
    return groups


def _module_at(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def block_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))


@torch.no_grad()
def reinitialise(root: nn.Module, block: Block, seed: int) -> int:
    """Redraw every parameter of ``block`` in place; returns how many values were redrawn."""
    generator = block_generator(seed, block.name)
    count = 0
    for path in block.paths:
        for module in _module_at(root, path).modules():
            own = dict(module.named_parameters(recurse=False))
            if isinstance(module, NORMALISATIONS):
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                count += sum(p.numel() for p in own.values())
                continue
            weight = own.get("weight")
            for name in sorted(own):  # a fixed order, so the generator's draws are reproducible
                parameter = own[name]
                fan_in = _fan_in(parameter if parameter.dim() >= 2 else weight, parameter)
                bound = 1.0 / math.sqrt(fan_in)
                values = torch.empty(parameter.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
                parameter.copy_(values.to(parameter.dtype))
                count += parameter.numel()
    return count


def _fan_in(reference: torch.Tensor | None, parameter: torch.Tensor) -> int:
    """Inputs per output unit: PyTorch's fan_in of a weight (in_channels/groups x kernel area)."""
    if reference is not None and reference.dim() >= 2:
        return max(1, reference[0].numel())
    return max(1, parameter.numel())
