"""Embeddings of a million points: PCA and t-SNE over a memory-mapped file of 1,280-d
float16 features (as the feature store holds them), and the window's scatter of them.

Each measure runs in a process of its own, so its peak memory is its own: the high-water
mark of its resident set (``VmHWM``; ``ru_maxrss`` would also count the parent's memory at
the fork). The mapped feature file's pages that were read count in it, as they do for
the feature store's. The features are 20 clusters, as a labelled dataset's
penultimate layer gives (``bench.embed_speed.clustered_features``), written a block at a
time. t-SNE is fitted on ``TSNE_FIT_POINTS`` (at most half the points) and the rest are
placed into the map; the row says how many of the placed points have all ten nearest
fitted points in the map from their own cluster.

``SCALE_EMBED_POINTS`` sets the number of points (default 1,000,000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Row

DIMENSIONS = 1280
CLUSTERS = 20


def rows() -> list[Row]:
    count = int(os.environ.get("SCALE_EMBED_POINTS", 1_000_000))
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        features = Path(folder) / "features.f16"
        started = time.perf_counter()
        write_features(features, count)
        written = time.perf_counter() - started
        for what in ("pca", "tsne", "scatter"):
            completed = subprocess.run([sys.executable, "-m", "bench._scale_embedding", what, str(features), str(count)],
                                       capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=7200,
                                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
            if completed.returncode != 0:
                return [Row(f"embedding of {count:,} points: {what}", 0.0, "s",
                            note=f"failed: {completed.stderr.strip().splitlines()[-1]}")]
            found[what] = json.loads(completed.stdout.strip().splitlines()[-1])
    size = f"{count:,} x {DIMENSIONS:,} float16"
    pca, tsne, scatter = found["pca"], found["tsne"], found["scatter"]
    return [
        Row(f"PCA to 2-D, {size}", pca["seconds"], "s",
            note=f"one pass for the covariance, one to project; peak {pca['peak_mb']:.0f} MB (features written in "
                 f"{written:.0f} s)"),
        Row(f"t-SNE, {size}", tsne["seconds"], "s",
            note=f"PCA to 50 {tsne['pca_s']:.0f} s, fit on {tsne['fitted']:,} {tsne['fit_s']:.0f} s, "
                 f"{tsne['placed']:,} placed {tsne['place_s']:.0f} s; {tsne['agreement']:.1%} of placed points among "
                 f"their own cluster; peak {tsne['peak_mb']:.0f} MB"),
        Row(f"scatter of {count:,} points: show", scatter["show_s"], "s",
            note=f"{scatter['shown']:,} points drawn" + (" over the density, a KD-tree over all" if scatter["shown"] < count
                                                           else "") + f"; peak {scatter['peak_mb']:.0f} MB"),
        Row(f"scatter of {count:,} points: redraw", scatter["redraw_s"], "s",
            note=f"a paint of the whole view {scatter['paint_s'] * 1000:.0f} ms; after a zoom, re-picking the "
                 f"points and density {scatter['zoom_s'] * 1000:.0f} ms"),
    ]


def write_features(path: Path, count: int, block: int = 50_000, seed: int = 0) -> None:
    """``count`` clustered rows (``clustered_features``' distribution) into a float16 file."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    out = np.memmap(path, dtype=np.float16, mode="w+", shape=(count, DIMENSIONS))
    for start in range(0, count, block):
        members = cluster_of(np.arange(start, min(start + block, count)))
        noise = rng.standard_normal(size=(len(members), DIMENSIONS), dtype=np.float32) * 0.6
        out[start:start + len(members)] = np.maximum(centres[members] + noise, 0)
    out.flush()
    del out


def cluster_of(rows: np.ndarray) -> np.ndarray:
    return rows % CLUSTERS


def finish(job):
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


def peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(what: str, path: str, count: int) -> dict:
    features = np.memmap(path, dtype=np.float16, mode="r", shape=(count, DIMENSIONS))
    if what == "pca":
        from engine.data.embedding import Rows, pca_2d_large

        started = time.perf_counter()
        finish(pca_2d_large(Rows.of_array(features)))
        found = {"seconds": time.perf_counter() - started}
    elif what == "tsne":
        found = measure_tsne(features)
    else:
        found = measure_scatter(features)
    return {**found, "peak_mb": peak_mb()}


def measure_tsne(features: np.ndarray) -> dict:
    from scipy.spatial import cKDTree

    from engine.data import embedding

    rows = embedding.Rows.of_array(features)
    fit_points = min(embedding.TSNE_FIT_POINTS, len(features) // 2)
    marks, fitted = {}, None
    started = time.perf_counter()
    job = embedding.tsne_2d_large(rows, fit_points=fit_points)
    try:
        while True:
            step = next(job)
            phase = "place" if step.message.startswith("placing") else "fit" if step.message.startswith("t-SNE") else "pca"
            marks.setdefault(phase, time.perf_counter())
            if step.positions is not None:
                fitted = step.positions
    except StopIteration as stop:
        layout = stop.value
    finished = time.perf_counter()
    placed = np.setdiff1d(np.arange(len(features)), fitted)
    sample = np.random.default_rng(1).choice(placed, min(20_000, len(placed)), replace=False)
    _, nearest = cKDTree(layout[fitted]).query(layout[sample], k=10)
    agreement = float((cluster_of(fitted)[nearest] == cluster_of(sample)[:, None]).all(axis=1).mean())
    return {"seconds": finished - started, "pca_s": marks["fit"] - started, "fit_s": marks["place"] - marks["fit"],
            "place_s": finished - marks["place"], "fitted": len(fitted), "placed": len(placed), "agreement": agreement}


def measure_scatter(features: np.ndarray) -> dict:
    from PySide6.QtWidgets import QApplication

    from bench.common import median_time
    from engine.view.display import Scatter
    from gui.scatter import ScatterView

    application = QApplication.instance() or QApplication([])
    count = len(features)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, 2)) * 20
    xy = (centres[cluster_of(np.arange(count))] + rng.normal(size=(count, 2))).astype(np.float32)
    scatter = Scatter(xy, [f"/images/{i:07d}.jpg" for i in range(count)], [str(c) for c in cluster_of(np.arange(count))],
                      "bench")
    view = ScatterView()
    view.resize(1000, 700)
    view.show()
    application.processEvents()
    started = time.perf_counter()
    view.show_points(scatter)
    application.processEvents()
    shown = time.perf_counter() - started
    paint = median_time(lambda: view.plot.grab(), repeats=5)
    box = view.plot.getPlotItem().getViewBox()

    def zoom():
        box.scaleBy((0.5, 0.5))
        view._draw_visible()
        box.scaleBy((2.0, 2.0))
        view._draw_visible()

    zoomed = median_time(zoom, repeats=5) / 2

    def redraw():
        zoom()
        view.plot.grab()

    return {"show_s": shown, "paint_s": paint, "zoom_s": zoomed, "redraw_s": median_time(redraw, repeats=5) / 2,
            "shown": len(view.shown)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
