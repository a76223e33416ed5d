"""Fast style transfer: the transformation network, conditional instance norm, training
that lowers its loss and resumes exactly, the style library and its file checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import CancelToken, Frame, drive
from engine.methods import METHODS, MethodContext
from engine.data.samples import sample_path
from engine.style import style_library
from engine.style.style_library import (BUILTIN_DIR, DEFAULT_STYLE, checkpoint_path, library_dir, list_styles, load_style,
                                        save_style, style_names_of, style_picture)
from engine.style.style_net import MIN_SIDE, StyleNet, build_style_net, one_hot_mix, style_mix

TRAIN = METHODS["fast-style-train"]
STYLISE = METHODS["fast-style"]
# A network small enough to train in a fraction of a second per step on a CPU.
TINY_NET = {"width": 8, "blocks": 1}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty library, and no shipped styles beside it (those are tested on their own,
    test_the_shipped_style_is_the_default...), so what a test trains is all there is."""
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(style_library, "BUILTIN_DIR", tmp_path / "shipped")
    return tmp_path / "cache"


@pytest.fixture
def content_folder(tmp_path):
    """Four small photos: decoding them costs nothing next to a training step."""
    folder = tmp_path / "content"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        Image.open(sample_path(name)).convert("RGB").resize((48, 40)).save(folder / f"{name}.png")
    return folder


