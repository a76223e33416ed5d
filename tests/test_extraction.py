"""Extracting a layer's features over a dataset: correct, cached, incremental, cancellable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from tests.conftest import make_tiny_model
from engine.data.datasets import load_square, open_dataset
from engine.core.errors import JobCancelled, MethodInputError
from engine.data.extraction import extract, image_vector
from engine.core.jobs import CancelToken, Progress, drive
from engine.models.model import LoadedModel

SIZE = 16


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model():
    return make_tiny_model(size=SIZE)


PHOTOS = {
    "cat/chelsea.png": (data.chelsea, (90, 60)),
    "cat/chelsea_small.jpg": (data.chelsea, (45, 30)),
    "cup/coffee.png": (data.coffee, (60, 40)),
    "cup/coffee_tall.png": (data.coffee, (40, 70)),
    "space/astronaut.png": (data.astronaut, (64, 64)),
    "space/rocket.jpg": (data.rocket, (50, 80)),
    "texture/brick.png": (data.brick, (48, 48)),
}


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    for relative, (load, size) in PHOTOS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load()).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path)
    return root


class ForwardCounter:
    """Counts the images the model's forward pass sees, run as it is or as its fast copy
    (the one ``model.state`` keeps, which extraction runs)."""

    def __init__(self, model: LoadedModel) -> None:
        self.images = 0
        self.calls = 0
        copy = model.state.fast_copy(torch.zeros(1, 3, SIZE, SIZE))
        for network in {model.module, copy}:
            network.register_forward_pre_hook(self)

    def __call__(self, _module, inputs):
        self.calls += 1
        self.images += inputs[0].shape[0]


def direct_features(model, path: str, layer_output) -> torch.Tensor:
    """The layer output for one file, computed without the dataset machinery (threads,
    batches, the store): one square as the loader reads it (how close that is to Pillow's
    resize is tested in test_datasets), normalised by hand."""
    x = torch.from_numpy(load_square(path, SIZE).astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = model.preprocessing.normalise(x)
    with torch.no_grad():
        return layer_output(x)


def run(model, dataset, layer="features.4", **kwargs):
    events = []
    result = drive(extract(model, dataset, layer, **kwargs), on_progress=events.append)
    return result, events


def test_vectors_equal_a_direct_forward_and_average_pool(model, folder):
    dataset = open_dataset(folder)
    result, events = run(model, dataset, batch_size=3)
    assert len(result) == len(PHOTOS) and result.computed == len(PHOTOS) and result.failures == []
    assert result.labels == ["cat", "cat", "cup", "cup", "space", "space", "texture"]
    assert result.paths == dataset.paths and result.indices.tolist() == list(range(len(PHOTOS)))
    assert result.vectors.shape == (len(PHOTOS), 16) and result.vectors.dtype == np.float16
    for row, path in zip(result.matrix(), result.paths):
        expected = direct_features(model, path, model.module.features).mean(dim=(2, 3))[0].numpy()
        assert np.allclose(row, expected, rtol=2e-3, atol=1e-3)
    assert all(isinstance(e, Progress) for e in events)
    assert events[0].fraction == 0 and events[-1].fraction == 1
    assert "7 of 7 images" in events[-1].message and "img/s" in events[-1].message
    assert "left" in events[1].message  # an ETA while work remains


def test_a_vector_layer_is_stored_as_it_is(model, folder):
    dataset = open_dataset(folder)
    result, _ = run(model, dataset, layer="classifier")
    expected = direct_features(model, dataset[0].path, model.module)[0].numpy()
    assert result.vectors.shape == (len(PHOTOS), 5) and np.allclose(result.matrix()[0], expected, rtol=2e-3, atol=1e-3)


def test_a_corrupt_file_is_skipped_and_listed_while_the_rest_extract(model, folder):
    (folder / "cup" / "broken.png").write_bytes((folder / "cup" / "coffee.png").read_bytes()[:200])
    (folder / "cup" / "text.jpg").write_text("hello")
    dataset = open_dataset(folder)
    result, _ = run(model, dataset, batch_size=2)
    assert len(dataset) == len(PHOTOS) + 2 and len(result) == len(PHOTOS)
    assert sorted(Path(path).name for path, _ in result.failures) == ["broken.png", "text.jpg"]
    assert all(Path(path).name in message for path, message in result.failures)
    assert not any(Path(p).name in ("broken.png", "text.jpg") for p in result.paths)
    # the bad files are listed again next time, and still cost no forward pass
    counter = ForwardCounter(model)
    again, _ = run(model, open_dataset(folder))
    assert counter.images == 0 and len(again.failures) == 2 and np.array_equal(again.vectors, result.vectors)


def test_reopening_an_unchanged_dataset_runs_no_forward(model, folder):
    first, _ = run(model, open_dataset(folder))
    counter = ForwardCounter(model)
    second, events = run(model, open_dataset(folder))
    assert counter.calls == 0 and second.computed == 0
    assert np.array_equal(second.vectors, first.vectors)
    assert events == [Progress(1.0, f"{len(PHOTOS)} images, all cached")]


def test_a_modified_file_is_extracted_again_alone(model, folder):
    run(model, open_dataset(folder))
    target = folder / "space" / "astronaut.png"
    Image.fromarray(data.camera()).convert("RGB").resize((64, 64)).save(target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks: make sure it differs
    (folder / "new.png").write_bytes((folder / "cat" / "chelsea.png").read_bytes())
    counter = ForwardCounter(model)
    dataset = open_dataset(folder)
    result, _ = run(model, dataset)
    assert counter.images == 2 and result.computed == 2
    where = result.paths.index(str(target.resolve()))
    expected = direct_features(model, str(target), model.module.features).mean(dim=(2, 3))[0].numpy()
    assert np.allclose(result.matrix()[where], expected, rtol=2e-3, atol=1e-3)
    assert result.labels[result.paths.index(str((folder / "new.png").resolve()))] is None


def test_a_cancelled_extraction_keeps_its_finished_batches(model, folder):
    dataset = open_dataset(folder)
    cancel = CancelToken()

    def cancel_after_first_batch(progress: Progress) -> None:
        if progress.fraction > 0:
            cancel.cancel()

    counter = ForwardCounter(model)
    with pytest.raises(JobCancelled):
        drive(extract(model, dataset, "features.4", batch_size=2, cancel=cancel), on_progress=cancel_after_first_batch)
    assert counter.images == 2
    result, _ = run(model, dataset, batch_size=2)
    assert counter.images == len(PHOTOS) and result.computed == len(PHOTOS) - 2
    fresh, _ = run(model, dataset, store_root=folder.parent / "elsewhere")
    assert np.array_equal(result.vectors, fresh.vectors)


def test_a_failing_store_write_stops_the_run_and_keeps_the_batches_before_it(model, folder, monkeypatch):
    """Appends run on a writer thread: a failure there must still reach the caller."""
    from engine.data.feature_store import FeatureStore

    dataset = open_dataset(folder)
    real_append = FeatureStore.append
    appended = []

    def append(store, items, vectors):
        appended.append(len(items))
        if len(appended) == 2:
            raise OSError(28, "No space left on device")
        return real_append(store, items, vectors)

    monkeypatch.setattr(FeatureStore, "append", append)
    with pytest.raises(OSError, match="No space left"):
        run(model, dataset, batch_size=3)
    monkeypatch.setattr(FeatureStore, "append", real_append)
    counter = ForwardCounter(model)
    result, _ = run(model, dataset, batch_size=3)
    assert result.computed == counter.images == len(PHOTOS) - 3  # only the first batch had landed


def test_cancel_interrupts_a_running_batch_and_keeps_the_finished_ones(model, folder):
    dataset = open_dataset(folder)
    cancel = CancelToken()
    entered = []

    def cancel_in_second_batch(_module, _inputs):
        entered.append(1)
        if len(entered) == 2:
            cancel.cancel()  # the user presses Cancel while batch 2 is half way through the model

    reached_layer = []
    network = model.state.fast_copy(torch.zeros(1, 3, SIZE, SIZE), layer="features.4")  # what extraction runs
    network.features[2].register_forward_pre_hook(cancel_in_second_batch)
    network.features[4].register_forward_hook(lambda *_: reached_layer.append(1))
    with pytest.raises(JobCancelled):
        drive(extract(model, dataset, "features.4", batch_size=3, cancel=cancel))
    assert len(reached_layer) == 1  # batch 2 stopped before reaching the layer
    counter = ForwardCounter(model)
    result, _ = run(model, dataset, batch_size=3)
    assert result.computed == counter.images == len(PHOTOS) - 3


def test_channel_max_agrees_with_a_direct_computation(model, folder):
    dataset = open_dataset(folder)
    result, _ = run(model, dataset, kind="channel-max", batch_size=4)
    maxima = result.channel_maxima()
    assert maxima.values.shape == (len(PHOTOS), 16) and maxima.map_size == (8, 8)
    for n, path in enumerate(result.paths):
        layer = direct_features(model, path, model.module.features)[0].numpy()  # 16 x 8 x 8
        flat = layer.reshape(16, -1)
        where = flat.argmax(axis=1)
        assert np.allclose(maxima.values[n], flat.max(axis=1), rtol=1e-5, atol=1e-6)
        assert maxima.y[n].tolist() == (where // 8).tolist() and maxima.x[n].tolist() == (where % 8).tolist()
        assert np.array_equal(layer[np.arange(16), maxima.y[n], maxima.x[n]], flat.max(axis=1))
    some = result.channel_maxima([5, 2])
    assert np.array_equal(some.values, maxima.values[:, [5, 2]]) and np.array_equal(some.x, maxima.x[:, [5, 2]])
    assert np.array_equal(some.y, maxima.y[:, [5, 2]]) and some.map_size == (8, 8)
    with pytest.raises(MethodInputError):
        result.channel_maxima([16])
    # a separate store from the pooled features, also cached
    counter = ForwardCounter(model)
    run(model, dataset, kind="channel-max")
    assert counter.calls == 0
    run(model, dataset, kind="avgpool")
    assert counter.images == len(PHOTOS)


def test_nearest_finds_the_image_itself(model, folder):
    from engine.data.images import load_image

    Image.fromarray(data.astronaut()).save(folder / "space" / "big.png")  # 512 px: scaled down on loading
    dataset = open_dataset(folder)
    result, _ = run(model, dataset)
    for name in ("astronaut.png", "big.png"):
        where = [Path(p).name for p in result.paths].index(name)
        query = image_vector(model, load_image(result.paths[where]), "features.4")
        assert np.array_equal(query, result.matrix()[where])  # prepared exactly like a dataset image
        assert np.array_equal(image_vector(model, result.paths[where], "features.4"), query)
        positions, distances = result.nearest(query, k=3, metric="cosine")
        assert positions[0] == where and distances[0] < 1e-6 and len(positions) == 3
        assert result.labels[positions[0]] == "space"
    result.close()


def test_new_weights_mean_new_features(model, folder):
    dataset = open_dataset(folder)
    first, _ = run(model, dataset)
    with torch.no_grad():
        model.module.features[3].weight.mul_(-1)  # e.g. the sanity check randomising a layer
    second, _ = run(model, dataset)
    assert second.computed == len(PHOTOS) and not np.array_equal(first.vectors, second.vectors)


def test_bad_requests_are_refused_before_any_work(model, folder):
    dataset = open_dataset(folder)
    with pytest.raises(MethodInputError, match="no layer"):
        run(model, dataset, layer="features.99")
    with pytest.raises(MethodInputError, match="kind"):
        run(model, dataset, kind="median")
    with pytest.raises(MethodInputError, match="C x H x W"):
        run(model, dataset, layer="classifier", kind="channel-max")
