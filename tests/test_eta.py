"""How long a run takes: the estimate before it (calibration x declared cost) and the ETA during it."""

from __future__ import annotations

import time

import pytest

from engine.core.eta import Eta, duration_text
from engine.methods import METHODS
from engine.methods.cost import COSTS, Cost, Machine, estimate_seconds, method_cost


def test_durations_read_as_a_person_says_them():
    assert duration_text(3.2) == "about 3 s"
    assert duration_text(42) == "about 40 s"
    assert duration_text(130) == "about 2 min"
    assert duration_text(3 * 3600 + 600) == "about 3 h 10 min"
    assert duration_text(float("nan")) == ""


def _feed(eta: Eta, start_time: float, start_fraction: float, events: int, seconds_each: float, step: float):
    now, fraction = start_time, start_fraction
    for _ in range(events):
        now += seconds_each
        fraction += step
        eta.update(fraction, now)
    return now, fraction


def test_eta_follows_the_recent_pace_when_the_machine_slows_down():
    eta = Eta(start=0.0)
    now, fraction = _feed(eta, 0.0, 0.0, 20, 1.0, 0.01)  # 1 s per 1 %
    assert eta.seconds_left(now) == pytest.approx(80.0)
    # The machine gets twice as slow: within a few events the ETA says twice as long as the
    # old pace would for what is left.
    history = []
    for _ in range(6):
        now, fraction = _feed(eta, now, fraction, 1, 2.0, 0.01)
        history.append(eta.seconds_left(now) / ((1 - fraction) * 100))  # against the old pace's ETA
    assert history[0] < 1.5  # one slow step is not yet a trend
    assert history[4] > 1.85 and history[5] <= 2.0 + 1e-9
    # and it comes back when the pace does
    now, fraction = _feed(eta, now, fraction, 8, 1.0, 0.01)
    assert eta.seconds_left(now) == pytest.approx((1 - fraction) * 100, rel=0.05)


def test_eta_counts_down_between_events_and_owns_up_to_a_stall():
    eta = Eta(start=0.0)
    now, fraction = _feed(eta, 0.0, 0.0, 10, 1.0, 0.05)  # 1 s per 5 %: 10 s left
    assert eta.seconds_left(now + 0.5) == pytest.approx(9.5)
    # No event for 6 s where one was due each second: the next step is that slow, so are the rest.
    assert eta.seconds_left(now + 6.0) == pytest.approx(0.5 * 6.0 / 0.05 - 6.0)
    assert "left" in eta.text(now)


def test_eta_uses_the_prior_until_progress_shows_a_pace_and_ignores_unknown_amounts():
    eta = Eta(start=0.0, prior=120.0)
    assert eta.seconds_left(30.0) == pytest.approx(90.0)
    eta.update(-1.0, 31.0)  # "amount unknown": no pace from it
    assert eta.seconds_left(31.0) == pytest.approx(89.0)
    assert Eta(start=0.0).text(5.0) == ""


def _machine(**changes) -> Machine:
    values = dict(input_size=(224, 224), model_size=224, forward_s=0.01, backward_s=0.03,
                  shapes={"head.relu6": (1, 1280, 7, 7)}, presets={"late": "head.relu6"}, blocks=10)
    values.update(changes)
    return Machine(**values)


