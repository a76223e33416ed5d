"""``segment``: cut the object out of the picture, seeded by where the class evidence is.

Simonyan et al. 2014 (section 3.1) segment an object without any segmentation labels: a
class map says roughly where the object is, and GrabCut (Rother et al. 2004) turns that
rough guess into a sharp mask by modelling the colours of object and background:

1. the class map of the target (``--seeds``: Grad-CAM by default, or SmoothGrad or plain
   saliency; the method itself, run by id, so the two always agree) is stretched over the
   whole picture and smoothed (a Gaussian of ``--smooth`` times the shorter side);
2. pixels where the smoothed map reaches ``--fg-level`` of its maximum are foreground for
   certain, pixels below ``--bg-level`` of it background for certain; of the rest, those
   above the levels' midpoint start as probably foreground, the others as probably
   background;
3. OpenCV's GrabCut fits a colour mixture model to each side and cuts the graph,
   ``--iterations`` times. Its time grows with the pixels (five iterations at 451x300: 1.4 s
   of CPU), so it runs at most at ``WORK_SIDE`` pixels on the longer side; the mask is then
   scaled to the picture as loaded.

Why not the paper's recipe (plain saliency, its 95th and 30th percentiles)? A percentile
calls a fixed share of the picture background, whatever the object's size: on Chelsea,
whose face fills 80% of the frame, 30% of the cat was declared background and the mask
shrank to the eyes, nose and ears (15% of the picture, IoU 0.17 with the cat). Saliency is
also speckled: its peaks sit on edges, not on the object's body. Levels relative to the
map's maximum follow the object's size, and Grad-CAM's map covers the object's extent
(a 7x7 grid upsampled, one backward pass). ``python -m bench segment_quality`` measures
both on 24 composites with exact masks (objects pasted onto backgrounds): mean IoU 0.85
with these defaults, 0.62 with the paper's seeding, 0.58 for a centred box of half the
picture; on Chelsea 0.91 against the cat's outline. The cost: around a small object the
coarse Grad-CAM map also takes some background (a small cat on gravel: 0.59, where
percentiles gave 0.99); ``--seeds saliency`` with higher levels suits such pictures.

The certain seeds keep their labels, so the mask is never empty nor the whole picture. A
picture with no structure (one flat colour) has no object to find and is refused: GrabCut
would split it by noise. OpenCV's GMM initialisation draws from its own random generator,
which ``--seed`` seeds, so a run is reproducible.
"""

from __future__ import annotations

import numpy as np

from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result, within
from engine.view.display import Picture
from engine.methods.registry import METHODS  # read when run: engine.methods fills it after importing this module
from engine.methods.params import SEED, TARGET, MethodSpec, Param, ParamError

WORK_SIDE = 480  # GrabCut's working resolution (longer side), in pixels: about 1.3 s of CPU at 480x320
# A picture whose colours vary less than this (standard deviation in 8-bit levels, in
# every channel) holds nothing to segment: JPEG noise on a flat wall is about 1 level.
FLAT_STD = 1.5
CONTOUR = (255, 214, 0)
TINT = np.array([255, 214, 0], dtype=np.float32)


def _opencv():
    """OpenCV, imported on first use: listing the methods (and starting the window) need not load it."""
    try:
        import cv2
    except ImportError:
        raise MethodInputError("segment needs OpenCV: install it with pip install opencv-python-headless") from None
    return cv2


SEED_MAPS = ("gradcam", "smoothgrad", "saliency")  # method ids whose map seeds GrabCut


