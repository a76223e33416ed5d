"""Perturbation scores: remove what a map calls relevant, and watch the class probability.

**Deletion and insertion** (Petsiuk et al. 2018). The map orders the model input's pixels,
most relevant first (ties in reading order). Deletion replaces them, step by step, with
the same pixels of a *baseline* (``engine.attribution.baselines``): the input under a
Gaussian blur (``blur``, sigma 10% of the shorter side) or mid-gray (``gray``). Insertion starts from the baseline and puts the input's pixels back in the
same order. After each step the softmax probability of the target class is recorded, at
``steps + 1`` fractions 0, 1/steps, ..., 1 of the pixels; the area under the curve
(trapezoids over the fraction, so 0..1) scores the map: low for deletion, high for
insertion, when the map is faithful.

**ROAD** (Rong et al. 2022). Deletion's sharp-edged holes are themselves a shape the model
reacts to, and they leak the map's outline: the removed pixels are instead imputed from
their neighbours (*noisy linear imputation*: each removed pixel is the weighted mean of its
eight neighbours, 1/6 for the four sharing a side and 1/12 for the four corners,
normalised over the neighbours inside the image, solved for all removed pixels at once as
one sparse linear system, plus Gaussian noise of standard deviation 0.01). Removal goes
most relevant first (MoRF: the probability should fall fast) and least relevant first
(LeRF: it should hold), at the fractions 0.1 ... 0.9; each curve's mean is its score, and
LeRF minus MoRF sums both up (higher is better).

The perturbed inputs are built a batch at a time and run through the model's fast copy
without gradients, in batches the memory budget allows (``automatic_batch``); each job
yields a ``Progress`` per batch and checks its cancel token before each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from engine.attribution.baselines import baseline_image
from engine.attribution.gradients import class_probabilities
from engine.attribution.maps import automatic_batch
from engine.core.jobs import CancelToken, Progress, within

BASELINES = ("blur", "gray")  # what deletion puts in, and insertion starts from
ROAD_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
ROAD_NOISE = 0.01  # standard deviation of the noise added to imputed pixels, in 0..1 units
SIDE, CORNER = 1 / 6, 1 / 12  # the imputation's neighbour weights


@dataclass(frozen=True)
class Curve:
    """The target's probability at each fraction of pixels removed (or revealed)."""

    kind: str  # "deletion", "insertion", "road-morf" or "road-lerf"
    fractions: np.ndarray
    probabilities: np.ndarray

    @property
    def score(self) -> float:
        """Deletion and insertion: the area under the curve (trapezoids over 0..1); ROAD: the
        curve's mean over its fractions (they leave out 0 and 1)."""
        if self.kind.startswith("road"):
            return float(np.mean(self.probabilities))
        widths = np.diff(self.fractions)
        return float(np.sum(widths * (self.probabilities[1:] + self.probabilities[:-1]) / 2))