def test_declared_costs_follow_the_parameters():
    machine = _machine()
    occlusion = method_cost(METHODS["occlusion"], {"window": 16, "stride": 8}, machine)
    assert occlusion == Cost(forwards=27 * 27 + 1)  # Captum's positions: ceil((224 - 16) / 8) + 1 per axis
    scorecam = method_cost(METHODS["gradcam"], {"variant": "scorecam"}, machine)
    assert scorecam.forwards == 1281  # one masked forward per channel of the late layer
    assert method_cost(METHODS["gradcam"], {}, machine) == Cost(backwards=1)
    smooth = [method_cost(METHODS["smoothgrad"], {"samples": n}, machine).backwards for n in (10, 20)]
    assert smooth == [10, 20]
    # a class-viz picture twice the side costs four times as much; its crops' cost goes with their size
    small, large = (method_cost(METHODS["class-viz"], {"size": s, "views": 1}, machine).backwards for s in (112, 224))
    assert large == pytest.approx(4 * small)
    crops = {n: method_cost(METHODS["class-viz"], {"views": n, "view_size": 112}, machine).backwards for n in (2, 4)}
    assert crops[4] - crops[2] == pytest.approx(64 * 2 * 0.25)  # 64 steps, two more crops of a quarter the pixels
    neuron = method_cost(METHODS["class-viz"], {"objective": "neuron", "views": 4}, machine).backwards
    assert neuron == pytest.approx(64 * 1.5)  # the neuron objective scores the whole picture only
    # the sanity check: every method on the trained model, then once per randomised block
    one_round = sum((method_cost(METHODS[m], {}, machine) for m in ("saliency", "gradcam")), Cost())
    assert method_cost(METHODS["sanity-check"], {"methods": "saliency,gradcam"}, machine) == one_round * 11
    assert method_cost(METHODS["sanity-check"], {"methods": "saliency,gradcam", "steps": 3}, machine) == one_round * 4
    # Johnson's recipe: 1000 steps of 4 crops at 256 px through the style and the loss
    # network, forward and back; at 0.4 s a pass (a busy 2-core machine) that is hours,
    # while the CPU-sized default (100 steps of 2 crops at 128 px) is under a minute
    busy = _machine(backward_s=0.4)
    johnson = {"style": "a.png", "steps": 1000, "batch": 4, "size": 256}
    train = estimate_seconds(METHODS["fast-style-train"], johnson, busy)
    assert train == pytest.approx(1000 * 4 * 2 * (256 * 256) / (224 * 224) * 0.4)
    assert train > 3600
    default = estimate_seconds(METHODS["fast-style-train"], {"style": "a.png"}, busy)
    assert default == pytest.approx(100 * 2 * 2 * (128 * 128) / (224 * 224) * 0.4) and default < 60


def test_no_estimate_for_values_that_do_not_bind_or_methods_without_a_cost():
    machine = _machine()
    assert estimate_seconds(METHODS["occlusion"], {"window": "many"}, machine) is None
    assert estimate_seconds(METHODS["occlusion"], {"window": 8, "stride": 16}, machine) is None  # stride > window
    assert "activations" not in COSTS and estimate_seconds(METHODS["activations"], {}, machine) is None


def test_earlier_runs_scale_a_methods_estimate():
    plain = estimate_seconds(METHODS["smoothgrad"], {}, _machine())
    assert estimate_seconds(METHODS["smoothgrad"], {}, _machine(ratios={"smoothgrad": 1.5})) == pytest.approx(1.5 * plain)


CHEAP_RUNS = [
    ("occlusion", {"window": 64, "stride": 40}),
    ("integrated-gradients", {"steps": 6}),
    ("class-viz", {"steps": 6}),
    ("dream", {"steps": 2, "octaves": 2}),
]


@pytest.fixture(scope="module")
def session(chelsea_path):
    from engine.app.session import Session

    session = Session()
    session.load_model()
    session.open_image(chelsea_path)
    return session


@pytest.mark.parametrize("method_id,values", CHEAP_RUNS, ids=[run[0] for run in CHEAP_RUNS])
def test_the_estimate_is_within_a_factor_of_two_of_the_run(method_id, values, session):
    from engine.core.jobs import CancelToken, drive

    ratios = []
    # Other work on these cores comes and goes: the calibration is timed afresh before each
    # try, and a try counts when the run and its calibration saw the same machine.
    for _ in range(3):
        machine = session.calibrate(fresh=True).with_ratios({})
        session.machine = machine  # no correction from earlier runs: the declared cost alone
        estimate = estimate_seconds(METHODS[method_id], values, machine)
        start = time.perf_counter()
        drive(session.start(method_id, values, CancelToken()))
        ratios.append((time.perf_counter() - start) / estimate)
        if 0.5 <= ratios[-1] <= 2.0:
            break
    assert 0.5 <= ratios[-1] <= 2.0, ratios
    # and the runs taught the estimate: the method's ratio is a weighted mean of the measured ones
    assert min(ratios) * 0.9 <= session.machine.ratios[method_id] <= max(ratios) * 1.1


def test_a_cancelled_timing_publishes_nothing_and_the_next_one_runs(session):
    from engine.core.errors import JobCancelled
    from engine.core.jobs import CancelToken

    token = CancelToken()
    token.cancel()  # a job the user asked for came first
    session.machine = None
    with pytest.raises(JobCancelled):
        session.calibrate(fresh=True, cancel=token)
    assert session.machine is None
    machine = session.calibrate()
    assert machine.forward_s > 0 and machine.backward_s > machine.forward_s
    assert session.machine is machine
