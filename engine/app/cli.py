"""The command line: the same methods the window runs, one JSON line per run.

    python main.py models
    python main.py models --timm [FILTER]   (timm's pretrained classifiers whose names hold every word)
    python main.py layers --model NAME
    python main.py layers --model net.py --weights net.pt --trust   (a network defined in Python)
    python main.py classify --image PATH [--model NAME]
    python main.py run METHOD --image PATH [--layer L] [--target T] [--out F.png] [--save-array F.npy] ...
    python main.py evaluate --images DIR --out DIR [--methods LIST] [--metrics LIST] [--boxes FILE]
    python main.py extract --dataset DIR|LIST --layer L [--kind avgpool|channel-max] [--engine local|ray] ...

Bad input exits with status 2 and one line on stderr; nothing here imports Qt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from engine.core.errors import ConvScopeError, JobCancelled
from engine.methods.params import DATASET, Param

COMMANDS = ("models", "layers", "classify", "run", "evaluate", "extract")
# The CLI's own numbers, read and bounded as the methods' parameters are. A layer listing
# runs one forward pass at the size asked for; 2048 px is the largest picture any method makes.
LAYERS_SIZE = Param("size", "int", None, "input size (default: the model's)", minimum=1, maximum=2048)
FPS = Param("fps", "float", 12.0, "frames per second of --animation", above=0.0, maximum=120.0)
STEPS = Param("steps", "int", 50, "steps of the deletion and insertion curves", minimum=2, maximum=10000)
BATCH_SIZE = Param("batch_size", "int", 32, "images per forward pass", minimum=1, maximum=4096)
WORKERS = Param("workers", "int", None, "local: decoding threads (default: one per core, at most 8); ray: workers "
                "holding a model each (default: every CPU of the Ray instance, or its GPUs / --gpus-per-worker)",
                minimum=1)
GPUS_PER_WORKER = Param("gpus_per_worker", "float", 0.0, "with --engine ray: GPUs each worker runs its model on "
                        "(0: CPUs; 0.5: two workers share a GPU)", minimum=0.0, maximum=64.0)
ANNOTATE = Param("annotate", "bool", True, "draw the colour bar and a caption strip (method, target, layer) around "
                 "--out's picture; --no-annotate writes the bare picture")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, with status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model name (see `models`), timm:NAME, a model file (TorchScript, a pickled model or ONNX), or a .py file "
                             "defining the network: a build_model() returning it, else a module-level `model`, else its "
                             "one nn.Module class that takes no arguments (a .py file needs --trust)")
    parser.add_argument("--weights", default=None,
                        help="a state-dict file for the named architecture, or for the network a .py --model defines")
    parser.add_argument("--trust", action="store_true",
                        help="allow a model file that runs code: a pickled model or a .py file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    from engine.methods import METHODS

    parser = _Parser(prog="convscope", description="See what a convolutional network has learned.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    models = commands.add_parser("models", help="list the models")
    models.add_argument("--timm", nargs="?", const="", default=None, metavar="FILTER",
                        help="list timm's pretrained classifiers instead (open one with --model timm:NAME): those "
                             "whose names hold every word of FILTER, any case (e.g. --timm \"convnext tiny\")")
    layers = commands.add_parser("layers", help="list a model's layers with shapes and receptive fields")
    _add_model_options(layers)
    layers.add_argument("--size", default=None, help=f"{LAYERS_SIZE.help}; at most {LAYERS_SIZE.maximum}")
    classify = commands.add_parser("classify", help="top-5 classes of an image as JSON")
    _add_model_options(classify)
    classify.add_argument("--image", required=True)

    evaluate = commands.add_parser("evaluate", help="score attribution methods over a folder of photos: deletion, "
                                   "insertion, ROAD and the pointing game, beside random, centre and edge maps")
    _add_model_options(evaluate)
    evaluate.add_argument("--images", required=True, help="a folder of photos (searched recursively)")
    evaluate.add_argument("--out", required=True, help="the folder the scores, summary and report go to; a run that "
                                                      "stopped resumes when given the same folder")
    evaluate.add_argument("--methods", default=None,
                          help=f"comma-separated method ids (default: {','.join(_evaluation().DEFAULT_METHODS)})")
    evaluate.add_argument("--metrics", default=None,
                          help=f"comma-separated, of {', '.join(_evaluation().METRICS)} "
                               f"(default: {','.join(_evaluation().DEFAULT_METRICS)})")
    evaluate.add_argument("--boxes", default=None, help="boxes around the objects, for the pointing game: a CSV of "
                                                        "image,x0,y0,x1,y1 rows or a JSON {image: [[x0,y0,x1,y1]]}")
    evaluate.add_argument("--target", default=None, help="the class to explain (default: each photo's top-1)")
    evaluate.add_argument("--baseline", default="blur", choices=("blur", "gray"),
                          help="what deletion puts in place of removed pixels, and insertion starts from")
    evaluate.add_argument("--steps", default=None, help=f"{STEPS.help} (default: {STEPS.default})")

    extract = commands.add_parser("extract", help="compute a layer's features for every image of a dataset into the "
                                  "feature store neighbors, embed and patches read; resumes where a run stopped")
    _add_model_options(extract)
    extract.add_argument("--dataset", required=True, help=DATASET.help)
    extract.add_argument("--layer", required=True,
                         help="a layer path (see `layers`), or early, middle, late, penultimate")
    extract.add_argument("--kind", default="avgpool", choices=_extraction().KINDS,
                         help="avgpool: each channel's mean (what neighbors and embed read); channel-max: each "
                              "channel's maximum and where it is (what patches reads)")
    extract.add_argument("--engine", default="local", choices=("local", "ray"),
                         help="local: this process; ray: a Ray Data pipeline, on this machine or the cluster at "
                              "--address (needs pip install 'convscope[scale]')")
    extract.add_argument("--address", default=None,
                         help="with --engine ray: the Ray cluster (host:port, ray://host:port, or auto for the one "
                              "`ray start` began here); default: a Ray instance on this machine")
    extract.add_argument(WORKERS.flag, dest=WORKERS.name, default=None, help=WORKERS.help)
    extract.add_argument(GPUS_PER_WORKER.flag, dest=GPUS_PER_WORKER.name, default=None,
                         help=f"{GPUS_PER_WORKER.help} (default: 0)")
    extract.add_argument(BATCH_SIZE.flag, dest=BATCH_SIZE.name, default=None,
                         help=f"{BATCH_SIZE.help} (default: {BATCH_SIZE.default})")

    run = commands.add_parser("run", help="run a visualisation method")
    methods = run.add_subparsers(dest="method", required=True, parser_class=_Parser, metavar="METHOD")
    for spec in METHODS.values():
        method = methods.add_parser(spec.id, help=spec.summary, description=spec.summary)
        _add_model_options(method)
        method.add_argument("--image", default=None, help="input image")
        method.add_argument("--images", default=None,
                            help="a folder of photos to run on one after another (searched recursively); needs "
                                 "--out-dir")
        method.add_argument("--out-dir", default=None,
                            help="with --images: the folder each photo's picture and sidecar go to, with a contact "
                                 "sheet; photos whose picture is there already are skipped")
        method.add_argument("--out", default=None, help="write the picture as PNG (plus a JSON sidecar)")
        method.add_argument(ANNOTATE.flag, dest=ANNOTATE.name, default=None, action=argparse.BooleanOptionalAction,
                            help=f"{ANNOTATE.help} (default: {ANNOTATE.text(ANNOTATE.default)})")
        method.add_argument("--save-array", default=None, help="write the raw float result as .npy")
        method.add_argument("--overwrite", action="store_true",
                            help="replace files that --out, --save-array or --animation name; without it an existing "
                                 "file is an error, found before the run starts")
        if spec.streams_frames:
            method.add_argument("--animation", default=None,
                                help="also write the run's frames as an animation (.gif or .mp4)")
            method.add_argument("--fps", default=None, help=f"{FPS.help} (default: {FPS.default:g})")
        names = {p.name for p in spec.params}
        for common in ("layer", "target", "seed"):
            if common not in names:
                method.add_argument(f"--{common}", default=None, help=f"(not used by {spec.id})")
        for param in spec.params:
            kwargs = {"dest": param.name, "default": None,
                      "help": f"{param.help} (default: {param.text(param.default) or 'none'})"}
            if param.kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif param.kind == "images":
                kwargs["action"] = "append"
                kwargs["help"] += "; repeat the flag for several"
            elif param.choices:
                kwargs["choices"] = param.choices
            method.add_argument(param.flag, **kwargs)
    return parser


def _evaluation():
    from engine.evaluation import report

    return report


def _extraction():
    from engine.data import extraction

    return extraction


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except JobCancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except ConvScopeError as exc:
        from engine.core.device import OUT_OF_MEMORY_MESSAGE, is_out_of_memory

        if is_out_of_memory(exc):  # a failed allocation that was reported as bad input
            print(f"error: {OUT_OF_MEMORY_MESSAGE}", file=sys.stderr)
            return 3
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as exc:
        from engine.core.device import OUT_OF_MEMORY_MESSAGE, is_out_of_memory

        if is_out_of_memory(exc):
            print(f"error: {OUT_OF_MEMORY_MESSAGE}", file=sys.stderr)
            return 3
        raise


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dispatch(args) -> int:
    if args.command == "models":
        if args.timm is not None:
            return _print_timm_models(args.timm)
        from engine.models.registry import available_models

        for spec in available_models():
            print(f"{spec.name:20s} {spec.description}")
        return 0
    if args.command == "layers":
        return _print_layers(args)
    if args.command == "run":
        return _run_method(args, *_bind_flags(args))  # flags bound before the model loads
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "extract":
        return _extract(args)
    from engine.anatomy.activations import compute_features
    from engine.data.images import load_image

    model = _load_model(args)
    features = compute_features(model, load_image(args.image))
    top5 = [{"index": i, "label": label, "prob": round(p, 6)} for i, label, p in features.top_k(model.labels)]
    print(json.dumps({"model": model.name, "image": args.image, "top5": top5}))
    return 0


def _print_timm_models(text: str) -> int:
    from engine.models.timm_models import PREFIX, name_matches, timm_catalogue

    entries = [entry for entry in timm_catalogue() if name_matches(entry.name, text)]
    if not entries:
        raise ConvScopeError(f"no timm model's name holds every word of '{text}'; "
                             "`models --timm` lists them all")
    width = max(len(PREFIX + entry.name) for entry in entries)
    for entry in entries:
        cached = "  (weights on this computer)" if entry.is_cached() else ""
        print(f"{PREFIX + entry.name:<{width}}  {entry.description}{cached}")
    return 0


def _print_layers(args) -> int:
    from engine.core.errors import WeightsMissingError
    from engine.anatomy.layer_tree import format_layers

    size = LAYERS_SIZE.coerce(args.size)

    try:
        model = _load_model(args)
    except WeightsMissingError as exc:
        # Shapes, fields and what each layer is for come from the architecture alone: list it anyway.
        from engine.core.device import resolve_device
        from engine.models.registry import load_architecture

        print(f"note: {exc.filename} is not on this machine; listing the architecture without weights", file=sys.stderr)
        model = load_architecture(args.model, device=resolve_device(args.device))
    width, height = model.preprocessing.input_size(1, 1, size=size)
    print(format_layers(model.state.layer_tree((height, width)), model.layer_guide()))
    return 0


def _load_model(args):
    from engine.core.device import resolve_device
    from engine.methods.registry import model_notes
    from engine.models.registry import BUNDLED_MODEL, load_model

    device = resolve_device(args.device)
    model = load_model(args.model or BUNDLED_MODEL, weights_path=args.weights, device=device, trust=args.trust,
                       progress=_print_download_progress)
    _print_notes(model_notes(model))
    return model


def _print_notes(notes: list[str]) -> None:
    """How a model file was opened, and what does not run on it, on stderr."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _print_download_progress(fraction: float, message: str) -> None:
    print(f"\r{message} ({fraction:.0%})", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)


