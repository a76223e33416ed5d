"""Maximally activating patches at scale: ranking from the kept top lists against a full scan.

Synthetic channel-max rows (C = 1280, the bundled model's last map) are appended to a
store a batch of 32 at a time, each batch folded into the running lists as extraction
folds it; then ``Extracted.top_channel_maxima`` for 8 channels x 8 images (patches'
defaults) is timed from the lists and from every stored row (what patches did before).
``CONVSCOPE_BENCH_PATCH_ROWS`` sets the number of rows (default 10,000: 154 MB of rows).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Row, median_time

CHANNELS = 1280
BATCH = 32
MAP_SIDE = 7


def rows() -> list[Row]:
    from engine.data.channel_topk import KEPT, ChannelTopK
    from engine.data.datasets import Dataset, DatasetItem
    from engine.data.extraction import Extracted
    from engine.data.feature_store import FeatureStore

    count = int(os.environ.get("CONVSCOPE_BENCH_PATCH_ROWS", "10000"))
    rng = np.random.default_rng(0)
    items = [DatasetItem(f"/synthetic/{index:07d}.png", None, 1, 1) for index in range(count)]
    with tempfile.TemporaryDirectory() as root:
        store = FeatureStore.open(root, {"kind": "channel-max", "bench": "patches"}, dtype=np.float32)
        top = ChannelTopK.open(store, "synthetic")
        top.follow(np.full(count, -1, np.int64))
        fold_s, stored = [], np.empty(count, np.int64)
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            block = np.concatenate([rng.gamma(2.0, 1.0, (n, CHANNELS)), rng.integers(0, MAP_SIDE, (n, 2 * CHANNELS)),
                                    np.full((n, 2), MAP_SIDE)], axis=1).astype(np.float32)
            stored[start:start + n] = store.append(items[start:start + n], block)
            began = time.perf_counter()
            top.fold(np.arange(start, start + n), stored[start:start + n])
            fold_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        top.save()
        save_s = time.perf_counter() - began
        dataset = Dataset(root=Path("/synthetic"), name="synthetic", items=items)
        extracted = Extracted(dataset=dataset, layer="bench", kind="channel-max", indices=np.arange(count), rows=stored,
                              store=store, channel_top=top)
        scanned = Extracted(dataset=dataset, layer="bench", kind="channel-max", indices=np.arange(count), rows=stored,
                            store=store)
        picked = list(range(8))
        assert np.array_equal(extracted.top_channel_maxima(picked, 8).order, scanned.top_channel_maxima(picked, 8).order)
        kept_s = median_time(lambda: extracted.top_channel_maxima(picked, 8), repeats=5)
        scan_s = median_time(lambda: scanned.top_channel_maxima(picked, 8), repeats=3)
        row_bytes = (3 * CHANNELS + 2) * 4 + 4  # a row and its norm
        file_bytes = top.path.stat().st_size
        store.close()
    note = f"{count:,} images, C = {CHANNELS}"
    return [
        Row("patches: rank 8 channels x 8 images from the kept lists", kept_s * 1e3, "ms", reference=scan_s * 1e3,
            note=f"{note}; reference: reading every stored row (warm page cache)"),
        Row("patches: fold one batch of 32 into the lists", float(np.median(fold_s[-max(1, len(fold_s) // 10):])) * 1e3,
            "ms", note=f"{note}; the last tenth of the batches (the fewer images beat a list, the fewer channels merge)"),
        Row("patches: save the lists (atomic, fsync)", save_s * 1e3, "ms",
            note=f"{file_bytes / 1e6:.1f} MB for {CHANNELS} channels x {KEPT} entries and a bit per row"),
        Row("patches: stored per image", row_bytes, "bytes",
            note=f"channel-max row + norm, unchanged; the lists add {file_bytes / count:.0f} bytes an image here, "
                 f"a fixed {CHANNELS * KEPT * 20 / 1e6:.1f} MB plus a bit per row at any size"),
    ]
