"""segment: saliency-seeded GrabCut finds the cat, at the picture's own resolution."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.core.errors import JobCancelled, MethodInputError
from engine.data.images import LoadedImage, load_image
from engine.core.jobs import CancelToken, Progress, drive
from engine.methods import METHODS, MethodContext
from engine.methods.segment import CONTOUR
from engine.data.samples import sample_path

SPEC = METHODS["segment"]

# Chelsea (451x300) measured by eye on the picture: the cat fills all of it but the bright
# background in the top-left corner and the right-hand strip beyond its cheek and ear.
CAT_OUTLINE = [(0, 70), (25, 0), (395, 0), (372, 80), (368, 160), (352, 215), (330, 260), (318, 300), (0, 300)]
EYES = [(170, 113), (316, 136)]  # the pupils, x, y


def run(ctx, **params):
    return drive(SPEC.start(ctx, params))


def polygon_mask(points, size):
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas).astype(bool)


def test_on_chelsea_the_mask_lies_on_the_cat(bundled, chelsea):
    result = run(MethodContext(model=bundled, image=chelsea))
    mask = result.array
    assert mask.shape == (300, 451)  # the picture as loaded, not the model input
    assert set(np.unique(mask)) == {0.0, 1.0}
    cat = polygon_mask(CAT_OUTLINE, (451, 300))
    on = mask > 0.5
    rows, cols = np.nonzero(on)
    cx, cy = cols.mean(), rows.mean()
    assert cat[int(cy), int(cx)]  # the centroid is on the cat
    assert on.mean() < 0.7  # an object, not the whole picture
    assert (on & cat).sum() / on.sum() > 0.85  # and almost all of it on the cat
    for x, y in EYES:  # the most class-specific parts of a cat's face are in it
        assert on[y, x]
    assert result.metrics["centroid"] == pytest.approx([cx, cy])
    assert result.metrics["foreground_fraction"] == pytest.approx(on.mean())
    # The display is the picture at its size, with the outline drawn.
    assert result.display.rgb.shape == (300, 451, 3)
    assert (result.display.rgb == CONTOUR).all(axis=2).sum() > 100


def test_a_cat_in_a_corner_of_gravel_is_cut_out(bundled, chelsea):
    # A corner that a transposed or flipped map would miss, on a busy texture.
    canvas = load_image(sample_path("gravel")).image.resize((600, 400))
    canvas.paste(chelsea.image.resize((225, 150)), (340, 40))
    result = run(MethodContext(model=bundled, image=LoadedImage(canvas, path="cat-on-gravel.png")))
    truth = np.zeros((400, 600), dtype=bool)
    truth[40:190, 340:565] = True
    on = result.array > 0.5
    assert result.array.shape == (400, 600)
    assert (on & truth).sum() / (on | truth).sum() > 0.8  # IoU with the pasted box (measured 0.99)
    x0, y0, x1, y1 = result.metrics["bbox"]
    assert abs(x0 - 340) <= 10 and abs(y0 - 40) <= 10 and abs(x1 - 565) <= 10 and abs(y1 - 190) <= 10


def test_a_flat_picture_is_refused_with_a_reason(bundled):
    gray = LoadedImage(Image.new("RGB", (300, 200), (128, 128, 128)), path="gray.png")
    with pytest.raises(MethodInputError, match="one flat colour.*no object to segment"):
        run(MethodContext(model=bundled, image=gray))


def test_the_same_seed_gives_the_same_mask(bundled, chelsea):
    small = LoadedImage(chelsea.image.resize((150, 100)), path="small.png")
    first = run(MethodContext(model=bundled, image=small), iterations=2, seed=3)
    second = run(MethodContext(model=bundled, image=small), iterations=2, seed=3)
    np.testing.assert_array_equal(first.array, second.array)
    assert first.array.shape == (100, 150) and 0 < first.array.mean() < 1


def test_bad_parameters_are_clear(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    with pytest.raises(MethodInputError, match=r"--bg-percentile \(60\) must be below --fg-percentile \(50\)"):
        run(ctx, fg_percentile=50, bg_percentile=60)
    with pytest.raises(MethodInputError, match="--iterations must be at least 1"):
        run(ctx, iterations=0)
    with pytest.raises(MethodInputError, match="--smooth must not be negative"):
        drive(SPEC.start(ctx, smooth=-1))
    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=bundled, image=None))


def test_cancelling_between_grabcut_iterations_keeps_no_result(bundled, chelsea):
    cancel = CancelToken()
    small = LoadedImage(chelsea.image.resize((150, 100)), path="small.png")
    job = SPEC.start(MethodContext(model=bundled, image=small, cancel=cancel), {"iterations": 5})
    seen = []
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Progress) and event.message.startswith("GrabCut iteration"):
                seen.append(event.message)
                cancel.cancel()
    assert seen == ["GrabCut iteration 1 of 5 at 150x100"]