def _bind_flags(args):
    """The method, its parameters bound from the flags, the seed for torch (None: not given)
    and the animation's frame rate."""
    from engine.methods import METHODS
    from engine.methods.params import SEED

    spec = METHODS[args.method]
    params = spec.bind({p.name: getattr(args, p.name) for p in spec.params if getattr(args, p.name, None) is not None})
    seed = None if args.seed is None else params["seed"] if "seed" in params else SEED.coerce(args.seed)
    fps = FPS.coerce(getattr(args, "fps", None))
    return spec, params, seed, fps


def _run_method(args, spec, params, seed, fps) -> int:
    from engine.app.session import Session
    from engine.core.jobs import CancelToken, Stopwatch, drive

    outputs = {"picture": args.out, "array": args.save_array, "animation": getattr(args, "animation", None)}
    if args.images or args.out_dir:
        return _run_on_folder(args, spec, params, seed, outputs)
    session = Session(device=args.device)
    with _outputs_named_by_flag(session, outputs):
        session.check_outputs(**outputs, overwrite=args.overwrite)  # before the run, not after it
    _load_into(session, args, seed)
    if args.image:
        session.open_image(args.image)
    if spec.needs_image and session.image is None:
        raise ConvScopeError(f"{spec.id} needs an image: add --image PATH")
    watch = Stopwatch()
    shown = session.show(drive(session.start(spec.id, params, CancelToken())))
    seconds = watch.seconds
    with _outputs_named_by_flag(session, outputs):
        written = session.export(**outputs, fps=fps, overwrite=args.overwrite, annotated=ANNOTATE.coerce(args.annotate))
    origin = shown.provenance
    line = {
        "method": spec.id,
        "model": origin.model,
        "layer": origin.layer,
        "target": origin.target,
        "seconds": round(seconds, 4),
        "top5": [[label, round(p, 6)] for _i, label, p in session.top5()],
        "out": str(written[0]) if args.out else None,
        "save_array": args.save_array,
        "animation": outputs["animation"],
        "params": origin.params,
        "metrics": origin.metrics,
    }
    from engine.view.export import to_jsonable

    print(json.dumps(to_jsonable(line)))
    return 0


