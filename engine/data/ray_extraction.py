"""Extraction on Ray Data: the features of a dataset computed by workers on this machine's
cores or on a Ray cluster, stored exactly as the local engine stores them.

``extract_on_ray`` is the same job as ``engine.data.extraction.extract`` (it yields
``Progress`` and returns an ``Extracted``) and shares its loop, ``_fill_store``: the
files already in the feature store are looked up first and never enter the pipeline,
each result batch is appended to the store as it arrives, and a cancel (checked between
result batches) stops the pipeline and keeps every batch appended before it. Only the
source of computed rows differs: a Ray Data pipeline of

1. ``from_items`` of the missing files (path and dataset index), a block per batch;
2. decoding (``map_batches`` of ``_decode_batch``): the dataset loader's own decoder, so a
   square is the same uint8 the local engine gets; an unreadable file travels on as a
   failure with the loader's message, and never stops the job;
3. the layer's rows (``map_batches`` of ``_LayerRowsWorker``, an actor pool of ``workers``
   actors, ``gpus_per_worker`` GPUs each when asked): each actor loads the model from a
   ``ModelSource`` (what ``load_model`` was given, picklable; a model file that runs code
   needs its trust passed on explicitly) and runs ``pixel_rows``, the local engine's
   function, so the rows agree with it to float rounding.

On CPUs Ray Data fuses 2 and 3 into one actor stage, so decoded pixels do not cross the
object store; with GPUs, decoding runs as CPU tasks that feed the GPU actors. Either way
the driver receives only the rows.

An actor refuses to work when the weights it loaded differ from the driver's (the
fingerprint in the store's key): a cluster node with another file at the same path would
otherwise fill the store with rows that belong to other weights.

Ray is optional (``pip install 'convscope[scale]'``); nothing else in ConvScope imports it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator

import numpy as np

from engine.core.errors import ConvScopeError, first_line
from engine.core.jobs import CancelToken, Progress
from engine.data.datasets import Dataset, DatasetItem
from engine.data.extraction import (ComputedBatch, Extracted, _fill_store, check_layer_and_kind, open_feature_store,
                                    pixel_rows, weights_fingerprint)
from engine.models.model import LoadedModel

INSTALL_HINT = "pip install 'convscope[scale]' (or pip install 'ray[data]')"
# How long connecting to a cluster's address may take before it counts as unreachable.
# Ray itself retries an unanswered address for minutes, printing a warning every few seconds.
CONNECT_TIMEOUT_S = float(os.environ.get("CONVSCOPE_RAY_CONNECT_TIMEOUT_S", "5"))


class RayUnavailableError(ConvScopeError):
    """Ray Data is not installed, or the cluster asked for does not answer."""


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model the driver has: what ``load_model`` was given.

    Paths are made absolute here, since a Ray worker does not run in the driver's folder.
    ``trust`` must be given again for a pickled model or a Python file, which run code
    when loaded: a worker is never trusted more than the driver was told to be.
    """

    name: str
    weights_path: str | None = None
    trust: bool = False

    @classmethod
    def of(cls, name: str, weights_path: str | os.PathLike | None = None, trust: bool = False) -> "ModelSource":
        return cls(name=_absolute_if_file(name), weights_path=_absolute_if_file(weights_path) if weights_path else None,
                   trust=trust)

    def load(self, device: str = "cpu") -> LoadedModel:
        from engine.core.device import resolve_device
        from engine.models.registry import load_model

        return load_model(self.name, weights_path=self.weights_path, device=resolve_device(device), trust=self.trust)


def _absolute_if_file(path: str | os.PathLike) -> str:
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else str(path)


