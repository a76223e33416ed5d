"""The working session the window and the command line share.

A ``Session`` holds the loaded model, the open image with its cached activations, and
what is shown: a method's result (or the photo itself) with its provenance, which
method, with which resolved parameters, on which model, weights, layer and target. From
that one place come the summary a panel prints, the picture an export writes (the picture
the canvas draws, by the one renderer of its kind), the JSON sidecar beside it, the raw array, the animation
and the file name an export dialog suggests. Like napari's ViewerModel it knows nothing
of Qt, so everything here is tested headless.

Threads: in the window, one engine thread calls what touches the model (``load_model``,
``open_image``, ``start`` and the job it returns); the UI thread calls ``show`` with the
finished ``Shown`` and everything that reads it (``picture``, ``export``...). A ``Shown``
carries its own provenance, captured on the engine thread when the run ended, so the
UI thread never reads the model while a job uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from engine.anatomy.activations import FeatureCache
from engine.anatomy.layer_choice import LayerGuide
from engine.anatomy.layer_tree import LayerNode
from engine.core.device import available_devices, resolve_device
from engine.core.errors import (ConvScopeError, MethodInputError, NothingToExportError, OutputExistsError,
                                OutputWriteError)
from engine.core.jobs import CancelToken, Job, Result, Stopwatch
from engine.data.images import LoadedImage, check_targets, image_from_array, load_image, write_png, write_together
from engine.methods import METHODS, MethodContext, MethodSpec, family_of
from engine.methods.cost import Machine, predicted_seconds
from engine.methods.registry import model_notes
from engine.models.registry import BUNDLED_MODEL, LoadedModel, available_models, load_model
from engine.view.colorbar import display_colour_bar
from engine.view.display import Display, MapOverPhoto, Picture, Scatter, TileGrid
from engine.view.export import build_sidecar, describe_write_failure, sidecar_path_for
from engine.view.hit_test import map_cell_at, tile_at
from engine.view.render import colour_scale, render
from engine.view.view_settings import ViewSettings

PHOTO = "image"  # the method name recorded when the photo itself is shown


@dataclass
class ModelInfo:
    name: str
    weights: str
    device: str
    labels: list[str]
    presets: dict[str, str]
    preprocessing: dict
    tree: LayerNode | None = None
    notes: list[str] = field(default_factory=list)  # how the model was opened, what does not work on it


@dataclass
class ImageInfo:
    path: str
    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    top5: list[tuple[int, str, float]] = field(default_factory=list)
    tree: LayerNode | None = None  # the layer tree at this image's input size


@dataclass(frozen=True)
class Provenance:
    """How a shown picture was made: what the sidecar records."""

    method: str  # a method id, or PHOTO
    params: dict
    model: Optional[str]
    weights: Optional[str]
    layer: Optional[str]
    target: Optional[dict]
    image_path: Optional[str]
    preprocessing: dict
    device: str
    metrics: dict


@dataclass(frozen=True)
class Shown:
    """What the canvas shows when no job is streaming frames, and how it was made."""

    display: Display
    provenance: Provenance
    result: Optional[Result] = None  # None when the photo itself is shown

    @property
    def method(self) -> str:
        return self.provenance.method

    @property
    def summary(self) -> str:
        return summarise(self.result) if self.result is not None else ""


@dataclass(frozen=True)
class ShowChannel:
    """A click on an activation tile: show that channel over the photo.

    A click's action names the ``method`` to run, the form ``values()`` it sets, and
    whether that method's panel comes to the front."""

    channel: int

    method = "activations"
    opens_panel = False  # the grid's own panel runs again

    def values(self) -> dict:
        return {"channel": self.channel}


@dataclass(frozen=True)
class ExplainNeuron:
    """A click that asks what one unit responds to: guided backprop of the neuron at
    (y, x) of ``channel`` in ``layer``, for the image's top-1 class."""

    layer: str
    channel: int
    y: int
    x: int

    method = "guided-backprop"
    opens_panel = True  # the user sees the guided-backprop form that ran, and can change it

    def values(self) -> dict:
        return {"layer": self.layer, "channel": self.channel, "at": f"{self.y},{self.x}"}


