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
from bench.segment_quality import centred_box, composites, iou, old_seeding_mask

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


def test_on_chelsea_the_mask_is_the_cat(bundled, chelsea):
    result = run(MethodContext(model=bundled, image=chelsea))
    mask = result.array
    assert mask.shape == (300, 451)  # the picture as loaded, not the model input
    assert set(np.unique(mask)) == {0.0, 1.0}
    cat = polygon_mask(CAT_OUTLINE, (451, 300))
    on = mask > 0.5
    rows, cols = np.nonzero(on)
    cx, cy = cols.mean(), rows.mean()
    assert cat[int(cy), int(cx)]  # the centroid is on the cat
    # The cat, not its eyes, nose and ears (the paper's percentile seeding: 15% of the
    # picture, IoU 0.17), nor the whole picture with the bright corner (measured: IoU 0.91,
    # 94% of the mask on the cat).
    assert iou(on, cat) > 0.8
    assert (on & cat).sum() / on.sum() > 0.9
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
    # All of the pasted box is in the mask and the mask is centred on it. Grad-CAM's coarse
    # map (7x7, upsampled) also takes some gravel around a small object: IoU measured 0.59
    # here, where the paper's percentile seeding gave 0.99 (its weakness is the large
    # objects of the composites and Chelsea's own photo, 0.17 there).
    assert (on & truth).sum() / truth.sum() > 0.95
    assert (on & truth).sum() / (on | truth).sum() > 0.5
    cx, cy = result.metrics["centroid"]
    assert abs(cx - 452.5) <= 40 and abs(cy - 115) <= 40


# Three of the benchmark's composites (bench/segment_quality.py): Chelsea's face over 89%
# and 69% of the picture on a blurred photo and on brick, where the paper's percentile
# seeding calls 30% of the cat background (IoU 0.26 and 0.29), and the cup on a blurred
# rocket (0.65).
HARD = (8, 16, 15)


@pytest.fixture(scope="module")
def hard_composites():
    made = composites(max(HARD) + 1)
    return [made[index] for index in HARD]


def test_composites_with_known_masks_are_cut_out(bundled, hard_composites):
    for name, picture, truth in hard_composites:
        mask = run(MethodContext(model=bundled, image=LoadedImage(picture, path=f"{name}.png"))).array > 0.5
        score = iou(mask, truth)
        # Well above the trivial guess, a centred box of half the picture, and the paper's percentile seeding.
        assert score > 0.8, name
        assert score > iou(centred_box(truth.shape), truth) + 0.2, name
        assert score > iou(old_seeding_mask(bundled, picture), truth), name


def test_the_composites_masks_are_exact(hard_composites):
    # The ellipse pasted is the truth: inside it the picture is the object's pixels, and the
    # benchmark's pictures are the same for the same seed.
    again = composites(max(HARD) + 1)
    for (name, picture, truth), index in zip(hard_composites, HARD):
        assert again[index][0] == name
        np.testing.assert_array_equal(np.asarray(again[index][1]), np.asarray(picture))
        assert 0.3 < truth.mean() < 0.95
        rows, cols = np.nonzero(truth)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        if rows.min() > 0 and cols.min() > 0 and rows.max() < truth.shape[0] - 1 and cols.max() < truth.shape[1] - 1:
            assert truth.sum() == pytest.approx(np.pi / 4 * height * width, rel=0.03)  # an ellipse filling its box


def test_a_flat_class_map_is_refused_with_a_reason(bundled, chelsea, monkeypatch):
    from engine.core.jobs import Result
    from engine.methods import MethodSpec, Param

    def flat(ctx, p):
        yield from ()
        return Result(display=None, array=np.full((224, 224), 0.25, dtype=np.float32))

    monkeypatch.setitem(METHODS, "gradcam", MethodSpec(id="gradcam", title="", summary="",
                                                       params=(Param("target", "target"),), run=flat))
    with pytest.raises(MethodInputError, match="the gradcam map of 'Egyptian cat' is flat here.*another --target"):
        run(MethodContext(model=bundled, image=chelsea))


def test_every_seed_map_finds_the_cat_in_the_corner(bundled, chelsea):
    canvas = load_image(sample_path("gravel")).image.resize((300, 200))
    canvas.paste(chelsea.image.resize((150, 100)), (140, 20))
    truth = np.zeros((200, 300), dtype=bool)
    truth[20:120, 140:290] = True
    for seeds in ("saliency", "smoothgrad"):
        result = run(MethodContext(model=bundled, image=LoadedImage(canvas, path="cat-on-gravel.png")), seeds=seeds)
        assert iou(result.array, truth) > 0.7, seeds
        assert result.params["seeds"] == seeds and f"seeded by the {seeds} map" in result.display.note


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
    with pytest.raises(MethodInputError, match=r"--bg-level \(0.6\) must be below --fg-level \(0.5\)"):
        run(ctx, fg_level=0.5, bg_level=0.6)
    with pytest.raises(MethodInputError, match="--seeds"):
        run(ctx, seeds="occlusion")
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
