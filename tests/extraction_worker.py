"""One process extracting a folder's features, for the tests of several processes at once.

    python -m tests.extraction_worker FOLDER STORE_ROOT SECONDS_PER_BATCH

Builds the tiny model, prints "ready", waits for a line on stdin (so several workers can
be started together), then extracts with batches of 4, each made to take at least
SECONDS_PER_BATCH. It prints "batch N" after each forward and "progress MESSAGE" for each
progress report, then one JSON line: the images it ran through the model ("forwarded"),
the rows it returns and their sum. SIGUSR1 presses Cancel.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from engine.core.runtime import configure_process

configure_process()

import torch  # noqa: E402

from engine.core.errors import JobCancelled  # noqa: E402
from engine.core.jobs import CancelToken, drive  # noqa: E402
from engine.data import extraction  # noqa: E402
from engine.data.datasets import open_dataset  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

BATCH = 4


def main(folder: str, store_root: str, seconds: float) -> None:
    torch.set_num_threads(1)
    model = make_tiny_model(size=16)
    dataset = open_dataset(folder)
    cancel = CancelToken()
    signal.signal(signal.SIGUSR1, lambda *_: cancel.cancel())
    forwarded = 0
    real_layer_rows = extraction.layer_rows

    def slow_layer_rows(model, layer, kind, x, cancel=None):
        nonlocal forwarded
        time.sleep(seconds)
        rows = real_layer_rows(model, layer, kind, x, cancel)
        forwarded += len(x)
        print(f"batch {forwarded}", flush=True)
        return rows

    extraction.layer_rows = slow_layer_rows
    print("ready", flush=True)
    sys.stdin.readline()
    job = extraction.extract(model, dataset, "features.4", batch_size=BATCH, cancel=cancel, store_root=store_root,
                             workers=1)
    try:
        result = drive(job, on_progress=lambda progress: print(f"progress {progress.message}", flush=True))
    except JobCancelled:
        print(json.dumps({"cancelled": True, "forwarded": forwarded}), flush=True)
        return
    print(json.dumps({"forwarded": forwarded, "computed": result.computed, "rows": len(result),
                      "sum": float(result.matrix().sum())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