def seed_labels(evidence: np.ndarray, fg_level: float, bg_level: float) -> np.ndarray:
    """GrabCut's initial mask from a smoothed class map (same shape, uint8 GC_* labels):
    levels are fractions of the way from the map's minimum to its maximum."""
    cv2 = _opencv()
    low, high = float(evidence.min()), float(evidence.max())
    scaled = (evidence - low) / (high - low)  # the caller refuses a flat map
    labels = np.where(scaled > (fg_level + bg_level) / 2, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[scaled >= fg_level] = cv2.GC_FGD
    labels[scaled < bg_level] = cv2.GC_BGD
    return labels


def _working_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, WORK_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def check(p) -> None:
    if not p.bg_level < p.fg_level:
        raise ParamError("bg_level", f"({p.bg_level:g}) must be below --fg-level ({p.fg_level:g}), both fractions "
                                     "of the map's maximum between 0 and 1")


def run(ctx, p):
    image = ctx.require_image()
    cv2 = _opencv()
    fg_level, bg_level, iterations = p.fg_level, p.bg_level, p.iterations
    rgb = image.to_array()
    height, width = rgb.shape[:2]
    work_w, work_h = _working_size(width, height)
    work = cv2.resize(rgb, (work_w, work_h), interpolation=cv2.INTER_AREA) if (work_w, work_h) != (width, height) else rgb
    spread = work.reshape(-1, 3).astype(np.float64).std(axis=0)
    if float(spread.max()) < FLAT_STD:
        raise MethodInputError(f"the picture is one flat colour (standard deviation {float(spread.max()):.1f} of 255 "
                               "levels): there is no object to segment; open a photo with an object in it")

    resolved = ctx.resolve_target(p.target)
    p.record(target=resolved["index"])
    found = yield from within(METHODS[p.seeds].start(ctx, target=resolved["index"]), 0.0, 0.4)
    ctx.cancel.check()
    # The map covers the whole model input, which is the whole picture resized: stretch it corner to corner.
    evidence = cv2.resize(np.asarray(found.array, dtype=np.float32), (work_w, work_h), interpolation=cv2.INTER_LINEAR)
    sigma = p.smooth * min(work_w, work_h)
    if sigma > 0:
        evidence = cv2.GaussianBlur(evidence, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if not np.isfinite(evidence).all() or float(np.ptp(evidence)) == 0.0:
        raise MethodInputError(f"the {p.seeds} map of '{resolved['label']}' is flat here, so it cannot say where the "
                               "object is; try another --target")

    labels = seed_labels(evidence, fg_level, bg_level)
    seeds = {"foreground": int((labels == cv2.GC_FGD).sum()), "background": int((labels == cv2.GC_BGD).sum())}
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(work[..., ::-1])
    cv2.setRNGSeed(p.seed)
    # One iteration a call, so the job reports progress and can be cancelled between them:
    # the colour models carry over in the two arrays, so n calls of one iteration are one
    # call of n iterations.
    for done in range(iterations):
        yield Progress(0.45 + 0.55 * done / iterations, f"GrabCut iteration {done + 1} of {iterations} at {work_w}x{work_h}")
        ctx.cancel.check()
        cv2.grabCut(bgr, labels, None, background_model, foreground_model, 1,
                    cv2.GC_INIT_WITH_MASK if done == 0 else cv2.GC_EVAL)
    working_mask = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if (work_w, work_h) != (width, height):
        mask = (cv2.resize(working_mask, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.float32)
    else:
        mask = working_mask

    rows, cols = np.nonzero(mask)
    fraction = float(mask.mean())
    metrics = {
        "foreground_fraction": fraction,
        "centroid": [float(cols.mean()), float(rows.mean())] if rows.size else None,  # x, y in picture pixels
        "bbox": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if rows.size else None,
        "seed_pixels": seeds,
        "working_size": [work_w, work_h],
        "mask_size": [width, height],
    }
    note = (f"GrabCut seeded by the {p.seeds} map of '{resolved['label']}': {fraction:.0%} of the picture; "
            f"seeds above {fg_level:g} / below {bg_level:g} of the map's maximum")
    yield Progress(1.0, "done")
    return Result(display=Picture(rgb=draw_mask(rgb, mask), note=note), array=mask, target=resolved,
                  metrics=metrics)


def draw_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The picture with the background dimmed, the object lightly tinted and its outline drawn."""
    cv2 = _opencv()
    inside = mask[..., None] > 0.5
    picture = rgb.astype(np.float32)
    shown = np.where(inside, 0.8 * picture + 0.2 * TINT, 0.35 * picture)
    shown = np.clip(shown + 0.5, 0, 255).astype(np.uint8)
    contours, _hierarchy = cv2.findContours(inside[..., 0].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(2, round(max(rgb.shape[:2]) / 250))
    cv2.drawContours(shown, contours, -1, CONTOUR, thickness)
    return shown


SPEC = MethodSpec(
    id="segment",
    title="Segment (saliency + GrabCut)",
    summary="Cut the object out without labels: a class map (Grad-CAM, SmoothGrad or saliency) seeds GrabCut "
            "(Simonyan et al. 2014).",
    params=(
        TARGET,
        Param("seeds", "choice", "gradcam", "the class map that says where the object is: gradcam (covers the "
              "object's extent), smoothgrad, or saliency (the paper's; speckled, on edges)", choices=SEED_MAPS),
        Param("fg_level", "float", 0.4, "pixels where the smoothed map reaches this fraction of its maximum are the "
              "object", minimum=0.0, maximum=1.0),
        Param("bg_level", "float", 0.05, "pixels where the smoothed map is below this fraction of its maximum are "
              "background", minimum=0.0, maximum=1.0),
        Param("iterations", "int", 5, "GrabCut iterations", minimum=1, maximum=50),
        Param("smooth", "float", 0.03, "blur of the class map, as a fraction of the picture's shorter side",
              minimum=0.0, maximum=0.5),
        SEED,
    ),
    run=run,
    check=check,
)
