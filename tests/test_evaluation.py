"""Scores for attribution maps, on constructed cases whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, Progress, drive
from engine.evaluation.perturbation import (ROAD_FRACTIONS, SIDE, CORNER, Curve, impute, perturbation_curve,
                                            relevance_ranks, road_curve)
from engine.evaluation.pointing import pointing_game
from engine.evaluation.reference_maps import centre_map, edge_map, random_map, reference_map
from engine.models.model import LoadedModel
from engine.models.preprocessing import Preprocessing

SIDE_PX = 24
REGION = (slice(6, 14), slice(10, 18))  # the only pixels the model looks at: 8 x 8 of 24 x 24


class RegionNet(nn.Module):
    """Class 0's logit is 8 x (the region's mean red - 0.5); class 1's is 0: the region's
    brightness alone decides, and nothing outside it matters."""

    def forward(self, x):
        score = 8 * (x[:, 0, REGION[0], REGION[1]].mean(dim=(1, 2)) - 0.5)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def region_model() -> LoadedModel:
    return LoadedModel(name="region", module=RegionNet().eval(), labels=["bright", "dark"], weights="none",
                       preprocessing=Preprocessing(size=SIDE_PX, mean=(0.0,) * 3, std=(1.0,) * 3))


def photo() -> torch.Tensor:
    unit = torch.rand((1, 3, SIDE_PX, SIDE_PX), generator=torch.Generator().manual_seed(0)) * 0.3
    unit[:, 0, REGION[0], REGION[1]] = 1.0
    return unit


def oracle() -> np.ndarray:
    values = np.zeros((SIDE_PX, SIDE_PX), np.float32)
    values[REGION] = 1.0
    return values


def probability(unit: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.softmax(RegionNet()(unit), dim=1)[0, 0])


# -- deletion and insertion ---------------------------------------------------------------------------
def test_the_map_that_marks_what_the_model_reads_scores_best_and_a_random_map_clearly_worse():
    model, unit = region_model(), photo()
    scores = {}
    for name, values in (("oracle", oracle()), ("random", random_map(SIDE_PX, SIDE_PX, seed=1)),
                         ("inverse", 1 - oracle())):
        for kind in ("deletion", "insertion"):
            curve = drive(perturbation_curve(model, unit, values, 0, kind=kind, baseline="gray", steps=24))
            scores[name, kind] = curve.score
    # Deletion: low is faithful; insertion: high is faithful
    assert scores["oracle", "deletion"] < scores["random", "deletion"] - 0.2
    assert scores["oracle", "insertion"] > scores["random", "insertion"] + 0.1  # from gray, the logit saturates
    assert scores["inverse", "deletion"] > scores["random", "deletion"] > scores["oracle", "deletion"]
    assert scores["inverse", "insertion"] < scores["random", "insertion"] < scores["oracle", "insertion"]


def test_a_deletion_curve_is_the_probability_after_removing_each_fraction_in_the_maps_order():
    model, unit = region_model(), photo()
    values = random_map(SIDE_PX, SIDE_PX, seed=3)
    steps = 8
    curve = drive(perturbation_curve(model, unit, values, 0, kind="deletion", baseline="gray", steps=steps))
    order = np.argsort(-values.ravel(), kind="stable")
    np.testing.assert_allclose(curve.fractions, np.linspace(0, 1, steps + 1))
    for k, fraction in enumerate(curve.fractions):
        removed = unit.clone().view(3, -1)
        removed[:, order[:round(fraction * values.size)]] = 0.5
        assert curve.probabilities[k] == pytest.approx(probability(removed.view(1, 3, SIDE_PX, SIDE_PX)), abs=1e-6)
    # an insertion curve runs the other way: from the baseline to the photo
    inserted = drive(perturbation_curve(model, unit, values, 0, kind="insertion", baseline="gray", steps=steps))
    assert inserted.probabilities[0] == pytest.approx(curve.probabilities[-1], abs=1e-6)
    assert inserted.probabilities[-1] == pytest.approx(curve.probabilities[0], abs=1e-6)


def test_the_area_under_a_curve_is_the_trapezoid_rule_over_the_fraction():
    curve = Curve("deletion", np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]))
    assert curve.score == pytest.approx(0.5)
    assert Curve("road-morf", np.array([0.1, 0.2]), np.array([0.2, 0.4])).score == pytest.approx(0.3)


def test_ties_in_a_map_are_removed_in_reading_order():
    ranks = relevance_ranks(np.array([[1.0, 2.0], [2.0, 1.0]]))
    np.testing.assert_array_equal(ranks, [[2, 0], [1, 3]])


def test_perturbation_jobs_report_progress_and_stop_when_cancelled():
    model, unit = region_model(), photo()
    events = []
    drive(perturbation_curve(model, unit, oracle(), 0, steps=10), on_progress=events.append)
    assert events and events[-1].fraction == 1.0 and all(isinstance(e, Progress) for e in events)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(JobCancelled):
        drive(perturbation_curve(model, unit, oracle(), 0, steps=10, cancel=cancel))
    with pytest.raises(JobCancelled):
        drive(road_curve(model, unit, oracle(), 0, cancel=cancel))


def test_a_map_of_another_size_or_with_nan_is_refused_with_the_reason():
    model, unit = region_model(), photo()
    with pytest.raises(ValueError, match="score a map at the input's size"):
        drive(perturbation_curve(model, unit, np.zeros((10, 10)), 0))
    broken = oracle()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        drive(road_curve(model, unit, broken, 0))
    with pytest.raises(ValueError, match="baseline must be one of blur, gray"):
        drive(perturbation_curve(model, unit, oracle(), 0, baseline="black"))


# -- ROAD ---------------------------------------------------------------------------------------------
def test_a_lone_removed_pixel_is_imputed_as_the_weighted_mean_of_its_eight_neighbours():
    rng = np.random.default_rng(0)
    pixels = rng.random((5, 6, 3))
    missing = np.zeros((5, 6), bool)
    missing[2, 3] = True
    filled = impute(pixels, missing, noise=0.0)
    expected = sum((SIDE if dy == 0 or dx == 0 else CORNER) * pixels[2 + dy, 3 + dx]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    np.testing.assert_allclose(filled[2, 3], expected, rtol=1e-12)
    np.testing.assert_array_equal(filled[~missing], pixels[~missing])  # known pixels are kept


def test_imputed_pixels_solve_the_neighbour_equations_together_at_corners_and_in_clumps():
    rng = np.random.default_rng(1)
    pixels = rng.random((6, 7, 2))
    missing = np.zeros((6, 7), bool)
    missing[0, 0] = missing[0, 1] = missing[1, 0] = True  # a corner clump: neighbours of each other
    missing[3:5, 3:6] = True
    filled = impute(pixels, missing, noise=0.0)
    for row, col in zip(*np.nonzero(missing)):
        weights, total = 0.0, np.zeros(2)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                r, c = row + dy, col + dx
                if (dy, dx) == (0, 0) or not (0 <= r < 6 and 0 <= c < 7):
                    continue
                w = SIDE if dy == 0 or dx == 0 else CORNER
                weights += w
                total += w * filled[r, c]
        np.testing.assert_allclose(filled[row, col], total / weights, rtol=1e-10)


def test_imputation_noise_has_the_stated_spread_and_follows_the_seed():
    pixels = np.full((40, 40, 3), 0.5)
    missing = np.zeros((40, 40), bool)
    missing[5:35, 5:35] = True
    filled = impute(pixels, missing, noise=0.01, seed=3)
    assert np.std(filled[missing] - 0.5) == pytest.approx(0.01, rel=0.05)
    np.testing.assert_array_equal(filled, impute(pixels, missing, noise=0.01, seed=3))


def test_road_removing_the_region_first_drops_the_probability_and_removing_it_last_keeps_it():
    model, unit = region_model(), photo()
    morf = drive(road_curve(model, unit, oracle(), 0, order="morf"))
    lerf = drive(road_curve(model, unit, oracle(), 0, order="lerf"))
    np.testing.assert_allclose(morf.fractions, ROAD_FRACTIONS)
    original = probability(unit)
    # Removing 10% takes most of the 64 region pixels (58 of 576): imputed from dark surroundings
    assert morf.probabilities[0] < original - 0.3
    # Least relevant first: the region survives until the last fractions
    assert lerf.probabilities[:8].min() > original - 0.05
    assert lerf.score - morf.score > 0.3


# -- the pointing game ----------------------------------------------------------------------------------
def test_the_pointing_game_counts_hits_inside_and_within_the_tolerance_and_misses_beyond():
    values = np.zeros((100, 100), np.float32)
    box = (40, 40, 60, 60)  # rows 40..59, columns 40..59
    values[50, 50] = 1
    assert pointing_game(values, [box]).hit
    values[:] = 0
    values[50, 74] = 1  # 15 px right of column 59
    result = pointing_game(values, [box])
    assert result.hit and result.distance == 15 and result.point == (50, 74)
    values[:] = 0
    values[50, 75] = 1  # 16 px
    assert not pointing_game(values, [box]).hit
    assert pointing_game(values, [box, (45, 70, 55, 80)]).hit  # any of the object's boxes
    values[:] = 0
    values[75, 75] = 1  # diagonal: 16 px down and across is 22.6 px away
    assert pointing_game(values, [box]).distance == pytest.approx(np.hypot(16, 16))
    with pytest.raises(ValueError, match="at least one box"):
        pointing_game(values, [])


def test_a_maximum_shared_by_several_pixels_hits_when_one_of_them_is_on_the_object():
    values = np.zeros((50, 50), np.float32)
    values[0, 0] = values[25, 25] = 1
    result = pointing_game(values, [(20, 20, 30, 30)])
    assert result.hit and result.ties == 2 and result.point == (0, 0)


# -- reference maps --------------------------------------------------------------------------------------
def test_reference_maps_the_edges_of_a_step_the_centre_and_reproducible_noise():
    picture = np.zeros((20, 30, 3), np.float32)
    picture[:, 15:] = 1.0  # a vertical step between columns 14 and 15
    edges = edge_map(picture)
    assert set(np.argmax(edges, axis=1)) <= {14, 15} and edges[:, :10].max() == 0
    centre = centre_map(21, 31)
    assert np.unravel_index(np.argmax(centre), centre.shape) == (10, 15)
    np.testing.assert_allclose(centre, centre[::-1, ::-1], rtol=1e-6)
    np.testing.assert_array_equal(random_map(8, 9, seed=4), reference_map("random", np.zeros((8, 9, 3)), seed=4))
    assert not np.array_equal(random_map(8, 9, seed=4), random_map(8, 9, seed=5))
    with pytest.raises(ValueError, match="random, centre, edges"):
        reference_map("sobel", picture)


# -- a report: methods beside the reference maps ----------------------------------------------------------
def striped_photo():
    """The region bright in red, and a green stripe far from it: strong edges the model ignores."""
    from PIL import Image

    from engine.data.images import LoadedImage

    unit = photo()
    unit[:, 1, 18:22, :] = 1.0
    pixels = (unit[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return LoadedImage(image=Image.fromarray(pixels), path="striped.png", original_size=(SIDE_PX, SIDE_PX))


def test_a_report_scores_methods_beside_the_reference_maps_and_says_which_beat_the_edges():
    from engine.evaluation.report import reference_name, score_image, summarise_scores
    from engine.methods import MethodContext

    ctx = MethodContext(model=region_model(), image=striped_photo())
    box = (10, 6, 18, 14)  # x0, y0, x1, y1 of the region, in the photo's pixels
    report = drive(score_image(ctx, methods=("saliency", "guided-backprop"), target=0, baseline="gray", steps=12,
                               metrics=("deletion", "insertion", "pointing"), boxes=[box]))
    by_name = {scores.name: scores for scores in report.maps}
    assert list(by_name) == ["saliency", "guided-backprop", reference_name("random"), reference_name("centre"),
                             reference_name("edges")]
    saliency, edges = by_name["saliency"], by_name["reference: edges"]
    assert saliency.scores["deletion"] < edges.scores["deletion"] and saliency.scores["pointing"] == 1.0
    assert report.beats_edges(saliency) is True and report.beats_edges(edges) is None
    assert "ReLU" in by_name["guided-backprop"].refused and not by_name["guided-backprop"].scores
    assert by_name["reference: random"].scores["deletion"] > saliency.scores["deletion"]
    summary = summarise_scores([report, report])
    mean, spread, count = summary["saliency"]["deletion"]
    assert mean == pytest.approx(saliency.scores["deletion"]) and spread == pytest.approx(0) and count == 2


def test_a_report_refuses_unknown_metrics_and_the_pointing_game_without_boxes():
    from engine.core.errors import MethodInputError
    from engine.evaluation.report import score_image
    from engine.methods import MethodContext

    ctx = MethodContext(model=region_model(), image=striped_photo())
    with pytest.raises(MethodInputError, match="there are deletion, insertion, road, pointing"):
        drive(score_image(ctx, methods=("saliency",), metrics=("faithfulness",)))
    with pytest.raises(MethodInputError, match="needs boxes"):
        drive(score_image(ctx, methods=("saliency",), metrics=("pointing",)))


def test_every_frame_of_a_comparison_carries_its_report_not_a_methods_own_frames():
    from engine.evaluation.report import score_image
    from engine.methods import MethodContext

    ctx = MethodContext(model=region_model(), image=striped_photo())
    frames = []
    drive(score_image(ctx, methods=("rise", "saliency"), target=0, steps=4), on_frame=frames.append)
    assert [len(frame.metrics["report"].maps) for frame in frames] == [1, 2, 3, 4, 5]  # RISE streams frames of its own


def test_the_randomisation_score_is_the_similarity_to_the_same_method_on_a_random_copy_of_the_model():
    from engine.attribution.randomise import randomised_model
    from engine.evaluation.report import score_image
    from engine.evaluation.similarity import spearman_similarity
    from engine.methods import METHODS, MethodContext
    from tests.conftest import make_tiny_model
    from tests.test_methods import random_image

    model, image = make_tiny_model(), random_image()
    before = [p.clone() for p in model.module.parameters()]
    report = drive(score_image(MethodContext(model=model, image=image), methods=("saliency",), target=1,
                               metrics=("randomisation",)))
    by_name = {scores.name: scores for scores in report.maps}
    trained = drive(METHODS["saliency"].start(MethodContext(model=model, image=image), {"target": 1})).array
    random = drive(METHODS["saliency"].start(MethodContext(model=randomised_model(model, 0), image=image),
                                             {"target": 1})).array
    assert by_name["saliency"].scores["randomisation"] == pytest.approx(spearman_similarity(trained, random))
    assert by_name["saliency"].scores["randomisation"] < 0.9  # the map follows the weights
    assert all(by_name[f"reference: {kind}"].scores["randomisation"] == 1.0 for kind in ("random", "centre", "edges"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.module.parameters()))  # the model itself untouched


def test_a_comparison_s_progress_follows_the_passes_each_part_makes():
    from engine.evaluation.report import score_image
    from engine.methods import MethodContext

    ctx = MethodContext(model=region_model(), image=striped_photo())
    events = []
    drive(score_image(ctx, methods=("saliency", "rise"), target=0, steps=4), on_progress=events.append)
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    at = {event.message: event.fraction for event in events if event.message.endswith(": its map")}
    # RISE's 1,000 masks are most of the run; a gradient and the reference maps a sliver each
    assert at["rise: its map"] < 0.05 and at["reference: random: its map"] > 0.9


def test_boxes_in_the_photos_pixels_are_drawn_in_each_displays_own():
    from engine.evaluation.figure import boxed_display
    from engine.view.display import MapOverPhoto, ScalarMap, TileGrid

    photo_size, box = (200, 100), (20, 10, 60, 30)  # a 200x100 photo; x0, y0, x1, y1
    over = MapOverPhoto(photo=np.zeros((100, 200, 3), np.uint8), values=np.zeros((7, 11), np.float32))
    assert boxed_display(over, [box], photo_size).boxes == [(10, 20, 30, 60)]  # top, left, bottom, right
    at_input = ScalarMap(values=np.zeros((50, 100), np.float32), boxes=[(1, 1, 2, 2)])
    assert boxed_display(at_input, [box], photo_size).boxes == [(1, 1, 2, 2), (5, 10, 15, 30)]
    grid = TileGrid(tiles=at_input, shape=(1, 1), tile_size=(50, 100))
    assert boxed_display(grid, [box], photo_size) is grid  # no picture of the photo
    assert boxed_display(over, [], photo_size) is over