CanvasAction = Union[ShowChannel, ExplainNeuron]


class Session:
    def __init__(self, device: str = "cpu") -> None:
        self.model: LoadedModel | None = None
        self.image: LoadedImage | None = None
        self.features = FeatureCache()
        self.device = resolve_device(device)
        self.shown: Shown | None = None
        self.comparison = None  # the ImageReport of the last comparison on this model and image
        # Boxes around the object in the open photo, (x0, y0, x1, y1) in its pixels, for the
        # pointing game; they belong to the photo. Replaced, never changed in place, as ``machine``.
        self.boxes: tuple[tuple[float, float, float, float], ...] = ()
        # This machine's pace with the model at the image's size (``calibrate``); replaced,
        # never changed in place, so the window's thread may read it while a job runs.
        self.machine: Machine | None = None

    # -- what there is to choose from ----------------------------------------------
    @staticmethod
    def methods() -> dict[str, MethodSpec]:
        return dict(METHODS)

    @staticmethod
    def method_families() -> dict[str, str]:
        """Each method's family, for grouping them in menus."""
        return {method_id: family_of(method_id) for method_id in METHODS}

    @staticmethod
    def model_names() -> list[tuple[str, str]]:
        return [(spec.name, spec.description) for spec in available_models()]

    @staticmethod
    def devices() -> list[str]:
        return available_devices()

    @staticmethod
    def describe_dataset(spec: str) -> str:
        """One line on what a dataset holds (the listing only: nothing is decoded). Listed
        afresh: what the user opens is the folder as it is now, for every method after."""
        from engine.data.datasets import open_dataset

        dataset = open_dataset(spec, fresh=True)
        classes = dataset.classes
        labelled = f" in {len(classes)} labels" if classes else " (no subfolders, so no labels)"
        skipped = f"; {len(dataset.failures)} could not be listed" if dataset.failures else ""
        return f"{dataset.name}: {len(dataset):,} images{labelled}{skipped}"

    # -- the model and the image (the engine thread) ------------------------------------
    def load_model(self, name: str = BUNDLED_MODEL, weights_path: str | None = None, trust: bool = False,
                   progress=None, cancel: CancelToken | None = None) -> ModelInfo:
        model = load_model(name, weights_path=weights_path, device=self.device, trust=trust, progress=progress, cancel=cancel)
        self.model = model
        self.machine = None
        self.comparison = None
        self.features.clear()
        return self.model_info()

    def model_info(self) -> ModelInfo:
        model = self._require_model()
        return ModelInfo(name=model.name, weights=model.weights, device=str(model.device), labels=model.labels,
                         presets=model.layer_presets, preprocessing=model.preprocessing.as_dict(), tree=self.layer_tree(),
                         notes=model_notes(model))

    def set_device(self, name: str) -> str:
        self.device = resolve_device(name)
        if self.model is not None:
            self.model.to(self.device)
            self.features.clear()
        self.machine = None
        return str(self.device)

    def open_image(self, path: str) -> ImageInfo:
        self.use_image(load_image(path))
        return self.image_info()

    def use_image(self, image: LoadedImage) -> None:
        """Make ``image`` (loaded already) the open photo, computing nothing about it: a folder
        run, which shows no predictions or layer tree, has its photos' predictions made in
        groups (``engine.anatomy.activations.predict``)."""
        self.image = image
        self.comparison = None
        self.boxes = ()
        if self.machine is not None and self.machine.input_size != self._input_size():
            self.machine = None

    def image_info(self) -> ImageInfo:
        image = self._require_image()
        return ImageInfo(path=image.path, rgb=image.to_array(), notes=list(image.notes), top5=self.top5(),
                         tree=self.layer_tree() if self.model else None)

    def top5(self) -> list[tuple[int, str, float]]:
        """The model's five likeliest classes for the image: (index, label, probability)."""
        if self.model is None or self.image is None:
            return []
        return self.features.get(self.model, self.image).top_k(self.model.labels)

    def layer_tree(self) -> LayerNode:
        return self._require_model().state.layer_tree(self._input_size())

    def layer_guide(self, cancel: CancelToken | None = None) -> LayerGuide:
        """What each layer is good for, for the tree's marks (``LoadedModel.layer_guide``):
        a forward and backward pass the first time, so a job of its own, after the tree."""
        return self._require_model().layer_guide(cancel.check if cancel else None)

    def _input_size(self) -> tuple[int, int]:
        """(height, width) of the model input the open image makes (the model's own without one)."""
        model = self._require_model()
        if self.image is not None:
            width, height = model.preprocessing.input_size(*self.image.size)
        else:
            height = width = model.preprocessing.size
        return (height, width)

    # -- how long a run takes (the engine thread) ------------------------------------------
    def calibrate(self, fresh: bool = False, cancel: CancelToken | None = None) -> Machine:
        """This machine's pace with the model at the image's input size (timed once per
        model, size and device, in the model's state; ``fresh``: timed again), with what an
        estimate reads about the model; kept as ``machine`` for the estimates a form shows
        before a run. ``cancel`` stops the timing between its passes."""
        from engine.attribution.randomise import parameter_blocks

        model = self._require_model()
        size = self._input_size()
        speed = model.state.speed(size, fresh=fresh, check=cancel.check if cancel else None)
        shapes = model.state.output_shapes(size)
        self.machine = Machine(input_size=size, model_size=model.preprocessing.size, forward_s=speed.forward_s,
                               backward_s=speed.backward_s, shapes=dict(shapes), presets=dict(model.layer_presets),
                               blocks=len(parameter_blocks(model.module, list(shapes))),
                               ratios=model.state.run_ratios())
        return self.machine

    # -- running a method (the engine thread) ---------------------------------------------
    def start(self, method_id: str, values: dict, cancel: CancelToken) -> Job:
        """The job that runs ``method_id`` with the ``values`` a form or the flags gave
        (None: the method's default). It yields the method's progress and frames and
        returns a ``Shown`` with its provenance. Bad values fail here, before any work."""
        spec = _method(method_id)
        bound = spec.bind({name: value for name, value in values.items() if value is not None})
        context = MethodContext(model=self._require_model(), image=self.image, cancel=cancel, features=self.features)
        if spec.needs_image:
            context.require_image()
        machine = self.machine
        predicted = predicted_seconds(spec, values, machine) if machine is not None else None
        return self._shown_when_done(spec.id, spec.start(context, bound), bound, predicted)

    def _shown_when_done(self, method_id: str, job: Job, bound: dict, predicted: float | None = None) -> Job:
        watch = Stopwatch()
        result = yield from job
        if predicted is not None and self.machine is not None:
            # A finished run teaches the estimate: later ones are scaled by how far off this was.
            self.model.state.note_run(method_id, predicted, watch.seconds)
            self.machine = self.machine.with_ratios(self.model.state.run_ratios())
        return self.result_shown(method_id, result, bound)

    def start_many(self, method_id: str, values: dict, images: list[LoadedImage], cancel: CancelToken) -> Job:
        """The job that runs ``method_id`` on several photos of one input size together
        (``MethodSpec.start_many``: a folder run's group). It returns, per photo, a
        ``Shown`` with that photo's provenance, or the ConvScopeError that refused it."""
        spec = _method(method_id)
        model = self._require_model()
        contexts = [MethodContext(model=model, image=image, cancel=cancel, features=self.features) for image in images]
        job = spec.start_many(contexts, {name: value for name, value in values.items() if value is not None})
        return self._each_shown(spec.id, images, job)

    def _each_shown(self, method_id: str, images: list[LoadedImage], job: Job) -> Job:
        outcomes = yield from job
        return [outcome if isinstance(outcome, Exception) else self.result_shown(method_id, outcome, image=image)
                for image, outcome in zip(images, outcomes)]

    def result_shown(self, method_id: str, result: Result, bound: dict | None = None,
                     image: LoadedImage | None = None) -> Shown:
        """``result`` with its provenance: the current model, weights and device, and
        ``image`` (default: the open one)."""
        return Shown(display=result.display, result=result,
                     provenance=self._provenance(method_id, params=result.params or bound or {}, layer=result.layer,
                                                 target=result.target, metrics=result.metrics, image=image))

    def _provenance(self, method: str, params: dict, layer=None, target=None, metrics=None,
                    image: LoadedImage | None = None) -> Provenance:
        model, image = self.model, image or self.image
        return Provenance(method=method, params=dict(params), layer=layer, target=target, metrics=dict(metrics or {}),
                          model=model.name if model else None, weights=model.weights if model else None,
                          image_path=image.path if image else None,
                          preprocessing=model.preprocessing.as_dict() if model else {},
                          device=str(model.device) if model else str(self.device))

    def sibling(self) -> "Session":
        """A session sharing this one's model and device, with no photo open: for work that
        opens photos of its own (a folder run) while this one's photo and result stay."""
        other = Session(device=str(self.device))
        other.model = self._require_model()
        return other

    # -- comparing methods on the open image --------------------------------------------------
    def set_boxes(self, boxes) -> tuple:
        """Make ``boxes`` (x0, y0, x1, y1 in the open photo's pixels) its boxes around the object."""
        from engine.evaluation.folder import parse_box

        self._require_image()
        self.boxes = tuple(parse_box(box, f"box {number}") for number, box in enumerate(boxes, start=1))
        return self.boxes

    def load_boxes(self, path) -> tuple:
        """The open photo's boxes from a boxes file, as ``evaluate --boxes`` reads it
        (``engine.evaluation.folder``): the rows under the photo's file name."""
        from engine.evaluation.folder import photo_boxes, read_boxes

        image = self._require_image()
        found = read_boxes(path)
        own = photo_boxes(found, image.path)
        if own is None:
            names = ", ".join(list(found)[:5]) + (", …" if len(found) > 5 else "")
            raise MethodInputError(f"{Path(path).name} has no boxes for {Path(image.path).name}"
                                   + (f": it has boxes for {names}" if found else ": it holds no boxes"))
        return self.set_boxes(own)

    def compare(self, methods, metrics, cancel: CancelToken, baseline: str = "blur", steps: int = 50) -> Job:
        """The job that scores ``methods`` beside the reference maps on the open image
        (``engine.evaluation.report.score_image``) for its top-1 class, against the photo's
        ``boxes``; it yields a frame per map scored and returns the ``ImageReport``, which
        stays as ``comparison``."""
        from engine.evaluation.report import score_image

        context = MethodContext(model=self._require_model(), image=self._require_image(), cancel=cancel,
                                features=self.features)
        if "pointing" in metrics and not self.boxes:
            raise MethodInputError("the pointing game needs a box around the object: draw one on the photo, or load "
                                   "a boxes file")
        return self._kept_comparison(score_image(context, tuple(methods), tuple(metrics), boxes=list(self.boxes),
                                                 baseline=baseline, steps=steps))

    def _kept_comparison(self, job: Job) -> Job:
        self.comparison = yield from job
        return self.comparison

    def open_compared(self, name: str) -> Shown:
        """Show one map of the comparison whole, as its method shows it (exportable as any result)."""
        report = self.comparison
        scores = next((m for m in report.maps if m.name == name), None) if report else None
        if scores is None or scores.result is None:
            raise MethodInputError(f"the comparison has no map '{name}'")
        from engine.evaluation.figure import boxed_display

        result = scores.result
        if report.boxes:  # drawn on it as in the comparison, so an export of it shows them too
            result = dataclasses.replace(result, display=boxed_display(result.display, report.boxes,
                                                                       self._require_image().size))
        return self.show(self.result_shown(name, result, {}))

    def export_comparison(self, picture=None, table=None, overwrite: bool = False) -> list[Path]:
        """Write the comparison's figure (PNG) and its table (CSV), together; beside the table,
        the boxes it was scored against as a boxes file (``boxes_path_for``) that the Compare
        view and ``evaluate --boxes`` read back."""
        from engine.evaluation.figure import comparison_csv, comparison_figure
        from engine.evaluation.folder import boxes_csv

        if self.comparison is None:
            raise NothingToExportError("compare the methods first: nothing has been compared yet")
        files = []
        if picture:
            figure = image_from_array(comparison_figure(self.comparison, self._require_image().to_array()))
            files.append((Path(picture), lambda handle: write_png(handle, figure)))
        if table:
            text = comparison_csv(self.comparison)
            files.append((Path(table), lambda handle: handle.write(text.encode())))
            if self.comparison.boxes:
                boxes = boxes_csv({Path(self.comparison.image).name: self.comparison.boxes})
                files.append((boxes_path_for(table), lambda handle: handle.write(boxes.encode())))
        try:
            return write_together(files, overwrite=overwrite)
        except OSError as error:
            raise _output_error(error) from None

    # -- what is shown (the UI thread, or the command line) -----------------------------------
    def show(self, shown: Shown) -> Shown:
        self.shown = shown
        return shown

    def show_photo(self, box: tuple | None = None) -> Shown:
        """Show the open photo itself; ``box`` (top, left, bottom, right) is drawn on it."""
        image = self._require_image()
        rgb = image.to_array()
        height, width = rgb.shape[:2]
        notes = "; ".join(image.notes)
        note = f"{Path(image.path).name}: {width}x{height}" + (f" ({notes})" if notes else "")
        display = Picture(rgb=rgb, boxes=[box] if box else [], note=note)
        return self.show(Shown(display=display, provenance=self._provenance(PHOTO, params={})))

    def summary(self) -> str:
        """The shown result's numbers, as its panel prints them."""
        return self.shown.summary if self.shown is not None else ""

    def picture(self, view: ViewSettings | None = None) -> np.ndarray:
        """The RGB picture of what is shown, drawn by the one renderer of its kind with ``view``:
        what the canvas shows (bars and scatters as the engine draws them), so the window
        and the command line export the same pixels."""
        return render(self._require_shown().display, view)

    def caption(self) -> list[str]:
        """The caption strip of an exported result: the method, its target and its layer
        ([] for the photo itself, which is exported as it is)."""
        shown = self._require_shown()
        origin = shown.provenance
        if shown.result is None:
            return []
        spec = METHODS.get(origin.method)
        parts = [spec.title if spec else origin.method]
        target = origin.target
        if target:
            label, index = target.get("label"), target.get("index")
            parts.append(f"target {label} ({index})" if label is not None and index is not None
                         else f"target {label if label is not None else index}")
        if origin.layer:
            parts.append(f"layer {origin.layer}")
        if origin.model:
            parts.append(origin.model)
        return [" · ".join(parts)]

    def figure(self, view: ViewSettings | None = None, annotated: bool = True) -> np.ndarray:
        """The exported picture: ``picture(view)`` at the top left, with (``annotated``) the
        colour bar the canvas shows beside it and the caption strip under it."""
        picture = self.picture(view)
        if not annotated:
            return picture
        from engine.view.figure import compose

        return compose(picture, display_colour_bar(self._require_shown().display, view), self.caption())

    def sidecar(self, view: ViewSettings | None = None, annotated: bool = True) -> dict:
        """The JSON sidecar of what is shown: its provenance, the software's versions, and
        the view settings the picture was drawn with."""
        shown = self._require_shown()
        origin = shown.provenance
        view = view or ViewSettings()
        sidecar = build_sidecar(model=origin.model, weights=origin.weights, layer=origin.layer, method=origin.method,
                                params=origin.params, image_path=origin.image_path, preprocessing=origin.preprocessing,
                                device=origin.device, metrics=origin.metrics, target=origin.target)
        scale = colour_scale(shown.display, view)  # None: a picture in its own colours
        sidecar["view"] = {"colormap": scale.colormap if scale else None, "overlay_opacity": view.overlay_opacity,
                           "annotated": annotated}
        bar = display_colour_bar(shown.display, view)
        sidecar["caption"] = self.caption() + ([bar.caption] if bar is not None and bar.caption else [])
        if bar is not None:
            sidecar["colour_bar"] = {"levels": list(bar.levels), "ticks": [label for _value, label in bar.ticks],
                                     "clipped_low": bar.clipped_low, "clipped_high": bar.clipped_high,
                                     "value_range": list(bar.value_range)}
        return sidecar

    def suggested_export_name(self, suffix: str = ".png") -> str:
        """photo_method_layer.png beside the photo (or in the home folder without one)."""
        image = self.image
        folder = Path(image.path).parent if image else Path.home()
        stem = Path(image.path).stem if image else "convscope"
        origin = self.shown.provenance if self.shown else None
        method = origin.method if origin else PHOTO
        layer = (origin.layer or "") if origin else ""
        name = "_".join(part for part in (stem, method, layer.replace(".", "-")) if part)
        return str(folder / f"{name}{suffix}")

    def canvas_click(self, x: float, y: float, shift: bool = False) -> CanvasAction | None:
        """What a click at (x, y) of the shown picture asks for, if anything.

        On an activation grid a click shows that tile's channel over the photo, and
        Shift+click explains the neuron under the pointer; on one channel over the photo a
        click explains that channel's neuron at the place clicked.
        """
        shown = self.shown
        if shown is None or shown.method != "activations" or shown.result is None:
            return None
        result, display = shown.result, shown.display
        if isinstance(display, TileGrid):
            hit = tile_at(display, x, y)
            order = result.metrics.get("channel_order", [])
            if hit is None or hit.index >= len(order):
                return None
            if not shift:
                return ShowChannel(int(order[hit.index]))
            if hit.y is None:  # on the gap between tiles
                return None
            return ExplainNeuron(result.layer, int(order[hit.index]), hit.y, hit.x)
        cell = map_cell_at(display, x, y)
        channel = result.params.get("channel")
        if cell is None or channel is None:
            return None
        return ExplainNeuron(result.layer, int(channel), *cell)

    def click_hint(self) -> str:
        """What a click on the shown picture does, for the status bar ("" when nothing)."""
        shown = self.shown
        if shown is None or shown.method != "activations":
            return ""
        if isinstance(shown.display, TileGrid):
            return ("Click a tile to see its channel over the image; "
                    "Shift+click a place on it for guided backprop of that neuron")
        if isinstance(shown.display, MapOverPhoto) and shown.provenance.params.get("channel") is not None:
            return "Click the image for guided backprop of this channel's neuron there"
        return ""

    # -- export -------------------------------------------------------------------------------
    def output_paths(self, picture=None, array=None, animation=None) -> dict[Path, str]:
        """Every file an export to these names writes, each with what it holds ("picture",
        "sidecar", "array", "animation"); a name no export can take is refused here."""
        from engine.view.animation import check_animation_path

        paths: dict[Path, str] = {}
        if picture:
            picture = Path(picture)
            if sidecar_path_for(picture) == picture:
                raise OutputWriteError(picture, "the sidecar takes the .json name; give the picture a .png name")
            paths[picture] = "picture"
            paths[sidecar_path_for(picture)] = "sidecar"
        for path, kind in ((array, "array"), (animation, "animation")):
            if not path:
                continue
            path = Path(path)
            if kind == "animation":
                check_animation_path(path)
            if path in paths:
                raise OutputWriteError(path, f"the {paths[path]} is written there too; give each output its own name")
            paths[path] = kind
        return paths

    def check_outputs(self, picture=None, array=None, animation=None, overwrite: bool = False) -> None:
        """Refuse names that cannot be written (a folder, a file where a folder should be, a
        file that exists without ``overwrite``) before a long run, not after it."""
        paths = self.output_paths(picture, array, animation)
        try:
            check_targets(paths, overwrite=overwrite)
        except OSError as error:
            raise _output_error(error) from None

    def existing_outputs(self, picture=None, array=None, animation=None) -> list[Path]:
        """The files an export to these names would replace."""
        return [path for path in self.output_paths(picture, array, animation) if path.exists()]

    def export(self, picture=None, array=None, animation=None, *, view: ViewSettings | None = None,
               fps: float = 12.0, overwrite: bool = False, annotated: bool = True) -> list[Path]:
        """Write what is shown: ``picture`` the PNG of ``figure(view, annotated)`` (the picture
        with its colour bar and caption strip, or bare) with its sidecar (and,
        for an embedding, its coordinates as CSV beside them), ``array`` the raw result as
        .npy, ``animation`` the run's frames as GIF or MP4.

        All the files are written together: either all are new or all are as they were
        (a full disk halfway leaves no new picture beside an old sidecar). Returns the
        paths written; raises OutputExistsError for a file that exists unless ``overwrite``,
        OutputWriteError naming the file and the reason when a write fails, and
        NothingToExportError when what is shown has no such output.
        """
        from engine.view.animation import animation_file
        from engine.view.export import array_file, picture_files

        shown = self._require_shown()
        self.output_paths(picture, array, animation)  # refuses impossible names before any encoding
        files = []
        if picture:
            files += picture_files(picture, self.figure(view, annotated), self.sidecar(view, annotated))
            scatter = shown.display
            if isinstance(scatter, Scatter):  # an embedding: its coordinates too, beside the picture
                from engine.data.embedding import layout_csv

                content = layout_csv(scatter.paths, scatter.groups, scatter.xy)
                files.append((Path(picture).with_suffix(".csv"), lambda handle: handle.write(content)))
        if array:
            if shown.result is None or shown.result.array is None:
                raise NothingToExportError(f"{shown.method} has no raw array to export")
            files.append(array_file(array, shown.result.array))
        if animation:
            if shown.result is None or not shown.result.frames:
                raise NothingToExportError(f"{shown.method} recorded no frames to animate: only an optimisation run "
                                           "(DeepDream, class visualisation, style…) has frames")
            files.append(animation_file(shown.result.frames, animation, fps))
        try:
            return write_together(files, overwrite=overwrite)
        except OSError as error:
            raise _output_error(error) from None

    # -- helpers ----------------------------------------------------------------------------------
    def _require_model(self) -> LoadedModel:
        if self.model is None:
            raise MethodInputError("no model is loaded yet")
        return self.model

    def _require_image(self) -> LoadedImage:
        if self.image is None:
            raise MethodInputError("no image is open: open one with File > Open image")
        return self.image

    def _require_shown(self) -> Shown:
        if self.shown is None:
            raise NothingToExportError("there is nothing to export yet")
        return self.shown


