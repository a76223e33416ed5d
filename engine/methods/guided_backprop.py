"""``guided-backprop``: the gradient with every ReLU passing back only positive signal (Springenberg et al. 2015).

The gradient of a class score, or of one intermediate neuron, with respect to the
pixels, where every ReLU-like unit (ReLU, ReLU6, LeakyReLU) passes back only positive
gradient and only where its input was positive (``engine/guided.py``). The lecture uses
it to see "the part of an image a neuron responds to": pick a layer, a channel and a
position in that layer's map, and the map lights up the pixels that drive that unit,
all inside the unit's receptive field (drawn as a box).

- class score (``--layer`` empty): d score_c / d pixels, score_c the class's logit;
- one neuron: ``--layer L --channel K [--at Y,X]``, the unit at row Y, column X of
  channel K of L's output (L's own grid coordinates: a tile pixel of the activation
  grid). Without ``--at``: where channel K is largest for this image; without
  ``--channel``: the channel with the largest value. A vector layer (fully connected)
  takes ``--channel`` alone.

``--rule deconvnet`` passes back the positive gradient wherever it arrives, whatever the
unit's input was: Zeiler & Fergus's DeconvNet, which guided backprop refines. Without the
forward mask, little of the image survives many layers: on the bundled model the map is
almost the same pattern for any picture (Nie et al. 2018 explain why).

``--show map`` (default) draws max over colour channels of |gradient|, as ``saliency``
does; ``--show rgb`` shows the gradient itself as a picture, as the paper does. The
saved array is the map either way. In models that apply ReLU as a function (GoogLeNet,
Inception, DenseNet) those ReLUs are made modules first, so they are guided too; models
whose code torch.fx cannot trace there, and models with no ReLU-like activation, are
refused with a message saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.attribution.maps import gradient_picture, magnitude_map, map_display, map_metrics, picture_display, refuse_blank
from engine.core.errors import MethodInputError
from engine.attribution.gradients import class_score, score_gradient, unit_score
from engine.attribution.guided import RULES, guided_network, guided_relus
from engine.core.jobs import Progress, Result
from engine.methods.params import OVERLAY, SHOW, TARGET, MethodSpec, Param, require_channel, require_position


@dataclass(frozen=True)
class Unit:
    """One neuron: ``channel`` at ``position`` (y, x) of layer ``path``'s map, or of its vector."""

    path: str
    channel: int
    position: tuple[int, int] | None
    value: float

    @property
    def name(self) -> str:
        where = f" at ({self.position[0]}, {self.position[1]})" if self.position is not None else ""
        return f"{self.path} channel {self.channel}{where}"


def pick_unit(ctx, layer: str | None, channel: int | None, at: tuple[int, int] | None) -> Unit | None:
    """The neuron the user asked for, with the defaults filled in; None for the class score."""
    if layer is None:
        if channel is not None or at is not None:
            raise MethodInputError("--channel and --at pick a unit of a layer: give --layer too "
                                   "(or leave all three empty for the class score)")
        return None
    if at is not None and channel is None:
        raise MethodInputError("--at picks a position in one channel's map: give --channel too")
    path = ctx.resolve_layer(layer)
    features = ctx.image_features()
    if path not in features.activations:
        raise MethodInputError(f"layer '{path}' did not run in the forward pass, so it has no units to explain")
    output = features.layer_output(path)[0]
    if output.dim() not in (1, 3):
        raise MethodInputError(f"layer '{path}' outputs a {output.dim()}-D tensor; guided backprop explains a unit of "
                               f"a C x H x W map or of a vector")
    channels = output.shape[0]
    if channel is None:  # the channel with the strongest response anywhere
        channel = int(output.reshape(channels, -1).amax(dim=1).argmax())
    require_channel("channel", channel, channels, path)
    if output.dim() == 1:
        if at is not None:
            raise MethodInputError(f"layer '{path}' is a vector of {channels} units with no map: leave --at empty")
        return Unit(path, channel, None, float(output[channel]))
    height, width = output.shape[1:]
    if at is None:
        y, x = divmod(int(output[channel].argmax()), width)
    else:
        y, x = require_position("at", at, (height, width), path)
    return Unit(path, channel, (y, x), float(output[channel, y, x]))


