"""A transformer's attention, read out of a forward pass, and rolled out through its layers.

Attention probabilities are rarely a module's output: timm's and torchvision's attention
layers hand queries and keys to ``F.scaled_dot_product_attention``, a fused kernel that
never returns them. ``attention_matrices`` watches one forward pass under a
``TorchFunctionMode`` (as ``engine.anatomy.relus`` watches for functional ReLUs) and, at
each such call, computes softmax(q k^T * scale + mask) from the call's own arguments: the
probabilities the kernel used, whatever model called it. A model that computes attention
by hand (``(q @ k.transpose(-2, -1)).softmax(-1)``) shows its probabilities as a softmax
over the last axis of an N x heads x L x L tensor, which is taken too. PyTorch's
``nn.MultiheadAttention`` (torchvision's ViT) returns them when asked to, and is asked.

``attention_rollout`` is Abnar & Zuidema's (2020) estimate of how much each input token
flows into each output token: at every layer the heads' attention is fused (their mean,
or max or min), the residual connection is accounted for by averaging with the identity,
each row is renormalised, and the layers' matrices are multiplied from the first to the
last. Optionally the weakest ``discard`` fraction of each fused matrix is zeroed first
(Gildenblat's variant, which sharpens maps from trained models).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from engine.anatomy.hooks import hooked
from engine.anatomy.twin import has_script_modules, module_twin

HEAD_FUSIONS = ("mean", "max", "min")


class _AttentionWatcher(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.fused: list[torch.Tensor] = []  # from scaled_dot_product_attention
        self.by_hand: list[torch.Tensor] = []  # softmax over N x heads x L x L

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            with torch.no_grad():
                self.fused.append(_probabilities(*args, **kwargs))
        elif name == "softmax" and isinstance(result, torch.Tensor) and result.dim() == 4 \
                and result.shape[-1] == result.shape[-2] and _last_axis(args, kwargs, result.dim()):
            self.by_hand.append(result.detach())
        return result


def _last_axis(args: tuple, kwargs: dict, dims: int) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim is not None and int(dim) % dims == dims - 1


def _probabilities(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False) -> torch.Tensor:
    """What ``scaled_dot_product_attention`` weighs the values with (dropout left out: eval)."""
    if key.shape[-3:-2] != query.shape[-3:-2] and key.dim() == query.dim() and enable_gqa:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query.float() @ key.float().transpose(-2, -1)) * scale
    length_q, length_k = logits.shape[-2:]
    if is_causal:
        logits = logits.masked_fill(torch.ones(length_q, length_k, dtype=torch.bool, device=logits.device).triu(1),
                                    float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else logits + attn_mask.float()
    return torch.softmax(logits, dim=-1)


@torch.no_grad()
def attention_matrices(network: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every attention layer's probabilities (N x heads x L x L each, in the order the layers
    ran) for the normalised input batch ``x``; the forward runs on a twin of ``network``
    (``engine.anatomy.twin``), so its hooks never touch the model itself."""
    twin = network if has_script_modules(network) else module_twin(network)
    watcher = _AttentionWatcher()
    asked: list[torch.Tensor] = []
    layers = [module for module in twin.modules() if isinstance(module, nn.MultiheadAttention)]
    with hooked(forward=((layer, partial(_keep_weights, asked)) for layer in layers),
                pre=((layer, _ask_for_weights) for layer in layers), with_kwargs=True), watcher:
        twin(x)
    return asked or watcher.fused or watcher.by_hand


def _ask_for_weights(_module, args, kwargs):
    # nn.MultiheadAttention returns each head's probabilities when asked; torchvision's ViT
    # does not ask (need_weights=False), and would run a fused kernel that hides them.
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _keep_weights(asked: list[torch.Tensor], _module, _args, _kwargs, output) -> None:
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if isinstance(weights, torch.Tensor):
        asked.append(weights if weights.dim() == 4 else weights[None])


def attention_rollout(matrices: list[torch.Tensor], head_fusion: str = "mean", discard: float = 0.0) -> torch.Tensor:
    """N x L x L: how much of each input token reaches each output token through all layers
    (Abnar & Zuidema 2020). ``matrices`` must all be over the same L tokens."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head fusion '{head_fusion}'; known: {', '.join(HEAD_FUSIONS)}")
    rollout = None
    for attention in matrices:
        fused = getattr(attention.float(), "amax" if head_fusion == "max" else "amin" if head_fusion == "min"
                        else "mean")(dim=1)
        if discard > 0:
            fused = _discard_weakest(fused, discard)
        identity = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        mixed = 0.5 * fused + 0.5 * identity
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def _discard_weakest(fused: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the weakest ``fraction`` of each matrix's entries, never a token's attention to itself."""
    flat = fused.flatten(1)
    count = int(flat.shape[1] * fraction)
    if count == 0:
        return fused
    _, weakest = flat.topk(count, dim=1, largest=False)
    kept = flat.clone().scatter_(1, weakest, 0.0).view_as(fused)
    diagonal = torch.arange(fused.shape[-1], device=fused.device)
    kept[:, diagonal, diagonal] = fused[:, diagonal, diagonal]
    return kept


def token_map(rollout: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """N x h x w: what flows into the class token from each patch; without a class token
    (a model that averages its tokens), what flows into all of them on average."""
    if prefix > 0:
        flow = rollout[:, 0, prefix:]
    else:
        flow = rollout.mean(dim=1)
    return flow.reshape(rollout.shape[0], *grid)


def upsample(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
