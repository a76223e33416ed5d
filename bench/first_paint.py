"""Time from launching `python main.py` to the window's first paint (target: 1.5 s)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row

ROOT = Path(__file__).resolve().parents[1]


def first_paint_seconds() -> float:
    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "painted"
        env = dict(os.environ, CONVSCOPE_FIRST_PAINT_FILE=str(marker))
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
        start = time.time()
        subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(marker.read_text()) - start


def run(repeats: int = 5) -> list[Row]:
    first_paint_seconds()  # warm the file cache, as a second launch would be
    samples = [first_paint_seconds() for _ in range(repeats)]
    return [Row("time to first paint", statistics.median(samples), "s", "< 1.5 s",
                note=f"median of {repeats}, {os.environ.get('QT_QPA_PLATFORM', 'offscreen')}")]