def import_ray():
    """The ``ray`` module with Ray Data, or a message that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline's half, installed by the [data] extra
    except ImportError:
        raise RayUnavailableError(f"extraction on Ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None, workers: int | None = None) -> None:
    """Start or join Ray, unless this process has done so already (then it is used as it is).

    ``address`` None starts a Ray instance on this machine with ``workers`` CPUs (default:
    every core); ``"auto"`` joins the one ``ray start`` began here; ``host:port`` or
    ``ray://host:port`` a cluster, which is checked to answer first. Ray's own logging
    and progress bars are kept off the terminal either way.
    """
    ray = import_ray()
    _quiet(ray)
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return
    # Ray's core logs at error level, for every Ray Data actor pool, that its constructor
    # arguments live in the object store: true of every pipeline, and nothing to act on.
    # Set to fatal, Ray says so once, at info level, when it starts. A user's setting wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)


def _quiet(ray) -> None:
    """Ray Data's progress bars, execution plans and per-run statistics off the terminal:
    the CLI prints one progress line and one JSON line, as for every other command."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _check_reachable(address: str) -> None:
    """Refuse, in one line, an address where nothing listens (Ray would retry for minutes)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"the Ray address '{address}' is not host:port (e.g. 10.0.0.5:6379 or "
                                  f"ray://10.0.0.5:10001), 'auto', or empty for this machine")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RayUnavailableError(f"no Ray cluster answers at {address} ({why}); start one there with "
                                  f"`ray start --head`, or leave the address empty to run on this machine") from None


def extract_on_ray(model: LoadedModel, source: ModelSource, dataset: Dataset, layer: str, *, kind: str = "avgpool",
                   batch_size: int = 32, cancel: CancelToken | None = None,
                   store_root: str | os.PathLike | None = None, address: str | None = None,
                   workers: int | None = None, gpus_per_worker: float = 0.0) -> Generator[Progress, None, Extracted]:
    """``extract`` with the missing rows computed by a Ray Data pipeline; a job.

    ``model`` is the driver's copy (the store's key and the layer check); ``source`` loads
    the same model on each worker. ``workers`` actors (default: every CPU Ray has, or its
    GPUs divided by ``gpus_per_worker``) hold a model each; with ``gpus_per_worker`` > 0
    they run it on their GPU. ``address``: see ``connect``.
    """
    check_layer_and_kind(model, layer, kind)
    cancel = cancel or CancelToken()
    connect(address, workers)
    store = open_feature_store(model, layer, kind, store_root)
    rows = _pipeline(source, layer, kind, model.preprocessing.size, weights_fingerprint(model.module), batch_size,
                     workers, gpus_per_worker, cancel)
    return (yield from _fill_store(store, dataset, layer, kind, rows, cancel))


def _pipeline(source: ModelSource, layer: str, kind: str, size: int, fingerprint: str, batch_size: int,
              workers: int | None, gpus_per_worker: float, cancel: CancelToken):
    """The Ray source of computed batches for ``_fill_store``; ``cancel`` is checked before
    waiting for each result batch, so a cancelled run asks the pipeline for nothing more."""
    ray = import_ray()
    batch_size = max(1, int(batch_size))

    def batches(items: list[DatasetItem], missing: np.ndarray) -> Iterator[ComputedBatch]:
        listed = [{"index": int(i), "path": items[int(i)].path} for i in missing]
        blocks = max(1, -(-len(listed) // batch_size))
        pool = min(workers or _default_workers(ray, gpus_per_worker), blocks)  # a worker per batch at most
        on_gpu = gpus_per_worker > 0
        # On CPUs both stages ask for one CPU, so Ray Data fuses them into one actor: decode
        # and model share its core, and pixels never cross the object store. A GPU worker
        # takes no CPU of its own, leaving every core to the decoding tasks that feed it.
        data = (ray.data.from_items(listed, override_num_blocks=blocks)
                .map_batches(_decode_batch, batch_size=batch_size, fn_kwargs={"size": size}, num_cpus=1)
                .map_batches(_LayerRowsWorker, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool),
                             num_cpus=0 if on_gpu else 1, num_gpus=gpus_per_worker if on_gpu else None,
                             fn_constructor_kwargs={"source": source, "layer": layer, "kind": kind,
                                                    "fingerprint": fingerprint, "device": "cuda" if on_gpu else "cpu"}))
        results = data.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for result in _reported(results, cancel):
                ok = result["message"] == ""
                failures = [(items[int(i)].path, str(message))
                            for i, message in zip(result["index"][~ok], result["message"][~ok])]
                indices = [int(i) for i in result["index"][ok]]
                yield ComputedBatch(indices, failures, result["vector"][ok] if indices else None)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # shuts the streaming executor down: its actors stop with it

    return batches


def _default_workers(ray, gpus_per_worker: float) -> int:
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


def _reported(results: Iterator[dict], cancel: CancelToken) -> Iterator[dict]:
    """``results`` until ``cancel`` is set, with a worker's ConvScope error raised as itself,
    in its own words, and any other pipeline failure as one line that says it came from Ray."""
    from ray.exceptions import RayError

    try:
        for result in results:
            yield result
            cancel.check()
    except RayError as exc:
        cause = _convscope_cause(exc)
        if cause is not None:
            raise type(cause)(str(cause)) from None
        raise ConvScopeError(f"the Ray pipeline failed: {first_line(exc)}") from exc


def _convscope_cause(exc: BaseException) -> ConvScopeError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConvScopeError):
            return exc
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def _decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Paths to ``size x size`` uint8 squares, as ``iter_batches`` decodes them; an
    unreadable file gets zeros and the loader's message (readable files: '')."""
    from engine.data.datasets import _decode_into

    paths = batch["path"]
    pixels = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    messages = [_decode_into(pixels, j, str(path), size) for j, path in enumerate(paths)]
    return {"index": batch["index"], "pixels": pixels, "message": np.array(messages, dtype=object)}


class _LayerRowsWorker:
    """A Ray actor holding the model: decoded batches in, the layer's rows out."""

    def __init__(self, source: ModelSource, layer: str, kind: str, fingerprint: str, device: str) -> None:
        from engine.core.runtime import configure_process

        # A Ray worker is a process of Ray's, not started through main.py: without glibc
        # keeping freed memory, every batch page-faults its activations afresh, and the
        # model took 28 ms an image on one core instead of 19.
        configure_process()
        self.model = source.load(device)
        if weights_fingerprint(self.model.module) != fingerprint:
            raise ConvScopeError(f"a Ray worker loaded other weights for {source.name} than this computer did "
                                 f"(from {source.weights_path or 'its default weights'}): every node needs the "
                                 f"same model files at the same paths")
        self.layer, self.kind = layer, kind
        size = self.model.preprocessing.size
        # One image through the layer: builds the fast copy before the first batch, and
        # gives the row width that a batch of unreadable files alone is padded to.
        self.width = self._rows(np.zeros((1, 3, size, size), dtype=np.uint8)).shape[1]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["message"] == ""
        vectors = np.zeros((len(ok), self.width), dtype=np.float32)
        if ok.any():
            vectors[ok] = self._rows(np.ascontiguousarray(batch["pixels"][ok]))
        return {"index": batch["index"], "message": batch["message"], "vector": vectors}

    def _rows(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        return pixel_rows(self.model, self.layer, self.kind, torch.from_numpy(pixels))