def _load_into(session, args, seed) -> None:
    """The model the flags name, into ``session``, its notes on stderr; then torch's seed."""
    import torch

    from engine.models.registry import BUNDLED_MODEL

    info = session.load_model(args.model or BUNDLED_MODEL, weights_path=args.weights, trust=args.trust,
                              progress=_print_download_progress)
    _print_notes(info.notes)
    if seed is not None:
        torch.manual_seed(seed)


def _progress_printer(own_eta: bool = True):
    """A progress callback for a long job over a folder: one line on stderr, rewritten, with
    the time left (``own_eta`` False: the job's messages say it already)."""
    from engine.core.eta import Eta, duration_text

    eta = Eta()

    def show(progress) -> None:
        eta.update(progress.fraction)
        left = eta.seconds_left() if own_eta else None
        print(f"\r{progress.fraction:4.0%} {progress.message}" + (f", {duration_text(left)} left" if left else "")
              + "\033[K", end="", file=sys.stderr, flush=True)

    return show


def _run_on_folder(args, spec, params, seed, outputs) -> int:
    from engine.app.folder_run import run_on_folder
    from engine.app.session import Session
    from engine.core.jobs import CancelToken, drive

    if not (args.images and args.out_dir):
        raise ConvScopeError("--images and --out-dir go together: the folder of photos, and the folder their "
                             "pictures go to")
    named = [flag for flag, value in (("--image", args.image), ("--out", outputs["picture"]),
                                      ("--save-array", outputs["array"]), ("--animation", outputs["animation"]))
             if value]
    if named:
        raise ConvScopeError(f"{', '.join(named)} name one photo's files; with --images each photo's picture goes "
                             f"to --out-dir")
    session = Session(device=args.device)
    _load_into(session, args, seed)
    run = drive(run_on_folder(session, spec.id, params, args.images, args.out_dir, CancelToken(),
                              annotated=ANNOTATE.coerce(args.annotate)), on_progress=_progress_printer())
    print(file=sys.stderr)
    for name, why in run.failed:
        print(f"skipped {name}: {why}", file=sys.stderr)
    from engine.view.export import to_jsonable

    print(json.dumps(to_jsonable({"method": spec.id, **run.as_dict(), "params": dict(params)})))
    return 0


