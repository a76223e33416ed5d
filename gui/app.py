"""Starting the window: Qt first, on screen at once; the engine loads behind it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication

# Where the first paint is reported, for the start-up benchmark (bench/first_paint.py).
FIRST_PAINT_ENV = "CONVSCOPE_FIRST_PAINT_FILE"


class _FirstPaintProbe(QObject):
    """Writes the wall-clock time of the window's first paint, then quits."""

    def __init__(self, path: str, app: QApplication) -> None:
        super().__init__()
        self.path = path
        self.app = app
        self.done = False

    def eventFilter(self, watched, event) -> bool:
        if not self.done and event.type() == QEvent.Type.Paint:
            self.done = True
            with open(self.path, "w") as handle:
                handle.write(repr(time.time()))
            QTimer.singleShot(0, self.app.quit)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convscope", description="Open the ConvScope window.")
    parser.add_argument("image", nargs="?", help="an image to open")
    parser.add_argument("--model", default=None, help="model to load instead of the bundled one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ConvScope")
    app.setOrganizationName("ConvScope")
    from pyqtgraph.util.garbage_collector import GarbageCollector

    from gui.main_window import MainWindow

    window = MainWindow(image_path=args.image, model_name=args.model)
    # Python's cycle collector runs in whichever thread happens to allocate: on the engine
    # thread it would destroy Qt objects left in cycles (a closed dialog and the lambdas
    # wired to it), which Qt aborts on. pyqtgraph's collector turns automatic collection
    # off and collects on a timer, on this thread.
    collector = GarbageCollector(interval=1.0)  # noqa: F841 - kept alive for the event loop
    probe_path = os.environ.get(FIRST_PAINT_ENV)
    if probe_path:
        probe = _FirstPaintProbe(probe_path, app)
        window.installEventFilter(probe)
        window.show()
        return app.exec()
    window.show()
    # Torch is imported on the engine thread once the event loop has painted the window.
    QTimer.singleShot(0, window.start_engine)
    return app.exec()