def relevance_ranks(values: np.ndarray) -> np.ndarray:
    """H x W -> H x W: each pixel's place in the map's order, 0 for the most relevant (ties
    in reading order, so a constant map removes pixels row by row)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(np.shape(values))


def _check_map(values: np.ndarray, unit: torch.Tensor) -> None:
    if tuple(np.shape(values)) != tuple(unit.shape[-2:]):
        raise ValueError(f"the map is {np.shape(values)[1]}x{np.shape(values)[0]} and the model input "
                         f"{unit.shape[-1]}x{unit.shape[-2]}: score a map at the input's size")
    if not np.isfinite(values).all():
        raise ValueError("the map holds NaN or infinite values")


def _probability_job(model, network, build, count: int, index: int, size: tuple[int, int], cancel: CancelToken,
                     noun: str):
    """Job: the target's probability for inputs 0..count-1 of ``size`` (H, W) (``build(start,
    n)`` gives inputs start..start+n-1 in 0..1 units), in batches the memory budget allows."""
    height, width = size
    batch = max(1, min(count, automatic_batch(model, height, width, backward=False)))
    found = []
    for start in range(0, count, batch):
        cancel.check()
        pixels = build(start, min(batch, count - start)).to(model.device)
        normalised = model.preprocessing.normalise(pixels)
        found.append(model.state.run_in_fast_layout(lambda x: class_probabilities(network, x, index), normalised))
        done = start + len(found[-1])
        yield Progress(done / count, f"{done} of {count} {noun}")
    return np.concatenate(found)


def perturbation_curve(model, unit: torch.Tensor, values: np.ndarray, index: int, kind: str = "deletion",
                       baseline: str = "blur", steps: int = 100, cancel: CancelToken | None = None):
    """Job: the deletion or insertion ``Curve`` of map ``values`` (H x W, the input's size) for
    class ``index`` on a 1 x 3 x H x W input in 0..1 units."""
    if kind not in ("deletion", "insertion"):
        raise ValueError(f"no perturbation curve '{kind}': there are deletion and insertion")
    _check_map(values, unit)
    cancel = cancel or CancelToken()
    unit = unit.to(model.device)
    other = baseline_image(unit, baseline, BASELINES)
    start_from, put_in = (unit, other) if kind == "deletion" else (other, unit)
    ranks = torch.from_numpy(relevance_ranks(values)).to(model.device)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = torch.from_numpy(np.round(fractions * ranks.numel()).astype(np.int64)).to(model.device)

    def build(first: int, n: int) -> torch.Tensor:
        changed = ranks.unsqueeze(0) < counts[first:first + n].view(-1, 1, 1)  # n x H x W
        return torch.where(changed.unsqueeze(1), put_in, start_from)

    network = model.state.fast_copy(model.preprocessing.normalise(unit))
    probabilities = yield from _probability_job(model, network, build, steps + 1, index, tuple(unit.shape[-2:]), cancel,
                                                f"{kind} steps")
    return Curve(kind, fractions, probabilities)


def imputation_system(missing: np.ndarray) -> tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray]:
    """The noisy linear imputation's equations for the H x W boolean ``missing``: (A, B,
    indices of the missing pixels) with A x = B y, x the missing pixels' values and y all
    pixels' values (only known ones have weight in B): each missing pixel equals the
    normalised weighted mean of its neighbours inside the image."""
    height, width = missing.shape
    where = np.flatnonzero(missing.ravel())
    unknown = np.full(missing.size, -1, dtype=np.int64)
    unknown[where] = np.arange(where.size)
    rows, cols = np.divmod(where, width)
    a_rows, a_cols, a_vals = [np.arange(where.size)], [np.arange(where.size)], [np.ones(where.size)]
    b_rows, b_cols, b_vals = [], [], []
    offsets = [(dy, dx, SIDE if dy == 0 or dx == 0 else CORNER)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    insides = [(rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
               for dy, dx, _weight in offsets]
    total = sum(weight * inside for (_dy, _dx, weight), inside in zip(offsets, insides))
    for (dy, dx, weight), inside in zip(offsets, insides):
        neighbour = (rows + dy) * width + (cols + dx)
        share = weight / total
        at = np.flatnonzero(inside)
        also_missing = unknown[neighbour[at]] >= 0
        a_rows.append(at[also_missing])
        a_cols.append(unknown[neighbour[at[also_missing]]])
        a_vals.append(-share[at[also_missing]])
        known = at[~also_missing]
        b_rows.append(known)
        b_cols.append(neighbour[known])
        b_vals.append(share[known])
    a = sparse.csr_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
                          shape=(where.size, where.size))
    b = sparse.csr_matrix((np.concatenate(b_vals), (np.concatenate(b_rows), np.concatenate(b_cols))),
                          shape=(where.size, missing.size))
    return a, b, where


def impute(pixels: np.ndarray, missing: np.ndarray, noise: float = ROAD_NOISE, seed: int = 0) -> np.ndarray:
    """ROAD's noisy linear imputation of an H x W x C picture's ``missing`` pixels."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if not missing.any():
        return pixels.copy()
    if missing.all():
        raise ValueError("every pixel is removed: nothing is left to impute from")
    a, b, where = imputation_system(missing)
    flat = pixels.reshape(-1, pixels.shape[-1])
    solved = spsolve(a.tocsc(), b @ flat)
    solved = solved.reshape(where.size, -1)
    solved += np.random.default_rng(seed).normal(0.0, noise, solved.shape)
    result = flat.copy()
    result[where] = solved
    return result.reshape(pixels.shape)


def road_curve(model, unit: torch.Tensor, values: np.ndarray, index: int, order: str = "morf",
               fractions=ROAD_FRACTIONS, seed: int = 0, cancel: CancelToken | None = None):
    """Job: ROAD's ``Curve`` (``order`` "morf": most relevant removed first; "lerf": least)
    of map ``values`` for class ``index`` on a 1 x 3 x H x W input in 0..1 units."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"no removal order '{order}': there are morf and lerf")
    _check_map(values, unit)
    cancel = cancel or CancelToken()
    ranks = relevance_ranks(values if order == "morf" else -np.asarray(values))
    picture = unit[0].permute(1, 2, 0).double().cpu().numpy()
    imputed = []
    for k, fraction in enumerate(fractions):
        cancel.check()
        missing = ranks < round(fraction * ranks.size)
        imputed.append(torch.from_numpy(impute(picture, missing, seed=seed + k)).permute(2, 0, 1).float())
        yield Progress(0.5 * (k + 1) / len(fractions), f"imputed {k + 1} of {len(fractions)} removals")

    def build(first: int, n: int) -> torch.Tensor:
        return torch.stack(imputed[first:first + n])

    network = model.state.fast_copy(model.preprocessing.normalise(unit.to(model.device)))
    job = _probability_job(model, network, build, len(fractions), index, tuple(unit.shape[-2:]), cancel, "removals")
    probabilities = yield from within(job, 0.5, 1.0)
    return Curve(f"road-{order}", np.asarray(fractions, dtype=np.float64), probabilities)