def _evaluate(args) -> int:
    from engine.core.jobs import CancelToken, drive
    from engine.evaluation.folder import REPORT, SUMMARY, evaluate_folder
    from engine.methods import METHODS

    report = _evaluation()
    methods = _listed(args.methods, report.DEFAULT_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConvScopeError(f"--methods: no method {', '.join(unknown)}; `run --help` lists them")
    metrics = _listed(args.metrics, report.DEFAULT_METRICS)
    steps = STEPS.coerce(args.steps) if args.steps is not None else STEPS.default
    model = _load_model(args)
    summary = drive(evaluate_folder(model, args.images, args.out, methods, metrics, args.boxes, args.target,
                                    args.baseline, steps, CancelToken()), on_progress=_progress_printer())
    print(file=sys.stderr)
    out = Path(args.out)
    print(json.dumps({"photos": summary["photos"], "unreadable": len(summary["unreadable"]),
                      "summary": str(out / SUMMARY), "report": str(out / REPORT), "beats_edges": summary["beats_edges"],
                      "maps": summary["maps"]}))
    return 0


def _extract(args) -> int:
    """``extract``: the features of a dataset into the feature store; the last line is JSON."""
    from engine.anatomy.layers import resolve_layer
    from engine.core.jobs import CancelToken, drive
    from engine.data.datasets import open_dataset
    from engine.models.registry import BUNDLED_MODEL

    extraction = _extraction()
    batch_size = BATCH_SIZE.coerce(args.batch_size)
    workers = WORKERS.coerce(args.workers)
    gpus = GPUS_PER_WORKER.coerce(args.gpus_per_worker)
    if args.engine == "local" and (args.address or gpus):
        named = [flag for flag, value in (("--address", args.address), (GPUS_PER_WORKER.flag, gpus)) if value]
        raise ConvScopeError(f"{' and '.join(named)} {'go' if len(named) > 1 else 'goes'} with --engine ray; "
                             f"the local engine runs on --device")
    if args.engine == "ray":
        from engine.data import ray_extraction

        ray_extraction.connect(args.address, workers)  # a missing Ray or a silent address, before the model loads
    dataset = open_dataset(args.dataset)
    model = _load_model(args)
    layer = resolve_layer(model.module, args.layer, model.presets, model.state.output_shapes())
    cancel = CancelToken()
    if args.engine == "ray":
        source = ray_extraction.ModelSource.of(args.model or BUNDLED_MODEL, args.weights, args.trust)
        job = ray_extraction.extract_on_ray(model, source, dataset, layer, kind=args.kind, batch_size=batch_size,
                                            cancel=cancel, address=args.address, workers=workers,
                                            gpus_per_worker=gpus)
    else:
        job = extraction.extract(model, dataset, layer, kind=args.kind, batch_size=batch_size, cancel=cancel,
                                 workers=workers)
    result = drive(job, on_progress=_progress_printer(own_eta=False))
    print(file=sys.stderr)
    try:
        for path, why in result.failures:
            print(f"skipped {path}: {why}", file=sys.stderr)
        print(json.dumps({"store": str(result.store.folder), "model": model.name, "layer": layer, "kind": args.kind,
                          "engine": args.engine, "rows": len(result), "computed": result.computed,
                          "cached": len(result) - result.computed, "skipped": len(result.failures)}))
    finally:
        result.close()
    return 0


def _listed(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return tuple(default)
    return tuple(part.strip() for part in text.split(",") if part.strip())


@contextlib.contextmanager
def _outputs_named_by_flag(session, outputs: dict):
    """A failed write said in one line with the flag that named the file."""
    from engine.core.errors import OutputExistsError, OutputWriteError

    flags = {"picture": "--out", "sidecar": "the sidecar of --out", "array": "--save-array", "animation": "--animation"}
    try:
        yield
    except OutputWriteError as error:
        try:
            kinds = session.output_paths(**outputs)
        except ConvScopeError:
            kinds = {}
        path = Path(error.path)
        kind = kinds.get(path, "picture" if path.suffix == ".csv" else None)
        named = f"{error.path} ({flags[kind]})" if kind else error.path
        if isinstance(error, OutputExistsError):
            raise ConvScopeError(f"{named} exists already; add --overwrite to replace it") from None
        raise ConvScopeError(f"cannot write {named}: {error.reason}") from None
