"""Extraction on Ray Data: the local engine's rows, resumable, cancellable, and clear
when Ray is missing or the cluster does not answer.

One local Ray instance (2 CPUs) serves the module; every pipeline starts two workers
that load the bundled model, so the tests that need one are few and share a dataset.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from engine.app.cli import main
from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, drive
from engine.data.datasets import open_dataset
from engine.data.extraction import extract, open_feature_store
from engine.data.ray_extraction import INSTALL_HINT, ModelSource, RayUnavailableError, extract_on_ray, import_ray
from engine.models.registry import BUNDLED_MODEL, load_model

LAYER = "stages.1.1.expand_relu6"  # the bundled model's "early" layer: a few milliseconds an image
IMAGES = 200
BAD = ("cut_short.png", "words.jpg")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 small PNGs of smooth random colour fields, and two files that are not images."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((30, 24), Image.Resampling.BILINEAR).save(root / f"{index:03d}.png")
    (root / BAD[0]).write_bytes((root / "000.png").read_bytes()[:60])
    (root / BAD[1]).write_text("not a picture")
    return root


@pytest.fixture(scope="module")
def local_rows(model, folder, tmp_path_factory):
    """Every readable image's row by the local engine, by path, for each kind."""
    dataset = open_dataset(folder)
    rows = {}
    for kind in ("avgpool", "channel-max"):
        result = drive(extract(model, dataset, LAYER, kind=kind, store_root=tmp_path_factory.mktemp("local")))
        rows[kind] = dict(zip(result.paths, result.matrix()))
        result.close()
    return rows


def ray_run(model, dataset, store_root, **kwargs):
    return drive(extract_on_ray(model, ModelSource.of(BUNDLED_MODEL), dataset, LAYER, store_root=store_root,
                                workers=2, **kwargs))


def test_rows_equal_the_local_engines_and_unreadable_files_are_failures(ray_instance, model, folder, local_rows,
                                                                         tmp_path):
    dataset = open_dataset(folder)
    result = ray_run(model, dataset, tmp_path, batch_size=16)
    try:
        assert len(result) == IMAGES and result.computed == IMAGES
        assert sorted(path.rsplit("/", 1)[-1] for path, _ in result.failures) == sorted(BAD)
        assert all(path.rsplit("/", 1)[-1] in message for path, message in result.failures)
        assert result.vectors.dtype == np.float16
        reference = np.stack([local_rows["avgpool"][path] for path in result.paths])
        assert np.abs(result.matrix() - reference).max() <= 1e-3
    finally:
        result.close()
    again = ray_run(model, dataset, tmp_path)  # every file is in the store: nothing enters a pipeline
    assert again.computed == 0 and len(again) == IMAGES and len(again.failures) == len(BAD)
    again.close()


def test_cancel_keeps_the_batches_received_before_it(ray_instance, model, folder, local_rows, tmp_path):
    dataset = open_dataset(folder)
    cancel = CancelToken()
    seen = []

    def cancel_after_the_first_batch(progress):
        seen.append(progress.fraction)
        if progress.fraction > 0:
            cancel.cancel()

    with pytest.raises(JobCancelled):
        drive(extract_on_ray(model, ModelSource.of(BUNDLED_MODEL), dataset, LAYER, store_root=tmp_path, workers=2,
                             batch_size=10, cancel=cancel), on_progress=cancel_after_the_first_batch)
    store = open_feature_store(model, LAYER, "avgpool", tmp_path)
    try:
        rows = store.lookup(dataset.items)
        stored = np.flatnonzero(rows >= 0)
        # exactly the batch reported before the cancel: 10 images, less any unreadable among them
        assert 0 < len(stored) <= 10 and round(seen[-1] * (IMAGES + len(BAD))) == 10
        vectors = np.asarray(store.matrix(rows[stored]), dtype=np.float32)
        reference = np.stack([local_rows["avgpool"][dataset.items[i].path] for i in stored])
        assert np.abs(vectors - reference).max() <= 1e-3
    finally:
        store.close()


def test_the_cli_on_ray_computes_only_what_a_partial_store_lacks(ray_instance, model, folder, local_rows, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    listed = tmp_path / "half.txt"  # the first half of the images, as a list file
    listed.write_text("".join(f"{folder / f'{i:03d}.png'}\n" for i in range(IMAGES // 2)))
    first = drive(extract(model, open_dataset(listed), LAYER, kind="channel-max"))
    first.close()
    code = main(["extract", "--dataset", str(folder), "--layer", "early", "--kind", "channel-max",
                 "--engine", "ray", "--workers", "2", "--batch-size", "25"])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["rows"], line["computed"], line["cached"], line["skipped"]) == (IMAGES, IMAGES // 2, IMAGES // 2, 2)
    assert line["layer"] == LAYER and line["engine"] == "ray"
    # one progress line, rewritten in place, and the two unreadable files: nothing of Ray's own
    lines = err.strip().split("\n")
    assert len(lines) == 3 and "102 of 102 images (100 cached)" in lines[0] and all(l.startswith("skipped ") for l in lines[1:])
    result = drive(extract(model, open_dataset(folder), LAYER, kind="channel-max"))  # all cached now
    try:
        assert result.computed == 0
        reference = np.stack([local_rows["channel-max"][path] for path in result.paths])
        assert np.abs(result.matrix() - reference).max() <= 1e-3
    finally:
        result.close()


def test_without_ray_the_message_says_how_to_install_it(monkeypatch, folder, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(RayUnavailableError, match="pip install 'convscope\\[scale\\]'"):
        import_ray()
    code = main(["extract", "--dataset", str(folder), "--layer", "early", "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: extraction on Ray needs Ray Data, which is not installed: {INSTALL_HINT}"


def test_an_address_where_nothing_listens_is_one_line(folder, capsys):
    with socket.socket() as probe:  # a port that was free a moment ago, and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["extract", "--dataset", str(folder), "--layer", "early", "--engine", "ray",
                 "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
