"""The window's path against the command line's: the same method, image and parameters.

Window: the real ``MainWindow`` offscreen, the method's panel filled in, Run, timed until
the result is on the canvas (the job on the engine thread, its progress and frame signals,
the summary, the canvas drawing the result and the event loop painting it), the event loop
blocking between events as ``app.exec()`` does. Command line: the CLI's ``main`` in a
process of its own, as a user runs it, timed by its own ``seconds`` (the method driven to
its result; loading the model and the photo are not counted, and neither are they on the
window's side, where both are already loaded). Each CLI process runs the method twice and
reports the second (``_CLI_TWICE``), as the window's warm-up run does for the window, so
first-use costs (a layer's trace, a folded copy) count on neither side.

The CLI runs in another process, not in this one's main thread, because torch work on a
second thread of the window's process slows the engine thread: libgomp shortens the
spin-wait of every OpenMP team once their threads outnumber the cores, and the main
thread would bring a team of its own beside the engine thread's (measured: occlusion's
engine thread 6-7 s against 4.1-4.4 s on the main thread, the same speed once only one
thread runs torch). The window's main thread never runs torch, so in use the engine
thread's team is the only one.

The CLI is the reference column: a speed-up below 1 is the window being slower. Window and
CLI runs alternate, so a busy spell on this shared machine hits both alike; each figure is
the median of ``REPEATS``. Parameters are cheap versions of each method's defaults (the
note says which); every run checks that both sides recorded the same parameters.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Row

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
TIMEOUT_S = 900.0
# (row name, method id, values as the form and the flags take them, note)
CASES = (
    ("occlusion", "occlusion", {"window": 32, "stride": 16}, "window 32, stride 16: 261 forwards"),
    ("scorecam", "gradcam", {"variant": "scorecam", "layer": "middle"}, "Score-CAM at the middle layer"),
    ("sanity-check", "sanity-check", {"methods": "saliency,gradcam", "steps": 2}, "saliency and gradcam, 2 steps"),
    ("class-viz", "class-viz", {"steps": 64}, "its defaults: 64 steps"),
    ("dream", "dream", {"steps": 10}, "its defaults: 10 steps per octave, 3 octaves"),
    ("smoothgrad", "smoothgrad", {"samples": 10}, "10 samples"),
    ("integrated-gradients", "integrated-gradients", {"steps": 16}, "16 steps"),
    ("rise", "rise", {"masks": 250}, "250 masks (a quarter of its default)"),
)
ONLY = os.environ.get("BENCH_CASES")  # a comma-separated subset of the rows' names: one method's check


def _flags(values: dict) -> list[str]:
    return [part for name, value in values.items() for part in (f"--{name.replace('_', '-')}", str(value))]


ROOT = Path(__file__).resolve().parent.parent


# The command line's own entry point, run twice in one process: the first run pays the
# first-use costs (a layer's trace, a folded copy) that the window pays once per session
# and its warm-up pays here; the second is timed.
_CLI_TWICE = ("import sys; from engine.core.runtime import configure_process; configure_process(); "
              "from engine.app.cli import main; args = sys.argv[1:]; "
              "sys.exit(main(args) or main(args))")


def _cli_seconds(method_id: str, values: dict, image: str) -> tuple[float, dict]:
    done = subprocess.run([sys.executable, "-c", _CLI_TWICE, "run", method_id, "--image", image, *_flags(values)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the CLI failed on {method_id}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    line = json.loads(done.stdout.strip().splitlines()[-1])
    return float(line["seconds"]), line["params"]


def run() -> list[Row]:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from engine.data.samples import sample_path
    from engine.view.export import to_jsonable

    app = QApplication.instance() or QApplication([])
    from gui.main_window import MainWindow
    from gui.wait import wait_until

    window = MainWindow(settings=QSettings("/tmp/convscope-bench-window-vs-cli.ini", QSettings.Format.IniFormat))
    window.show()
    window.start_engine()

    def spin_until(condition, timeout=TIMEOUT_S):
        if not wait_until(condition, timeout):
            raise TimeoutError("the window did not get there in time")

    spin_until(lambda: window.image_info is not None)
    spin_until(lambda: not window.worker.is_busy())  # the machine's timing for the estimates, too
    image = str(sample_path("chelsea"))

    def window_seconds(method_id: str, values: dict) -> tuple[float, dict]:
        panel = window.select_method(method_id)
        for name, value in values.items():
            panel.set_value(name, value)
        spin_until(lambda: not window.worker.is_busy())
        done: list[float] = []
        start = time.perf_counter()
        handle = window.run_method(method_id, panel.values())

        def finished(_shown) -> None:
            app.processEvents()  # the canvas paints the result
            done.append(time.perf_counter())

        handle.finished.connect(finished)
        handle.failed.connect(lambda error: done.append(float("nan")))
        spin_until(lambda: bool(done))
        if done[0] != done[0]:
            raise RuntimeError(f"the window failed on {method_id}: {window.last_error}")
        return done[0] - start, to_jsonable(window.session.shown.provenance.params)

    rows = []
    for name, method_id, values, note in CASES:
        if ONLY and name not in ONLY.split(","):
            continue
        window_seconds(method_id, values)  # warm-up: first-use costs (a layer's trace, a fast copy) on neither side
        ours, reference, same = [], [], True
        for _ in range(REPEATS):
            seconds, window_params = window_seconds(method_id, values)
            ours.append(seconds)
            seconds, cli_params = _cli_seconds(method_id, values, image)
            reference.append(seconds)
            same = same and window_params == cli_params
        rows.append(Row(f"window vs CLI: {name}", statistics.median(ours), "s", "within 1.15x",
                        reference=statistics.median(reference),
                        note=note + ("" if same else "; PARAMETERS DIFFER") + f"; median of {REPEATS}"))
        # Each row as it is measured: a long run on a busy machine still leaves its figures.
        print(f"{rows[-1].name}: window {ours}, CLI {reference} s", file=sys.stderr, flush=True)
    window.close()
    return rows
