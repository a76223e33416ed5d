"""``fast-style-train``: train a feed-forward style network (Johnson et al. 2016).

The network (``engine.style.style_net``) is trained on a folder of content pictures to
minimise the perceptual loss of Gatys-style transfer (``engine.style.perceptual.PerceptualLoss``),
measured by the current model (the loss network, frozen):

    total = content_weight * L_content(out, content)     (features at the content layers)
          + style_weight   * L_style(out, style)         (Gram matrices at the style layers)
          + tv_weight      * L_tv(out)

with the ``style`` method's style layers and relative weighting. Two defaults differ, each
from side-by-side training runs on the bundled model (128 px, 250 steps): the content
layer is shallower, the second style layer, as Johnson et al. used relu2_2 (the deeper
Gatys layer lost the content's outlines), and features are not softmax-smoothed (with
smoothing the network learnt diagonal stripes; ``--feature-transform auto`` restores it).

Several ``--style`` images train one network with conditional instance norm (Dumoulin
et al. 2017): each step trains one style (in turn) through its own gamma and beta.

Training is long on a CPU, so it is resumable. ``<save>.ckpt`` holds the network, the
optimizer state, the step, the random generator's state, the position in the shuffled
content order and the style targets. It is written every ``--checkpoint-every`` steps,
when the job is cancelled, and at the end; a cancelled run given no ``--save`` (one that
would only have filled the library) removes it instead, leaving nothing behind. Rerunning with the same ``--save`` continues
from it (``--restart`` starts over), and a larger ``--steps`` trains a finished style
further. A resumed run uses the checkpoint's style targets, so it optimises exactly what
the first run did; on the CPU it ends bit for bit where an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from engine.view.animation import FrameRecorder
from engine.data.datasets import Dataset, iter_batches, open_dataset
from engine.core.errors import ConvScopeError, JobCancelled, MethodInputError
from engine.data.extraction import skipped_list, skipped_note
from engine.style.activation_transforms import DEFAULT_TEMPERATURE, TRANSFORMS
from engine.data.images import load_image
from engine.core.jobs import Progress, Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.loop import Step, optimisation_loop, require_finite
from engine.style.perceptual import (Features, PerceptualLayers, PerceptualLoss, choose_transform, gram_targets, layer_list,
                          perceptual_layers)
from engine.style.style_library import (CHECKPOINT_FORMAT, DEFAULT_STYLE, FORMAT_VERSION, checkpoint_path,
                                        prepare_save_place, read_convscope_file, save_path, save_style, style_payload,
                                        style_picture, write_failure, write_torch_file)
from engine.style.style_net import StyleNet, build_style_net, one_hot_mix
from engine.methods.params import SEED, TEMPERATURE_LIMIT, WEIGHT_LIMIT, MethodSpec, Param

PREVIEW_GAP = 4  # pixels between the styles of a multi-style preview


class ContentStream:
    """Batches of content pictures in a seeded shuffled order, epoch after epoch.

    Its whole state (the generator, this epoch's order, the position in it) goes into a
    checkpoint, so a resumed run reads the same pictures an uninterrupted one would.
    Unreadable files are skipped and remembered.
    """

    def __init__(self, data: Dataset, size: int, batch: int, generator: torch.Generator, cancel) -> None:
        self.data, self.size, self.batch = data, size, batch
        self.generator, self.cancel = generator, cancel
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0
        self.epoch = 0
        self.failures: dict[str, str] = {}
        self._batches = None
        self._unread = 0  # pictures in a row that could not be read

    def state(self) -> dict:
        return {"order": self.order.clone(), "position": self.position, "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        self.close()
        self.order = state["order"].to(torch.long)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        if len(self.order) != len(self.data):  # files came or went since: this epoch's order is void
            self.position = len(self.order)

    def next_batch(self) -> torch.Tensor:
        """The next N x 3 x size x size uint8 batch (the last of an epoch may be smaller)."""
        while True:
            if self._batches is None:
                if self.position >= len(self.order):
                    self._new_epoch()
                remaining = self.order[self.position:].tolist()
                self._batches = iter_batches(self.data, remaining, self.size, batch_size=self.batch, cancel=self.cancel)
            batch = next(self._batches, None)
            if batch is None:
                self.close()
                self.position = len(self.order)
                continue
            chunk = min(self.batch, len(self.order) - self.position)
            self.position += chunk
            self.failures.update(batch.failures)
            if len(batch.indices):
                self._unread = 0
                return batch.pixels
            self._unread += chunk
            if self._unread >= len(self.data):
                first = next(iter(self.failures.values()), "")
                raise MethodInputError(f"none of the {len(self.data)} images in {self.data.name} could be read ({first})")

    def _new_epoch(self) -> None:
        self.order = torch.randperm(len(self.data), generator=self.generator)
        self.position = 0
        self.epoch += 1

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


def johnson_content(known: PerceptualLayers) -> tuple[str, ...]:
    """The default content layer: the second style layer, as Johnson et al. took relu2_2.

    Shallower than Gatys's conv4_2 (``known.content``): a feed-forward network trained on
    small crops keeps the content's outlines only when the content loss sees fine detail.
    """
    return (known.style[1],) if len(known.style) > 1 else known.content


def _require_spatial(layers: list[str], shapes: dict[str, tuple], flag: str) -> None:
    """Grams and instance-normalised pictures need N x C x H x W features."""
    for path in layers:
        shape = shapes.get(path)
        if shape is None or len(shape) != 4:
            raise MethodInputError(f"{flag}: '{path}' has no N x C x H x W output "
                                   f"({'it does not run' if shape is None else f'its output is {tuple(shape)}'}); "
                                   "pick convolution-stage layers")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _preview_picture(ctx, data: Dataset, size: int) -> torch.Tensor:
    """The fixed picture the live preview stylises: the current image, else the first
    readable image of the dataset, with its shorter side at the training size."""
    image, reason = ctx.image, ""
    if image is None:
        for item in data:
            try:
                image = load_image(item.path)
                break
            except ConvScopeError as exc:  # an unreadable dataset file: try the next
                reason = reason or str(exc)
    if image is None:
        raise MethodInputError(f"none of the {len(data)} images in {data.name} could be read ({reason})")
    return ctx.model.preprocessing.to_unit_tensor(image.image, size).to(ctx.device)


@torch.no_grad()
def _stylise_preview(net: StyleNet, picture: torch.Tensor) -> torch.Tensor:
    """The picture in every style, side by side (1 x 3 x H x W*styles + gaps), in 0..1."""
    outputs = [net(picture, one_hot_mix(style, net.styles)) for style in range(net.styles)]
    if len(outputs) == 1:
        return outputs[0]
    gap = torch.ones(1, 3, picture.shape[-2], PREVIEW_GAP, device=picture.device)
    pieces = [outputs[0]]
    for output in outputs[1:]:
        pieces += [gap, output]
    return torch.cat(pieces, dim=-1)


class Training:
    """Everything a checkpoint saves: the network, the optimizer, the step, the random
    generator, the position in the content order and the style targets."""

    def __init__(self, net: StyleNet, lr: float, generator: torch.Generator, stream: ContentStream,
                 targets: list[dict[str, torch.Tensor]], identity: dict, info: dict, style_names: list[str],
                 checkpoint_file: Path) -> None:
        self.net, self.generator, self.stream, self.targets = net, generator, stream, targets
        self.identity, self.info, self.style_names, self.checkpoint_file = identity, info, style_names, checkpoint_file
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        self.step = 0
        self.saved_step = 0  # the step the checkpoint on disk holds
        self.updating = False  # True while optimizer.step() changes the weights
        self.loss_first: float | None = None
        self.last: dict = {}  # the newest step's metrics

    def resume(self, checkpoint: dict, lr: float) -> None:
        try:
            self.net.load_state_dict(checkpoint["model"]["state_dict"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.generator.set_state(checkpoint["rng"])
            self.stream.restore(checkpoint["data"])
            device = next(self.net.parameters()).device
            self.targets = [{layer: gram.to(device) for layer, gram in per_style.items()}
                            for per_style in checkpoint["style_targets"]]
            self.step = self.saved_step = int(checkpoint["step"])
            self.loss_first = checkpoint.get("loss_first")
            self.last = dict(checkpoint.get("last") or {})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise MethodInputError(f"{self.checkpoint_file.name} is damaged ({str(exc).splitlines()[0][:160]}); "
                                   "rerun with --restart to start over") from None
        for group in self.optimizer.param_groups:
            group["lr"] = lr  # the rerun's learning rate applies from here on

    def train_step(self, features: Features, content_features: Features, weights: dict[str, float]) -> Step:
        """One Adam step on the next content batch, for the next style in turn.

        ``features`` gives every loss layer of the output; ``content_features`` only the
        content layers, whose forward stops sooner, for the batch's own targets. A loss that
        is not finite stops the training before the step, so no checkpoint holds its weights.
        """
        device = next(self.net.parameters()).device
        content = self.stream.next_batch().to(device).float().div_(255.0)
        style_index = self.step % len(self.targets)
        loss = PerceptualLoss(features, content=content_features.targets(content), style=self.targets[style_index],
                              **weights)
        output = self.net(content, one_hot_mix(style_index, len(self.targets)))
        total, parts = loss(output)
        require_finite(float(total.detach()), self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.updating = True
        self.optimizer.step()
        self.step += 1
        self.updating = False
        terms = {f"{name}_loss": value for name, value in parts.items()}
        self.last = {"loss": float(total.detach()), **terms, "style": style_index}
        if self.loss_first is None:
            self.loss_first = self.last["loss"]
        return Step(loss=self.last["loss"], terms=terms, metrics={"style": style_index})

    def write_checkpoint(self) -> None:
        if self.updating or self.step == self.saved_step:
            return  # the weights are half-updated, or nothing is new since the last one
        try:
            self._write_checkpoint_file()
        except OSError as exc:  # a full disk, a folder gone read-only: the checkpoint on disk is still whole
            kept = (f"the checkpoint {self.checkpoint_file} from step {self.saved_step} is intact: run again "
                    "with the same --save to continue from it" if self.saved_step and self.checkpoint_file.is_file()
                    else "no checkpoint was written before it: run again to start over")
            raise ConvScopeError(f"could not write the checkpoint {self.checkpoint_file} at step {self.step} "
                                 f"({write_failure(exc)}), so training stopped; once that is fixed, {kept}") from None
        self.saved_step = self.step

    def _write_checkpoint_file(self) -> None:
        write_torch_file(self.checkpoint_file, {
            "format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION,
            "model": style_payload(self.net, self.style_names, {**self.info, "steps": self.step}),
            "identity": self.identity,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": self.generator.get_state(),
            "data": self.stream.state(),
            "style_targets": [{layer: gram.detach().cpu() for layer, gram in per_style.items()}
                              for per_style in self.targets],
            "loss_first": self.loss_first,
            "last": dict(self.last),
        })


def run(ctx, p):
    styles = [style_picture(path) for path in p.style]  # a shipped style's name: its picture
    steps, batch, size, lr, temperature, width, blocks = p.steps, p.batch, p.size, p.lr, p.temperature, p.width, p.blocks
    content_weight, style_weight, tv_weight, seed = p.content_weight, p.style_weight, p.tv_weight, p.seed
    style_size, save, checkpoint_every, preview_every = p.style_size, p.save, p.checkpoint_every, p.preview_every
    style_images = [load_image(path) for path in styles]
    data = open_dataset(p.dataset)
    shapes = ctx.output_shapes()
    known = perceptual_layers(ctx.model, shapes)
    content_paths = layer_list(p.content_layers, johnson_content(known), ctx.resolve_layer, "--content-layers")
    style_paths = layer_list(p.style_layers, known.style, ctx.resolve_layer, "--style-layers")
    _require_spatial(content_paths, shapes, "--content-layers")
    _require_spatial(style_paths, shapes, "--style-layers")
    transform_name, transform = choose_transform(p.feature_transform, known, temperature)
    features = Features(ctx.model, content_paths + style_paths, transform)
    content_features = Features(ctx.model, content_paths, transform)
    target = save_path(save, styles)
    if target.is_dir():
        raise MethodInputError(f"--save {save}: that is a folder; give a file name, such as {target / 'style.pt'}")
    prepare_save_place(target)  # a place that cannot be written fails now, not at the first checkpoint
    checkpoint_file = checkpoint_path(target)
    identity = {
        "loss_model": ctx.model.name,
        "loss_weights": str(ctx.model.weights),
        "content_layers": content_paths,
        "style_layers": style_paths,
        "feature_transform": [transform_name, float(temperature) if transform is not None else None],
        "styles": [_file_digest(path) for path in styles],
        "architecture": {"styles": len(styles), "width": int(width), "blocks": int(blocks)},
    }
    weights = {"content_weight": content_weight, "style_weight": style_weight, "tv_weight": tv_weight}
    info = {"loss_model": ctx.model.name, "content_layers": content_paths, "style_layers": style_paths,
            "feature_transform": transform_name, "temperature": temperature,
            "size": size, "style_size": style_size or size, "batch": batch, "lr": lr, "seed": seed,
            "content_weight": content_weight, "style_weight": style_weight, "tv_weight": tv_weight,
            "dataset": data.name, "style_files": styles}

    # ---- start fresh, or resume from the checkpoint
    if p.restart:
        checkpoint_file.unlink(missing_ok=True)
    checkpoint = _read_checkpoint(checkpoint_file, identity) if checkpoint_file.is_file() else None
    generator = ctx.generator(seed)
    net = build_style_net(identity["architecture"], ctx.device, generator=None if checkpoint else generator)
    stream = ContentStream(data, size, batch, generator, ctx.cancel)
    training = Training(net, lr, generator, stream, [], identity, info, [Path(p).stem for p in styles], checkpoint_file)
    if checkpoint is not None:
        training.resume(checkpoint, lr)
        yield Progress(min(1.0, training.step / steps), f"resuming from the checkpoint at step {training.step} "
                                                         f"({checkpoint_file}); --restart starts over")
    else:
        yield Progress(0.0, "measuring the style images")
        style_features = Features(ctx.model, style_paths, transform)
        for image in style_images:
            unit = ctx.model.preprocessing.to_unit_tensor(image.image, style_size or size).to(ctx.device)
            training.targets.append(gram_targets(style_features.targets(unit)))
    resumed_from = training.step

    # ---- train, keeping every finished step when stopped
    picture = _preview_picture(ctx, data, size)
    recorder = FrameRecorder()

    def show(_number, _step):
        return Picture(rgb=unit_tensor_to_rgb(_stylise_preview(net, picture)))

    def train(_number):
        step = training.train_step(features, content_features, weights)
        if checkpoint_every and training.step % checkpoint_every == 0:
            training.write_checkpoint()
        return step

    # A run given no save place trains into the library under the style's name; stopped,
    # it leaves nothing there (no half-trained checkpoint the user never asked to keep),
    # unless it continued a checkpoint that was there before.
    keep_when_stopped = save is not None or checkpoint is not None
    try:
        yield from optimisation_loop(train, steps, first=training.step + 1, show=show, every=preview_every,
                                     showing=show(training.step, None), cancel=ctx.cancel, recorder=recorder)
    except (JobCancelled, KeyboardInterrupt, GeneratorExit):
        if keep_when_stopped:
            training.write_checkpoint()
        else:
            checkpoint_file.unlink(missing_ok=True)  # the periodic ones this run wrote
        raise
    finally:
        stream.close()

    # ---- save and report
    training.write_checkpoint()
    try:
        save_style(target, net, training.style_names, {**info, "steps": training.step})
    except OSError as exc:
        raise ConvScopeError(f"could not save the trained network to {target} ({write_failure(exc)}); the checkpoint "
                             f"{checkpoint_file} holds all {training.step} steps: once that is fixed, run again "
                             "with the same --save to save it") from None
    final = _stylise_preview(net, picture)
    rgb = unit_tensor_to_rgb(final)
    failures = sorted(stream.failures.items())
    last = training.last
    metrics = {
        "loss_first": training.loss_first, "loss_last": last.get("loss", training.loss_first),
        "content_loss_last": last.get("content_loss"), "style_loss_last": last.get("style_loss"),
        "tv_loss_last": last.get("tv_loss"),
        "steps": training.step, "trained_steps": training.step - resumed_from, "resumed_from": resumed_from,
        "saved": str(target), "checkpoint": str(checkpoint_file), "styles": training.style_names,
        "content_layers": content_paths, "style_layers": style_paths, "feature_transform": transform_name,
        "dataset": data.name, "images": len(data), "epochs": stream.epoch, "skipped": skipped_list(failures),
    }
    resumed = f", resumed from step {resumed_from}" if resumed_from else ""
    note = (f"{' | '.join(training.style_names)} after {training.step} steps{resumed}; saved as {target.name}"
            f"{skipped_note(failures)}")
    p.record(dataset=data.name, content_layers=content_paths, style_layers=style_paths, feature_transform=transform_name,
             style_size=style_size or size, save=str(target))
    return Result(display=Picture(rgb=rgb, note=note), array=final[0].permute(1, 2, 0).cpu().numpy(),
                  metrics=metrics, frames=recorder.finish(rgb))


def _read_checkpoint(path: Path, identity: dict) -> dict:
    """The checkpoint at ``path``, if it belongs to this training; else a clear error."""
    checkpoint = read_convscope_file(path, "training checkpoint")
    if checkpoint.get("format") != CHECKPOINT_FORMAT or not isinstance(checkpoint.get("identity"), dict):
        raise MethodInputError(f"{path} is not a fast-style-train checkpoint; move it away or rerun with --restart")
    if checkpoint.get("version", 0) > FORMAT_VERSION:
        raise MethodInputError(f"{path.name} was written by a newer ConvScope; rerun with --restart to start over")
    labels = {"loss_model": "loss model", "loss_weights": "loss model's weights", "content_layers": "content layers",
              "style_layers": "style layers", "feature_transform": "feature transform", "styles": "style images",
              "architecture": "network size or style count"}
    differ = [labels.get(key, key) for key, value in identity.items() if checkpoint["identity"].get(key) != value]
    if differ:
        raise MethodInputError(f"{path} is from a training with other {', '.join(differ)}; rerun with --restart to "
                               "start over, or --save another file")
    return checkpoint


# What the shipped network was trained with, and so the defaults.
DEFAULT_RECIPE = {"steps": 100, "batch": 2, "size": 128, "style_size": 192, "lr": 5e-3, "style_weight": 0.5,
                  "width": 16, "blocks": 3}

SPEC = MethodSpec(
    id="fast-style-train",
    title="Fast style: train",
    summary="Train a feed-forward network to stylise any picture in one pass (Johnson et al. 2016); "
            "several styles share one network through conditional instance norm.",
    params=(
        Param("dataset", "dataset", "samples", "content pictures: a folder of images, or 'samples' / 'digits'"),
        Param("style", "images", DEFAULT_STYLE, "style picture(s); several train one network with one gamma/beta per "
              f"style ({DEFAULT_STYLE}: the stained-glass picture ConvScope ships)"),
        # The defaults are the shipped stained-glass network's recipe (make style-network):
        # minutes on two CPU cores, where Johnson et al.'s (40,000 steps of batch 4 at 256
        # px, width 32, 5 blocks; 1.4 s a step here) take most of a day; raise them on a GPU.
        Param("steps", "int", DEFAULT_RECIPE["steps"], "total training steps (a resumed run counts the checkpoint's steps)",
              minimum=1, maximum=1_000_000),
        Param("batch", "int", DEFAULT_RECIPE["batch"], "content pictures per step (Johnson: 4)", minimum=1, maximum=64),
        Param("size", "int", DEFAULT_RECIPE["size"], "side of the square content crops, in pixels (Johnson: 256)",
              minimum=16, maximum=1024),
        Param("style_size", "int", DEFAULT_RECIPE["style_size"], "shorter side of the style pictures when measuring "
              "their Grams (0: --size)", minimum=0, maximum=2048, special="--size"),
        Param("lr", "float", DEFAULT_RECIPE["lr"], "Adam learning rate (Johnson: 0.001, over far more steps)",
              minimum=0.0, maximum=1.0),
        Param("content_weight", "float", 1.0, "weight of the content loss", minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("style_weight", "float", DEFAULT_RECIPE["style_weight"], "weight of the style (Gram) loss, relative to its targets' size", minimum=0.0,
              maximum=WEIGHT_LIMIT),
        Param("tv_weight", "float", 1.0, "weight of the total-variation smoothness loss", minimum=0.0,
              maximum=WEIGHT_LIMIT),
        Param("content_layers", "layers", None, "comma-separated layers for the content loss (default: chosen per model)"),
        Param("style_layers", "layers", None, "comma-separated layers for the style loss (default: chosen per model)"),
        Param("feature_transform", "choice", "none", "applied to the loss network's features before both losses "
              "(auto: softmax on non-VGG models, as the style method does; none suits a trained network better)",
              choices=("auto", *TRANSFORMS)),
        Param("temperature", "float", DEFAULT_TEMPERATURE, "softmax temperature", minimum=1e-3,
              maximum=TEMPERATURE_LIMIT),
        Param("width", "int", DEFAULT_RECIPE["width"], "channels of the network's first layer (Johnson: 32; smaller is faster)",
              minimum=4, maximum=128),
        Param("blocks", "int", DEFAULT_RECIPE["blocks"], "residual blocks (Johnson: 5)", minimum=0, maximum=16),
        Param("save", "save_file", None, "where to save the network: a file, or a name in the style library "
              "(default: named after the style pictures); its .ckpt checkpoint sits beside it"),
        Param("checkpoint_every", "int", 100, "write a resumable checkpoint every N steps (0: only at cancel and end)",
              minimum=0, maximum=1_000_000),
        Param("preview_every", "int", 10, "restyle the preview picture every N steps", minimum=1, maximum=1_000_000),
        Param("restart", "bool", False, "ignore an existing checkpoint and train from scratch"),
        SEED,
    ),
    run=run,
    needs_image=False,
    streams_frames=True,
)
