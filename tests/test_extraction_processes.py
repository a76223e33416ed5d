"""Several processes asked for the same features: one computes them, the others wait and reuse
them; when the one computing is killed or cancelled midway, another does the rest.

Each worker (``tests/extraction_worker.py``) is a real process extracting a folder of 48
small PNGs with the tiny model, a batch of 4 made to take 0.15 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, drive
from engine.data.datasets import open_dataset
from engine.data.extraction import extract, feature_key
from engine.data.feature_store import FeatureStore
from tests.conftest import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 48
SECONDS_PER_BATCH = "0.15"
pytestmark = pytest.mark.skipif(os.name != "posix", reason="processes coordinate through flock")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "pictures"
    root.mkdir()
    generator = np.random.default_rng(0)
    for index in range(IMAGES):
        Image.fromarray(generator.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"{index:02d}.png")
    return root


class Worker:
    def __init__(self, folder: Path, store: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.extraction_worker", str(folder), str(store), SECONDS_PER_BATCH],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.read_until(lambda line: line == "ready") == "ready"

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def read_until(self, wanted) -> str:
        for line in self.process.stdout:
            line = line.strip()
            self.lines.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"the worker ended without printing what was wanted: {self.lines[-5:]}")

    def result(self) -> dict:
        line = self.read_until(lambda line: line.startswith("{"))
        assert self.process.wait(timeout=120) == 0
        return json.loads(line)

    def waited(self) -> bool:
        return any("another ConvScope process is extracting these features" in line for line in self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdin.close()
        self.process.stdout.close()


def stored_rows(folder: Path, store: Path) -> tuple[int, int]:
    """(rows committed in all, files with a row) in the store the workers fill."""
    key = feature_key(make_tiny_model(size=16), "features.4", "avgpool")
    with FeatureStore.open(store, key, dtype=np.float16) as opened:
        return len(opened), int(np.count_nonzero(opened.lookup(open_dataset(folder).items) >= 0))


def test_three_processes_together_do_one_jobs_work(folder, tmp_path):
    store = tmp_path / "features"
    workers = [Worker(folder, store) for _ in range(3)]
    try:
        for worker in workers:
            worker.go()
        results = [worker.result() for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
    assert sum(result["forwarded"] for result in results) == IMAGES
    assert sorted(result["computed"] for result in results) == [0, 0, IMAGES]
    assert all(result["rows"] == IMAGES for result in results)
    assert len({result["sum"] for result in results}) == 1
    assert sum(worker.waited() for worker in workers) == 2
    assert stored_rows(folder, store) == (IMAGES, IMAGES)


def test_when_the_process_computing_is_killed_midway_the_one_waiting_does_the_rest(folder, tmp_path):
    store = tmp_path / "features"
    first, second = Worker(folder, store), Worker(folder, store)
    try:
        first.go()
        first.read_until(lambda line: line == "batch 16")
        second.go()
        second.read_until(lambda line: "another ConvScope process is extracting" in line)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        result = second.result()
    finally:
        first.stop()
        second.stop()
    committed_by_first = IMAGES - result["forwarded"]
    assert 12 <= committed_by_first < IMAGES  # at least the batches before the 4th were stored
    assert result["computed"] == result["forwarded"] and result["rows"] == IMAGES
    assert stored_rows(folder, store) == (IMAGES, IMAGES)  # no image stored twice


def test_when_the_process_computing_is_cancelled_the_one_waiting_does_the_rest(folder, tmp_path):
    store = tmp_path / "features"
    first, second = Worker(folder, store), Worker(folder, store)
    try:
        first.go()
        first.read_until(lambda line: line == "batch 8")
        second.go()
        second.read_until(lambda line: "another ConvScope process is extracting" in line)
        first.process.send_signal(signal.SIGUSR1)  # Cancel
        cancelled = first.result()
        result = second.result()
    finally:
        first.stop()
        second.stop()
    assert cancelled["cancelled"] and 8 <= cancelled["forwarded"] < IMAGES
    assert result["forwarded"] == IMAGES - cancelled["forwarded"]  # a cancel keeps every finished batch
    assert result["rows"] == IMAGES and stored_rows(folder, store) == (IMAGES, IMAGES)


def test_waiting_for_another_process_reports_progress_and_can_be_cancelled(folder, tmp_path):
    model = make_tiny_model(size=16)
    store_root = tmp_path / "features"
    with FeatureStore.open(store_root, feature_key(model, "features.4", "avgpool"), dtype=np.float16) as store:
        dataset = open_dataset(folder)
        held = store.fill_lock(dataset.identity)  # as another process would hold it
        assert held.acquire()
        cancel = CancelToken()
        messages = []

        def on_progress(progress):
            messages.append(progress.message)
            if len(messages) == 3:
                cancel.cancel()

        started = time.monotonic()
        try:
            with pytest.raises(JobCancelled):
                drive(extract(model, dataset, "features.4", cancel=cancel, store_root=store_root),
                      on_progress=on_progress)
        finally:
            held.release()
        assert time.monotonic() - started < 5
        assert messages == [f"another ConvScope process is extracting these features; waiting for it "
                            f"(0 of {IMAGES} images stored)"] * 3
        assert len(store) == 0
        result = drive(extract(model, dataset, "features.4", store_root=store_root))
        assert result.computed == IMAGES