def _method(method_id: str) -> MethodSpec:
    spec = METHODS.get(method_id)
    if spec is None:
        raise MethodInputError(f"unknown method '{method_id}'")
    return spec


def boxes_path_for(table) -> Path:
    """Where a comparison's table puts its boxes: comparison.csv -> comparison.boxes.csv."""
    table = Path(table)
    return table.with_name(f"{table.stem}.boxes.csv")


def _output_error(error: OSError) -> ConvScopeError:
    target = error.filename or "the file"
    if isinstance(error, FileExistsError):
        return OutputExistsError(target)
    return OutputWriteError(target, describe_write_failure(target, error))


def summarise(result: Result) -> str:
    """A result's numbers for its panel: "style loss 846.7 → 43.39" for a metric's first
    and last values, a term that stayed 0 left out; then the method's own ``summary`` text,
    where its numbers are too many to list one by one (a sanity check's per-step similarities)."""
    parts = []
    if result.layer:
        parts.append(f"layer {result.layer}")
    if result.target:
        parts.append(f"class {result.target['label']}")
    metrics = result.metrics

    def number(value) -> str | None:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None

    for key, value in metrics.items():
        shown = number(value)
        if shown is None or key.endswith("_last") and key[:-len("_last")] + "_first" in metrics:
            continue
        name = key[:-len("_first")] if key.endswith("_first") else key
        last = number(metrics.get(name + "_last")) if key.endswith("_first") else None
        if last is None:
            parts.append(f"{key.replace('_', ' ')} {shown}")
        elif value or metrics[name + "_last"]:
            parts.append(f"{name.replace('_', ' ')} {shown} → {last}")
    lines = ["; ".join(parts)] if parts else []
    if isinstance(metrics.get("summary"), str) and metrics["summary"]:
        lines.append(metrics["summary"])
    return "\n".join(lines)
