"""The window says how long a run will take before it starts and while it runs, and quitting
during a run cancels it and joins the engine thread."""

from __future__ import annotations

import gc
import time

import pytest
from PySide6.QtCore import QSettings, QtMsgType, qInstallMessageHandler

from engine.core.eta import Eta
from engine.methods.cost import Machine

TIMEOUT = 120_000


def _machine(**changes) -> Machine:
    values = dict(input_size=(224, 337), model_size=224, forward_s=0.05, backward_s=0.15,
                  shapes={"head.relu6": (1, 1280, 7, 11)}, presets={"late": "head.relu6"}, blocks=10)
    values.update(changes)
    return Machine(**values)


def test_the_panel_says_how_long_a_long_run_takes_and_nothing_for_a_short_one(window, qtbot):
    panel = window.select_method("occlusion")
    # The window times this machine once the photo is open, and hands the panels the result.
    qtbot.waitUntil(lambda: panel.estimate.machine is not None, timeout=TIMEOUT)
    assert panel.estimate.machine.forward_s > 0 and panel.estimate.machine.backward_s > 0

    panel.estimate.set_machine(_machine())  # a known pace, so the words are known
    panel.set_value("window", 16)
    panel.set_value("stride", 8)  # 27 x 42 positions: 1,135 forwards at 50 ms
    panel.estimate.refresh()
    assert panel.estimate.isVisibleTo(panel)
    assert panel.estimate.text() == "about 55 s on this machine"  # 56.75 s, said to the nearest 5 s
    # a field that changes changes the line: a coarse grid is a short run, and gets no line
    panel.editors["stride"].setValue(16)
    panel.editors["window"].setValue(64)
    panel.editors["stride"].setValue(64)
    assert panel.estimate.seconds is not None and panel.estimate.seconds < 20
    assert panel.estimate.text() == "" and not panel.estimate.isVisibleTo(panel)

    scorecam = window.select_method("gradcam")
    scorecam.estimate.set_machine(_machine())
    assert not scorecam.estimate.isVisibleTo(scorecam)  # one backward pass
    scorecam.set_value("variant", "scorecam")  # 1,280 masked forwards
    assert scorecam.estimate.text() == "about 65 s on this machine"

    train = window.select_method("fast-style-train")
    train.estimate.set_machine(_machine())
    train.set_value("style", "style.png")
    for name, value in (("steps", 1000), ("batch", 4), ("size", 256)):
        train.set_value(name, value)
    # Johnson's 1,000 steps of 4 crops at 256 px: 6,945 passes at 150 ms
    assert train.estimate.text() == "about 17 min on this machine"


def test_the_status_bar_shows_the_time_left_from_the_recent_pace(window):
    status = window.status
    status.set_busy(True, "Occlusion…")
    start = time.perf_counter()
    status.eta = Eta(start=start - 30.0)  # the run began 30 s ago
    status.show_progress(0.5, "567 of 1134 positions")
    assert status.text.text() == "567 of 1134 positions · about 30 s left"
    # a short job says nothing about time
    status.set_busy(True, "Opening chelsea.png…")
    status.show_progress(0.5, "reading")
    assert status.text.text() == "reading"
    status.set_busy(False, "Ready")
    assert status.eta is None


def test_a_long_run_shows_its_time_left_while_it_runs(window, qtbot):
    panel = window.select_method("occlusion")
    panel.set_value("window", 16)
    panel.set_value("stride", 4)  # thousands of positions: long on any CPU
    handle = window.run_method("occlusion", panel.values())
    qtbot.waitUntil(lambda: " left" in window.status.text.text(), timeout=TIMEOUT)
    assert "positions" in window.status.text.text()
    with qtbot.waitSignal(handle.cancelled, timeout=TIMEOUT):
        handle.cancel()


@pytest.fixture
def qt_messages():
    messages: list[tuple[QtMsgType, str]] = []
    previous = qInstallMessageHandler(lambda kind, _context, text: messages.append((kind, text)))
    yield messages
    qInstallMessageHandler(previous)


def test_quitting_during_a_run_cancels_it_and_joins_the_engine_thread(qtbot, tmp_path, monkeypatch, qt_messages):
    from gui.main_window import MainWindow

    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    window = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    window.show()
    window.start_engine()
    qtbot.waitUntil(lambda: window.image_info is not None, timeout=TIMEOUT)
    steps = []

    def slow(session, job):
        # One step longer than any fixed wait would allow for (the old quit waited 5 s).
        for step in range(100):
            steps.append(step)
            deadline = time.perf_counter() + 6.0
            while time.perf_counter() < deadline:
                time.sleep(0.05)
            job.token.check()
            yield
        return "done"

    handle = window.worker.submit(slow, "A slow job")
    outcome = []
    handle.finished.connect(lambda value: outcome.append(value))
    qtbot.waitUntil(lambda: bool(steps), timeout=TIMEOUT)
    window.close()
    assert window.worker.isFinished()  # joined, not abandoned
    assert len(steps) == 1  # the job stopped at its first cancel check
    assert outcome == []  # and never finished
    worker = window.worker
    window.deleteLater()
    del window
    qtbot.wait(50)
    gc.collect()
    assert worker is not None
    assert not [text for _kind, text in qt_messages if "Destroyed while thread" in text]


def test_timing_the_machine_is_kept_off_the_every_job_signals(window, qtbot):
    # Observers of every job (tests, benchmarks) wait for the jobs they asked for; the
    # window's timing of the machine runs behind them unannounced.
    announced = []
    window.worker.job_finished.connect(lambda handle, _value: announced.append(handle))
    handle = window.worker.submit(lambda session, job: 7, "Timing this machine", background=True)
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT) as finished:
        pass
    assert finished.args == [7] and handle not in announced
    asked = window.worker.submit(lambda session, job: 8, "Asked for")
    qtbot.waitUntil(lambda: asked in announced, timeout=TIMEOUT)
