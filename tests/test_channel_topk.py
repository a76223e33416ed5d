"""Each channel's running top list ranks exactly as a full scan of the stored rows does,
through batches, cancels, crashes, changed files and datasets that share a store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, drive
from engine.data import channel_topk
from engine.data.channel_topk import ChannelTopK, rank_keys
from engine.data.datasets import open_dataset
from engine.data.extraction import Extracted, extract, feature_key
from engine.data.feature_store import FeatureStore
from engine.methods import METHODS, MethodContext

LAYER = "stem.relu6"  # the bundled model's first map: 32 channels, ReLU6, so many maxima tie at 6
CHANNELS = np.arange(32)


@pytest.fixture(autouse=True)
def small_lists(tmp_path, monkeypatch):
    """Lists of 4 + 2 entries, so that 48 images overflow them, drops use the margin up and
    a rebuild is reachable; every land saves, so a crash point is one batch."""
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(channel_topk, "KEEP", 4)
    monkeypatch.setattr(channel_topk, "MARGIN", 2)
    monkeypatch.setattr(channel_topk, "KEPT", 6)
    monkeypatch.setattr(channel_topk, "SAVE_EVERY_S", 0.0)


def write_picture(path, seed: int, brightness: float = 1.0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3)) * brightness
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """48 tiny random pictures, in two subfolders; every fourth repeats an earlier one, so
    equal maxima (ties broken by the listing's order) reach the top of every channel."""
    root = tmp_path / "pictures"
    for index in range(48):
        write_picture(root / ("a" if index < 24 else "b") / f"{index:02d}.png", seed=index - 1 if index % 4 == 3 else index)
    return root


def run(model, root, **options) -> Extracted:
    return drive(extract(model, open_dataset(root), LAYER, kind="channel-max", **options))


def assert_ranks_as_full_scan(result: Extracted, top: int = 4) -> None:
    """The kept lists answer (no fallback) and equal the full scan: same images, order, values, places."""
    kept = result.channel_top.ranking(CHANNELS, top, result.indices, result.rows)
    assert kept is not None
    maxima = result.channel_maxima(CHANNELS)
    order = np.argsort(-maxima.values, axis=0, kind="stable")[:top].T
    assert np.array_equal(kept[0], order)
    assert np.array_equal(kept[1], np.take_along_axis(maxima.values.T, order, axis=1))
    assert np.array_equal(kept[2], np.take_along_axis(maxima.y.T, order, axis=1))
    assert np.array_equal(kept[3], np.take_along_axis(maxima.x.T, order, axis=1))
    assert result.channel_top.map_size == maxima.map_size
    # every entry a list holds, past the ones asked for, is the exact top of the dataset
    full = np.argsort(-maxima.values, axis=0, kind="stable").T
    lists = result.channel_top
    for channel in CHANNELS:
        count = lists.count[channel]
        assert count >= top and np.array_equal(lists.rows[channel, :count], result.rows[full[channel, :count]])


def on_disk(model, root) -> tuple[int, int]:
    """(rows committed to the store, rows the saved lists have folded) for dataset ``root``."""
    dataset = open_dataset(root)
    with FeatureStore.open(None, feature_key(model, LAYER, "channel-max"), dtype=np.float32) as store:
        return len(store), int(ChannelTopK.open(store, dataset.identity).folded.sum())


def test_keys_order_as_the_negated_stable_sort():
    values = np.array([1.5, -0.0, 0.0, np.nan, 6.0, -np.inf, 6.0, np.inf, -2.0, np.nan, 1.5, -1e-30], np.float32)
    positions = np.arange(len(values))
    assert np.array_equal(np.argsort(rank_keys(values, positions)), np.argsort(-values, kind="stable"))


def test_batched_extraction_ranks_as_the_full_scan(bundled, folder):
    result = run(bundled, folder, batch_size=5)
    maxima = result.channel_maxima(CHANNELS)
    top_values = -np.sort(-maxima.values, axis=0)[:5]
    assert np.any(top_values[:-1] == top_values[1:])  # ties inside the lists: their order is tested too
    assert result.channel_top.truncated.all() and result.channel_top.folded_from_store == 0
    assert_ranks_as_full_scan(result)
    picked = result.top_channel_maxima([7, 3], 4)  # what patches asks: the kept lists, some channels
    assert np.array_equal(picked.order, np.argsort(-maxima.values[:, [7, 3]], axis=0, kind="stable")[:4].T)
    again = run(bundled, folder)  # read back from its file: the same lists, nothing folded
    assert again.computed == 0 and again.channel_top.folded_from_store == 0
    assert_ranks_as_full_scan(again)


def test_cancel_then_resume(bundled, folder):
    cancel = CancelToken()
    batches = []

    def cancel_after_three(progress):
        if progress.fraction > 0:
            batches.append(progress)
            if len(batches) == 3:
                cancel.cancel()

    with pytest.raises(JobCancelled):
        drive(extract(bundled, open_dataset(folder), LAYER, kind="channel-max", batch_size=5, cancel=cancel),
              cancel_after_three)
    committed, folded = on_disk(bundled, folder)
    assert (committed, folded) == (15, 10)  # batch 3 landed as the run stopped, after the lists' last save
    resumed = run(bundled, folder, batch_size=5)
    assert resumed.computed == 48 - committed
    assert resumed.channel_top.folded_from_store == committed - folded  # only those, from the store
    assert_ranks_as_full_scan(resumed)


def test_crash_between_append_and_save(bundled, folder, monkeypatch):
    saves = []
    real_save = ChannelTopK.save

    def crash_on_third(self):
        saves.append(1)
        if len(saves) == 3:
            raise OSError("the process died here")
        real_save(self)

    monkeypatch.setattr(ChannelTopK, "save", crash_on_third)
    with pytest.raises(OSError, match="died"):
        run(bundled, folder, batch_size=5)
    committed, folded = on_disk(bundled, folder)
    assert (committed, folded) == (15, 10)  # batch 3 committed, its fold never saved
    monkeypatch.setattr(ChannelTopK, "save", real_save)
    resumed = run(bundled, folder, batch_size=5)
    assert resumed.computed == 48 - committed
    assert resumed.channel_top.folded_from_store == committed - folded
    assert_ranks_as_full_scan(resumed)


def leaders(result: Extracted, channel: int, top: int) -> list[str]:
    return [result.paths[i] for i in result.top_channel_maxima([channel], top).order[0]]


def test_a_changed_file_leaves_or_enters_the_lists(bundled, folder):
    first = run(bundled, folder, batch_size=8)
    values = -np.sort(-first.channel_maxima(CHANNELS).values, axis=0)
    channel = int(np.flatnonzero((values[0] > values[2]) & (values[3] > values[-1]))[0])
    ranked = leaders(first, channel, 48)
    leader, outsider, last = ranked[0], ranked[6], ranked[-1]
    shutil.copyfile(leader, outsider)  # ties with the old leader, which at most one other matches: the top two
    shutil.copyfile(last, leader)  # ties with the last: below the fourth
    changed = run(bundled, folder, batch_size=8)
    assert changed.computed == 2 and not changed.channel_top.rebuilt and changed.channel_top.folded_from_store == 0
    assert outsider in leaders(changed, channel, 2) and leader not in leaders(changed, channel, 4)
    assert_ranks_as_full_scan(changed)
    old_rows = set(first.rows) - set(changed.rows)
    assert len(old_rows) == 2 and not old_rows & set(changed.channel_top.rows.ravel())


def test_more_changes_than_the_margin_rebuild_from_the_store(bundled, folder):
    first = run(bundled, folder, batch_size=8)
    channel = 0
    for path in leaders(first, channel, 3):  # three of the 4 + 2 kept: fewer than 4 would remain
        write_picture(Path(path), seed=0, brightness=0)
    changed = run(bundled, folder, batch_size=8)
    assert changed.computed == 3 and changed.channel_top.rebuilt
    assert changed.channel_top.folded_from_store == 45  # every unchanged image, read once from the store
    assert_ranks_as_full_scan(changed)


def test_datasets_sharing_a_store_keep_their_own_lists(bundled, folder):
    part = run(bundled, folder / "a", batch_size=8)
    whole = run(bundled, folder, batch_size=8)
    assert part.store.folder == whole.store.folder
    assert whole.computed == 24 and whole.channel_top.folded_from_store == 24  # a/'s rows, stored by the first
    assert_ranks_as_full_scan(whole)
    part_again = run(bundled, folder / "a")
    assert part_again.channel_top.folded_from_store == 0 and len(part_again) == 24
    assert_ranks_as_full_scan(part_again)


def test_a_damaged_file_is_rebuilt_from_the_store(bundled, folder):
    first = run(bundled, folder, batch_size=8)
    first.channel_top.path.write_bytes(b"not an npz")
    again = run(bundled, folder)
    assert again.computed == 0 and again.channel_top.folded_from_store == 48
    assert_ranks_as_full_scan(again)


def test_patches_read_the_lists_and_show_the_same_patches(bundled, folder, monkeypatch):
    spec = METHODS["patches"]

    def patches():
        return drive(spec.start(MethodContext(model=bundled, image=None), dataset=str(folder), layer=LAYER,
                                channels="0-7", top=4)).metrics["patches"]

    with monkeypatch.context() as scanning:
        scanning.setattr(ChannelTopK, "ranking", lambda *args: None)  # the full scan, as patches ranked before
        scanned = patches()

    def no_scan(*args):
        raise AssertionError("patches read every stored row")

    monkeypatch.setattr(Extracted, "channel_maxima", no_scan)
    assert patches() == scanned