def random_net(styles: int, seed: int = 0) -> StyleNet:
    """A small network whose gamma and beta differ per style, as after training."""
    generator = torch.Generator().manual_seed(seed)
    net = build_style_net({"styles": styles, "width": 4, "blocks": 1}, generator=generator).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith(("gamma", "beta")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return net


def train(ctx, save, steps, cancel_at=None, **overrides):
    """Run fast-style-train; returns (result or None if cancelled, frames, progress messages)."""
    values = {"style": [str(sample_path("coffee"))], "steps": steps, "size": 32, "style_size": 0, "batch": 2,
              "save": str(save), "preview_every": 4, **TINY_NET, **overrides}
    frames, messages = [], []

    def on_frame(frame: Frame) -> None:
        frames.append(frame)
        if cancel_at is not None and frame.step == cancel_at:
            ctx.cancel.cancel()

    job = TRAIN.start(ctx, values)
    try:
        result = drive(job, on_progress=lambda p: messages.append(p.message), on_frame=on_frame)
    except JobCancelled:
        result = None
    return result, frames, messages


def context(model, image=None):
    return MethodContext(model=model, image=image, cancel=CancelToken())


# ---------------------------------------------------------------- the network


def test_network_is_fully_convolutional():
    net = random_net(styles=1)
    with torch.no_grad():
        for height, width in ((8, 8), (13, 21), (32, 17), (45, 64)):
            out = net(torch.rand(2, 3, height, width))
            assert out.shape == (2, 3, height, width)
            assert 0 < float(out.min()) and float(out.max()) < 1
    with pytest.raises(MethodInputError, match=f"at least {MIN_SIDE}"):
        net(torch.rand(1, 3, MIN_SIDE - 1, 20))


def test_conditional_instance_norm_mixes_gamma_and_beta():
    net = random_net(styles=2)
    x = torch.rand(1, 3, 24, 20)
    state = net.state_dict()

    def single(pick) -> StyleNet:
        """A one-style network whose gamma/beta are pick(gamma_rows)."""
        one = build_style_net({"styles": 1, "width": 4, "blocks": 1}).eval()
        one.load_state_dict({k: pick(v) if k.endswith(("gamma", "beta")) else v for k, v in state.items()})
        return one

    with torch.no_grad():
        first = net(x, torch.tensor([1.0, 0.0]))
        second = net(x, torch.tensor([0.0, 1.0]))
        half = net(x, torch.tensor([0.5, 0.5]))
        assert torch.equal(first, single(lambda rows: rows[:1])(x))
        assert torch.allclose(half, single(lambda rows: rows.mean(0, keepdim=True))(x), atol=1e-6)
        assert (first - second).abs().max() > 0.05  # the styles really differ
        # One row of weights per image: each image gets its own blend.
        both = net(x.expand(2, -1, -1, -1), torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        assert torch.allclose(both[0], first[0], atol=1e-6) and torch.allclose(both[1], half[0], atol=1e-6)


def test_style_mix_weights_are_normalised_and_checked():
    assert torch.allclose(style_mix([7, 3], 2), torch.tensor([0.7, 0.3]))
    assert torch.allclose(style_mix(None, 4), torch.full((4,), 0.25))
    assert torch.equal(style_mix([0.2, 0.8], 1), torch.ones(1))  # a single style has nothing to mix
    with pytest.raises(MethodInputError, match="needs 3 weights"):
        style_mix([0.5, 0.5], 3)
    with pytest.raises(MethodInputError, match="not negative"):
        style_mix([1, -1], 2)
    with pytest.raises(MethodInputError, match="all be zero"):
        style_mix([0, 0], 2)
    assert torch.equal(one_hot_mix(1, 3), torch.tensor([0.0, 1.0, 0.0]))


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss(bundled, cache, content_folder):
    # Johnson et al.'s weight and learning rate, the ones the numbers below were measured with.
    result, frames, _ = train(context(bundled), "lowers", steps=20, dataset=str(content_folder), style_weight=2.0,
                              lr=1e-3)
    losses = [frame.metrics["loss"] for frame in frames]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert {"content_loss", "style_loss", "tv_loss"} <= set(frames[0].metrics)
    # The untrained network's output is a flat grey-ish picture far from the coffee photo's
    # Grams; 20 steps with these weights and learning rate take the style loss down
    # 4-fold and the total 2.5-fold (the content term, near its floor already, moves little).
    assert result.metrics["loss_first"] == losses[0] and result.metrics["loss_last"] == losses[-1]
    assert max(losses[-3:]) < losses[0] / 2.5
    style = [frame.metrics["style_loss"] for frame in frames]
    assert max(style[-3:]) < style[0] / 4
    assert frames[0].metrics["loss"] == pytest.approx(sum(frames[0].metrics[f"{part}_loss"]
                                                          for part in ("content", "style", "tv")), rel=1e-5)
    saved = library_dir() / "lowers.pt"
    assert result.metrics["saved"] == str(saved) and saved.is_file()
    assert [entry.name for entry in list_styles()] == ["lowers"]
    assert list_styles()[0].style_names == ["coffee"] and list_styles()[0].steps == 20
    assert result.display.rgb.std() > 5  # a picture, not a constant
    assert len(result.frames) >= 2


def test_a_cancelled_run_given_no_save_place_leaves_nothing_behind(bundled, cache, content_folder):
    ctx = context(bundled)
    values = {"style": [str(sample_path("coffee"))], "steps": 8, "size": 32, "style_size": 0, "batch": 2, "preview_every": 1,
              "checkpoint_every": 2, "dataset": str(content_folder), **TINY_NET}
    written = []

    def on_frame(frame):
        if frame.step == 5:  # the periodic checkpoint of step 4 is there, in the library
            written.extend(path.name for path in library_dir().iterdir())
            ctx.cancel.cancel()

    with pytest.raises(JobCancelled):
        drive(TRAIN.start(ctx, values), on_frame=on_frame)
    assert written == ["coffee.pt.ckpt"]
    assert [path for path in library_dir().rglob("*") if path.is_file()] == [] and list_styles() == []
    # Given a save place, the same cancel keeps the work done, to continue later.
    ctx = context(bundled)
    with pytest.raises(JobCancelled):
        drive(TRAIN.start(ctx, {**values, "save": "kept"}), on_frame=on_frame)
    assert torch.load(checkpoint_path(library_dir() / "kept.pt"), weights_only=True)["step"] == 5


def test_the_shipped_style_is_the_default_and_a_library_style_of_its_name_comes_first(bundled, chelsea, tmp_path,
                                                                                         monkeypatch):
    # The real shipped files: the picture style and fast-style-train start from, the network fast-style runs.
    assert Path(style_picture(DEFAULT_STYLE)) == BUILTIN_DIR / "stained-glass.png"
    assert style_picture("no-such-style") == "no-such-style"  # left for load_image to explain
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    assert [entry.name for entry in list_styles()] == [DEFAULT_STYLE]
    result = drive(STYLISE.start(context(bundled, chelsea), {"size": 96}))
    assert result.metrics["style_model"] == str(BUILTIN_DIR / "stained-glass.pt")
    assert result.metrics["styles"] == ["stained-glass"] and result.metrics["trained_steps"] >= 100
    photo = np.asarray(chelsea.image.convert("RGB").resize(result.display.rgb.shape[1::-1]), dtype=np.float64)
    assert np.abs(result.display.rgb - photo).mean() > 20  # restyled, not the photo passed through
    # A style the user trained under the same name is theirs, and comes first.
    save_style(library_dir() / "stained-glass.pt", random_net(styles=1), ["mine"], {})
    assert [(entry.name, entry.style_names) for entry in list_styles()] == [(DEFAULT_STYLE, ["mine"])]
    assert load_style(DEFAULT_STYLE).style_names == ["mine"]


def test_cancel_keeps_finished_work_and_resume_matches_an_uninterrupted_run(bundled, cache, content_folder, tmp_path):
    common = {"dataset": str(content_folder), "checkpoint_every": 2, "seed": 3}
    whole, _, _ = train(context(bundled), tmp_path / "whole.pt", steps=8, **common)

    # Cancelled after step 5: the checkpoint written at cancel holds all five steps.
    periodic = []
    target = tmp_path / "part.pt"

    def on_step(frame):
        if frame.step == 5:  # what a crash at this point would leave: the step-4 checkpoint
            periodic.append(torch.load(checkpoint_path(target), weights_only=True)["step"])

    ctx = context(bundled)
    values = {"style": [str(sample_path("coffee"))], "steps": 8, "size": 32, "style_size": 0, "batch": 2,
              "save": str(target), "preview_every": 4, **TINY_NET, **common}
    job = TRAIN.start(ctx, values)
    with pytest.raises(JobCancelled):
        drive(job, on_frame=lambda f: (on_step(f), ctx.cancel.cancel() if f.step == 5 else None))
    assert periodic == [4]
    checkpoint = torch.load(checkpoint_path(target), weights_only=True)
    assert checkpoint["step"] == 5 and not target.exists()

    # Resuming with --steps 5 trains nothing: the saved network is the checkpoint's.
    done, frames, messages = train(context(bundled), target, steps=5, **common)
    assert frames == [] and done.metrics["resumed_from"] == 5 and done.metrics["trained_steps"] == 0
    assert any("resuming from the checkpoint at step 5" in m for m in messages)
    saved = torch.load(target, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in checkpoint["model"]["state_dict"].items())

    # Resuming to step 8 continues the count and ends exactly where the whole run did.
    done, frames, _ = train(context(bundled), target, steps=8, **common)
    assert [f.step for f in frames] == [6, 7, 8] and done.metrics["steps"] == 8
    assert done.metrics["loss_first"] == whole.metrics["loss_first"]
    resumed = torch.load(target, weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "whole.pt", weights_only=True)["state_dict"]
    # Same ops in the same order on the CPU: bit for bit equal, not merely close.
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert done.metrics["loss_last"] == whole.metrics["loss_last"]


def test_a_checkpoint_from_another_training_is_not_resumed(bundled, cache, content_folder):
    first, _, _ = train(context(bundled), "mixed", steps=2, dataset=str(content_folder))
    assert first.metrics["resumed_from"] == 0
    with pytest.raises(MethodInputError, match="other style images.*--restart"):
        train(context(bundled), "mixed", steps=3, dataset=str(content_folder), style=[str(sample_path("brick"))])
    again, frames, _ = train(context(bundled), "mixed", steps=2, dataset=str(content_folder),
                             style=[str(sample_path("brick"))], restart=True)
    assert again.metrics["resumed_from"] == 0 and [f.step for f in frames] == [1, 2]


def test_training_input_errors(bundled, cache, content_folder, tmp_path):
    with pytest.raises(MethodInputError, match="classifier.*N x C x H x W"):
        train(context(bundled), "x", steps=1, dataset=str(content_folder), style_layers="classifier")
    broken = tmp_path / "broken"
    broken.mkdir()
    for index in range(3):
        (broken / f"{index}.png").write_bytes(b"not a png")
    with pytest.raises(MethodInputError, match="none of the 3 images"):
        train(context(bundled), "x", steps=1, dataset=str(broken))


def test_two_styles_train_one_network_and_fast_style_blends_them(bundled, cache, content_folder, chelsea):
    styles = [str(sample_path("brick")), str(sample_path("coffee"))]
    trained, frames, _ = train(context(bundled), "pair", steps=4, dataset=str(content_folder), style=styles)
    assert [f.metrics["style"] for f in frames] == [0, 1, 0, 1]  # styles take turns
    assert trained.metrics["styles"] == ["brick", "coffee"]
    assert trained.display.rgb.shape[1] > 2 * trained.display.rgb.shape[0]  # the preview shows both styles

    def stylise(**values):
        return drive(STYLISE.start(context(bundled, chelsea), {"style_model": "pair", "size": 32, **values}))

    first, again = stylise(style_mix="1,0"), stylise(style_mix="2, 0")
    assert first.array.shape == (32, 48, 3)  # chelsea is 451 x 300: shorter side 32
    assert (first.array == again.array).all()  # reproducible, and the weights are normalised
    model = load_style("pair")
    unit = bundled.preprocessing.to_unit_tensor(chelsea.image, 32)
    with torch.no_grad():
        blend = model.net(unit, torch.tensor([0.7, 0.3]))[0].permute(1, 2, 0).numpy()
    assert abs(stylise(style_mix="0.7,0.3").array - blend).max() < 1e-6
    assert stylise(style_mix="0.7,0.3").metrics["mix"] == [0.7, 0.3]
    with pytest.raises(MethodInputError, match="needs 2 weights"):
        stylise(style_mix="1,0,0")
    with pytest.raises(MethodInputError, match="weights, numbers separated by commas"):
        stylise(style_mix="much,less")


def test_single_style_network_ignores_the_mix(bundled, cache, content_folder, chelsea, tmp_path):
    train(context(bundled), tmp_path / "one.pt", steps=1, dataset=str(content_folder))
    run = lambda **v: drive(STYLISE.start(context(bundled, chelsea),  # noqa: E731
                                          {"style_model": str(tmp_path / "one.pt"), "size": 24, **v}))
    plain, mixed = run(), run(style_mix="0.3,0.7")
    assert (plain.array == mixed.array).all() and mixed.metrics["mix_ignored"] and "ignored" in mixed.display.note
    # A training checkpoint is a usable network too.
    from_checkpoint = run(style_model=str(checkpoint_path(tmp_path / "one.pt")))
    assert (from_checkpoint.array == plain.array).all() and "checkpoint at step 1" in from_checkpoint.display.note


def test_malformed_or_unknown_style_models_are_explained(bundled, cache, chelsea, chelsea_path, tmp_path):
    def stylise(spec):
        return drive(STYLISE.start(context(bundled, chelsea), {"style_model": spec, "size": 16}))

    with pytest.raises(MethodInputError, match="no style model 'stained-glass'.*library .* is empty"):
        stylise(None)
    with pytest.raises(MethodInputError, match="no style model 'starry'"):
        stylise("starry")
    with pytest.raises(MethodInputError, match="not a PyTorch file at all"):
        stylise(chelsea_path)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(MethodInputError, match="no 'format' entry"):
        stylise(str(tmp_path / "foreign.pt"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    with pytest.raises(MethodInputError, match="Python objects"):
        stylise(str(tmp_path / "pickled.pt"))
    from engine.style.style_library import style_payload

    payload = style_payload(random_net(styles=1), ["x"], {})
    del payload["state_dict"]["output.weight"]
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(MethodInputError, match="damaged style model"):
        stylise(str(tmp_path / "damaged.pt"))
    torch.save({**style_payload(random_net(styles=1), ["x"], {}), "version": 99}, tmp_path / "future.pt")
    with pytest.raises(MethodInputError, match="newer ConvScope"):
        stylise(str(tmp_path / "future.pt"))
    # Junk in the library folder is not offered as a style.
    library_dir().mkdir(parents=True)
    (library_dir() / "junk.pt").write_bytes(b"junk")
    assert list_styles() == []


def test_style_names_are_read_without_building_the_network(bundled, cache, content_folder, tmp_path):
    styles = [str(sample_path("brick")), str(sample_path("coffee"))]
    train(context(bundled), tmp_path / "pair.pt", steps=1, dataset=str(content_folder), style=styles)
    assert style_names_of(str(tmp_path / "pair.pt")) == ["brick", "coffee"]
    assert style_names_of(str(checkpoint_path(tmp_path / "pair.pt"))) == ["brick", "coffee"]
    with pytest.raises(MethodInputError, match="no style model 'starry'"):
        style_names_of("starry")
    torch.save({"format": "convscope-style-net", "version": 1}, tmp_path / "hollow.pt")
    with pytest.raises(MethodInputError, match="does not say how many styles"):
        style_names_of(str(tmp_path / "hollow.pt"))
