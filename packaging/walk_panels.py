"""Walk the window as a new user does: every method panel run with its defaults, one
screenshot each, for a person to look at; ``compare`` in the list runs Evaluate > Compare
methods on its defaults. Needs an X display (Xvfb) and ImageMagick.

    Xvfb :99 -screen 0 1600x1000x24 &
    DISPLAY=:99 .venv/bin/python packaging/walk_panels.py /tmp/walk [METHOD ...] [limit=120] \
        [model=timm:vit_tiny_patch16_224 weights=vit.pt]

``model`` (and its ``weights`` file) is opened as Model > ... or File > Open weights file
opens it, after the bundled model, before the first panel runs.

A run still going after ``limit`` seconds is photographed as it stands (its live frame and
loss plot), then cancelled. Prints one line per method: how it ended and in how long.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

WIDTH, HEIGHT = 1600, 1000


def main(folder: str, *methods: str, limit: str = "120", model: str = "", weights: str = "") -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication([])
    from gui.main_window import MainWindow

    window = MainWindow(settings=QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat))
    window.setGeometry(0, 0, WIDTH, HEIGHT)
    window.show()
    window.start_engine()
    from gui.wait import wait_until as wait

    def shoot(name: str) -> None:
        wait(lambda: False, 1.0)  # let the window paint
        subprocess.run(["import", "-window", "root", "-crop", f"{WIDTH}x{HEIGHT}+0+0", str(out / f"{name}.png")],
                       check=True)

    wait(lambda: window.image_info is not None, 300)
    if model:
        handle = window.load_model(model, weights_path=weights or None)
        wait(lambda: handle.done, 300)
        wait(lambda: window.image_info is not None, 60)
    shoot("00-start")
    for number, method in enumerate(methods or list(window.panels), start=1):
        if method == "compare":  # Evaluate > Compare methods, its defaults, Compare pressed
            window.open_compare_view()
            view = window.compare_view
            view.setGeometry(60, 30, WIDTH - 120, HEIGHT - 60)
            started = time.time()
            view.start()
            finished = wait(lambda: view.compare_button.isEnabled(), float(limit))
            shoot(f"{number:02d}-compare")
            if not finished:
                view.cancel()
                wait(lambda: view.compare_button.isEnabled(), 60)
            print(f"{'compare':24s} {'finished' if finished else 'cancelled':40s} {time.time() - started:7.1f} s  "
                  f"status: {view.status.text()[:160]!r}", flush=True)
            view.hide()
            continue
        panel = window.select_method(method)
        started = time.time()
        panel.request_run()
        finished = wait(lambda: not panel.running, float(limit))
        seconds = time.time() - started
        shoot(f"{number:02d}-{method}")
        if not finished:
            window.cancel_jobs()
            wait(lambda: not panel.running, 60)
        ended = "finished" if finished else f"still running after {limit} s, cancelled"
        print(f"{method:24s} {ended:40s} {seconds:7.1f} s  status: {panel.status.text()[:120]!r}", flush=True)
    window.close()


if __name__ == "__main__":
    positional = [a for a in sys.argv[1:] if "=" not in a]
    main(*positional, **dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a))
