"""The window under load: layer click to new grid on screen, and how long the UI thread can stall."""

from __future__ import annotations

import statistics
import time

from bench.common import Row


def run(clicks: int = 12) -> list[Row]:
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from gui.main_window import MainWindow
    from gui.wait import wait_until

    window = MainWindow(settings=QSettings("/tmp/convscope-bench.ini", QSettings.Format.IniFormat))
    window.show()
    window.start_engine()

    def spin_until(condition, timeout=120.0):
        if not wait_until(condition, timeout):
            raise TimeoutError("the window did not get there in time")

    spin_until(lambda: window.image_info is not None)
    window.select_method("activations")
    layers = ["stem.relu6", "stages.1.1.expand_relu6", "stages.3.2.expand_relu6", "stages.5.3.expand_relu6", "head.relu6"]
    latencies = []
    for index in range(clicks):
        shown = []
        window.canvas.display_changed.connect(lambda: shown.append(time.perf_counter()))
        start = time.perf_counter()
        window.layer_tree.select(layers[index % len(layers)])
        spin_until(lambda: bool(shown))
        window.canvas.display_changed.disconnect()
        latencies.append(shown[0] - start)

    # While a dream runs on the engine thread, a 10 ms timer on the UI thread keeps firing.
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    panel = window.select_method("dream")
    panel.set_value("steps", 15)
    panel.set_value("size", 224)
    before = window.canvas.frames_shown
    panel.request_run()
    spin_until(lambda: window.session.shown is not None and window.session.shown.method == "dream")
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    frames = window.canvas.frames_shown - before
    steps = window.session.shown.result.metrics["steps"]

    cancel_latencies = []
    for _ in range(3):
        panel.set_value("steps", 500)
        cancelled = []
        window.worker.job_cancelled.connect(lambda *_: cancelled.append(time.perf_counter()))
        first_frame = window.canvas.frames_shown
        panel.request_run()
        spin_until(lambda: window.canvas.frames_shown > first_frame + 1)
        start = time.perf_counter()
        window.cancel_jobs()
        spin_until(lambda: bool(cancelled))
        window.worker.job_cancelled.disconnect()
        cancel_latencies.append(cancelled[0] - start)
    scatter_ms, hover_ms = _scatter_speed(app)
    window.close()
    return [
        Row("scatter of 20,000 points: draw", scatter_ms, "ms", "smooth", note="set data + render one frame"),
        Row("scatter of 20,000 points: hover lookup", hover_ms, "ms", "< 16 ms", note="the point under the pointer, median"),
        Row("layer click to grid on screen (GUI)", statistics.median(latencies) * 1000, "ms", "< 150 ms", note=f"median of {clicks}"),
        Row("UI thread longest stall during dream", max(gaps) * 1000, "ms", "responsive",
            note=f"{frames} frames shown for {steps} steps"),
        Row("cancel to job stopped", statistics.median(cancel_latencies) * 1000, "ms", "< 500 ms", note="median of 3"),
    ]


def _scatter_speed(app, count: int = 20_000) -> tuple[float, float]:
    """Median times to show 20,000 points (data + one rendered frame) and to find a hovered one."""
    import numpy as np
    from PySide6.QtCore import QPointF

    from engine.view.display import Scatter
    from gui.scatter import ScatterView

    rng = np.random.default_rng(0)
    points = Scatter(xy=rng.normal(size=(count, 2)).astype(np.float32), paths=[f"{i}.png" for i in range(count)],
                    groups=[str(g) for g in rng.integers(0, 10, count)])
    view = ScatterView()
    view.resize(900, 700)
    view.show()
    draws, hovers = [], []
    for _ in range(5):
        start = time.perf_counter()
        view.show_points(points)
        view.plot.grab()  # renders the scene once, as a repaint would
        draws.append(time.perf_counter() - start)
    for x, y in rng.normal(size=(20, 2)):
        start = time.perf_counter()
        view.scatter.pointsAt(QPointF(float(x), float(y)))
        hovers.append(time.perf_counter() - start)
    view.close()
    return statistics.median(draws) * 1000, statistics.median(hovers) * 1000
