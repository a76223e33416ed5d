"""The FAISS neighbour index against the exact scan, at 10^5 and 10^6 vectors of 1,280 float16.

Per size, in processes of their own: one fills a real ``FeatureStore`` in a temporary
folder a chunk at a time (clustered vectors: a thousand non-negative centres, like
pooled ReLU features of a thousand classes; recall on uniform noise means nothing), and
another builds the IVF index the default plan picks past ``IVF_FROM`` and queries it, so
its peak memory (maximum resident set over what it held once the store was open) is the
build's and the queries', not the filling's. Query times are medians over ``QUERIES``
queries near stored rows but not among them, the exact scan's
(``engine.data.nearest.nearest``) over the same queries beside them as the reference;
recall@10 is measured against the scan's answers to those queries. Below 200,000 rows
the flat index (float16 codes) is timed as well: the measure that keeps it out of the
default plan.

``SCALE_INDEX_SIZES=20000,50000`` runs other sizes (a smoke run); the default is
``100000,1000000`` (the million needs 2.5 GB of disk for the store and 1.3 GB for the
index, and about five minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row

DIM = 1280
CENTRES = 1000
FILL_ROWS = 20_000  # rows generated and appended at a time: 100 MB of float32
QUERIES = 50
FLAT_UP_TO = 200_000
KEY = {"model": "bench", "layer": "clustered", "kind": "avgpool"}


def rows() -> list[Row]:
    sizes = [int(size) for size in os.environ.get("SCALE_INDEX_SIZES", "100000,1000000").split(",") if size.strip()]
    out: list[Row] = []
    for size in sizes:
        folder = Path(tempfile.mkdtemp(prefix="convscope-index-bench-"))
        try:
            filled = _in_subprocess("fill", size, folder)
            found = _in_subprocess("measure", size, folder)
        except RuntimeError as exc:
            out.append(Row(f"neighbour index, {size:,} x {DIM}", 0.0, "s", note=f"failed: {exc}"))
            continue
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        what = f"neighbour index, {size:,} x {DIM} float16"
        ivf = found["ivf"]
        saved = (found["scan_ms"] - ivf["query_ms"]) / 1000
        pays = f"pays for itself after {ivf['build_s'] / saved:.0f} queries" if saved > 0 else "never pays for itself"
        out.append(Row(f"{what}: IVF build", ivf["build_s"], "s",
                       note=f"{ivf['nlist']} clusters, nprobe {ivf['nprobe']} (tuned recall "
                            f"{ivf['tuned_recall']:.3f}); index {ivf['file_mb']:.0f} MB; peak memory +"
                            f"{found['peak_mb']:.0f} MB; store filled in {filled['fill_s']:.0f} s; {pays}"))
        out.append(Row(f"{what}: IVF query, k=10", ivf["query_ms"], "ms", reference=found["scan_ms"],
                       target="faster than the scan", note=f"median of {QUERIES}; reference: the exact scan; "
                                                           f"loading the saved index {ivf['load_ms']:.1f} ms"))
        out.append(Row(f"{what}: IVF recall@10 against the scan", ivf["recall"], "", target=">= 0.95",
                       higher_is_better=True, note=f"{QUERIES} unseen queries"))
        if "flat" in found:
            flat = found["flat"]
            out.append(Row(f"{what}: flat (fp16 codes) query, k=10", flat["query_ms"], "ms",
                           reference=found["scan_ms"], note=f"built in {flat['build_s']:.1f} s; recall@10 "
                                                            f"{flat['recall']:.3f}; reference: the exact scan"))
    return out


def _in_subprocess(step: str, size: int, folder: Path) -> dict:
    completed = subprocess.run([sys.executable, "-m", "bench._scale_index", step, str(size), str(folder)],
                               capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError((completed.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def fill(size: int, folder: Path) -> dict:
    """``size`` clustered rows into a new store in ``folder``, never more than a chunk in memory."""
    import numpy as np

    from engine.data.datasets import DatasetItem
    from engine.data.feature_store import FeatureStore

    rng = np.random.default_rng(0)
    centres = np.abs(rng.standard_normal((CENTRES, DIM), dtype=np.float32))
    started = time.perf_counter()
    with FeatureStore.open(folder, KEY, dim=DIM) as store:
        for first in range(0, size, FILL_ROWS):
            count = min(FILL_ROWS, size - first)
            chunk = centres[rng.integers(0, CENTRES, count)] + np.abs(rng.standard_normal((count, DIM),
                                                                                       dtype=np.float32))
            store.append([DatasetItem(f"/bench/{i:07d}.jpg", None, 1, i) for i in range(first, first + count)], chunk)
    return {"fill_s": time.perf_counter() - started}


def measure(size: int, folder: Path) -> dict:
    """Build and query the index over the store ``fill`` left in ``folder``, in this process."""
    import numpy as np

    from engine.core.jobs import drive
    from engine.data.feature_store import FeatureStore
    from engine.data.nearest import nearest
    from engine.data.vector_index import DEFAULT_PLAN, load_index, open_index

    store = FeatureStore.open(folder, KEY, dim=DIM)
    rows = np.arange(size)
    rng = np.random.default_rng(1)
    queries = (store.matrix(np.sort(rng.choice(size, QUERIES, replace=False)), dtype=np.float32)
               + 0.3 * np.abs(rng.standard_normal((QUERIES, DIM), dtype=np.float32)))

    def scan(query):
        return nearest(store.blocks(), query, 10, "l2", norms=store.norms(), subset=rows)[0]

    truth = [scan(query) for query in queries]  # also warms the page cache for the timed runs
    baseline_mb = _reset_peak()  # the store's pages the scan mapped in count as resident: not the index's
    found: dict = {}
    indexes = {}
    for kind in ["ivf"] + (["flat"] if size <= FLAT_UP_TO else []):
        started = time.perf_counter()
        drive(open_index(store, rows, "l2", kind=kind, plan=DEFAULT_PLAN))
        build_s = time.perf_counter() - started
        if kind == "ivf":
            found["peak_mb"] = _status_mb("VmHWM") - baseline_mb
        load_ms = _ms(lambda: load_index(store, rows, "l2", kind))
        indexes[kind] = index = load_index(store, rows, "l2", kind)  # as every later query meets it: memory-mapped
        answers = [index.search(query, 10)[0] for query in queries]
        found[kind] = {"build_s": build_s, "load_ms": load_ms, "file_mb": index.path.stat().st_size / 2**20,
                       "recall": float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(answers, truth)])),
                       "nlist": index.meta.get("nlist"), "nprobe": index.meta.get("nprobe"),
                       "tuned_recall": index.meta.get("tuned_recall_at_10")}
    # Interleaved, query by query, so that a busy spell of the machine slows every contender alike.
    times: dict[str, list[float]] = {"scan": [], **{kind: [] for kind in indexes}}
    for query in queries:
        times["scan"].append(_ms(lambda: scan(query)))
        for kind, index in indexes.items():
            times[kind].append(_ms(lambda: index.search(query, 10)))
    found["scan_ms"] = statistics.median(times["scan"])
    for kind in indexes:
        found[kind]["query_ms"] = statistics.median(times[kind])
    store.close()
    return found


def _ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _reset_peak() -> float:
    """Start the process's peak resident set afresh (Linux: clear_refs 5); the resident MB now."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    step, size, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    from engine.core.runtime import configure_process

    configure_process()
    print(json.dumps((fill if step == "fill" else measure)(size, folder)))
