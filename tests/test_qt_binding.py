"""Guards against a known-bad Qt binding: PySide6 6.12.0 leaks a None reference per
QApplication.processEvents() call, and Python 3.11 aborts once None's count reaches zero."""

import sys

from PySide6.QtWidgets import QApplication


def test_process_events_keeps_none_alive(qapp):
    before = sys.getrefcount(None)
    for _ in range(200):
        QApplication.processEvents()
    assert sys.getrefcount(None) >= before - 20