def receptive_box(ctx, unit: Unit, input_hw: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """(top, left, bottom, right) in model-input pixels of the part of the image the unit sees."""
    node = ctx.model.state.layer_tree(input_hw).find(unit.path)
    field = node.receptive_field if node is not None else None
    return field.box(*unit.position) if field is not None and unit.position is not None else None


def run(ctx, p):
    image = ctx.require_image()
    rule, show = p.rule, p.show
    unit = pick_unit(ctx, p.layer, p.channel, p.at)
    pixels = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    if unit is None:
        resolved = ctx.resolve_target(p.target)
        score, what = class_score(resolved["index"]), f"'{resolved['label']}'"
        p.record(target=resolved["index"])
    else:
        resolved = None
        score, what = unit_score(unit.path, unit.channel, unit.position, ctx.model), unit.name
        p.record(target=None, layer=unit.path, channel=unit.channel, at=unit.position)
    kind = "guided backprop" if rule == "guided" else "DeconvNet backprop"
    yield Progress(0.1, f"{kind} of {what}")
    network, functional = guided_network(ctx.model, pixels, layer=None if unit is None else unit.path)
    with guided_relus(network, rule, functional) as guide:
        gradient, scores = score_gradient(ctx.model, pixels, score, network)
    ctx.cancel.check()
    values = magnitude_map(gradient)
    if unit is None:
        refuse_blank(values, f"the {kind} gradient of {what} is zero everywhere: no path of active ReLUs raises it")
    else:
        refuse_blank(values, f"{what} passes no gradient back (its value is {unit.value:.3g}): the unit is not active "
                             f"for this image, so nothing in the image drives it. Pick a position where the channel is "
                             f"active (leave --at empty for the channel's maximum)")

    metrics = {**map_metrics(values), "score": float(scores[0]), "guided_units": guide.units}
    boxes = []
    if unit is not None:
        metrics["unit"] = {"layer": unit.path, "channel": unit.channel, "value": unit.value,
                           "at": list(unit.position) if unit.position is not None else None}
        box = receptive_box(ctx, unit, tuple(pixels.shape[-2:]))
        if box is not None:
            metrics["receptive_field"] = [round(v, 2) for v in box]  # top, left, bottom, right in model-input pixels
            boxes.append(box)
    note = f"{kind} of {what}; {guide.note}"
    adjective = "guided" if rule == "guided" else "DeconvNet"
    if show == "rgb":
        display = picture_display(gradient_picture(gradient), note=note, boxes=boxes)
    else:
        display = map_display(image, values, signed=False, overlay=p.overlay, legend=f"|{adjective} d {what} / d pixel|",
                              note=note, boxes=boxes)
    yield Progress(1.0, "done")
    return Result(display=display, array=values, target=resolved, layer=unit.path if unit else None,
                  metrics=metrics)


SPEC = MethodSpec(
    id="guided-backprop",
    title="Guided backprop",
    summary="The gradient of a class score or of one neuron, with every ReLU passing back only positive signal: "
            "the image parts that drive it (Springenberg et al. 2015).",
    params=(
        TARGET,
        Param("layer", "layer", None, "a layer, to explain one of its neurons (empty: the class score)",
              blank="class score (no layer)"),
        Param("channel", "channel", None, "the neuron's channel in --layer (empty: the strongest)",
              special="strongest"),
        Param("at", "position", None, "the neuron's position Y,X in --layer's map (empty: where the channel is largest)"),
        Param("rule", "choice", "guided", "guided: positive gradient where the input was positive (Springenberg et al.); "
              "deconvnet: positive gradient everywhere (Zeiler & Fergus)", choices=RULES),
        SHOW,
        OVERLAY,
    ),
    run=run,
)
