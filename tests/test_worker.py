"""Job handles on the engine thread: each job's own signals, in order, and its cancel.

The worker runs for real (its engine thread, its Session); the jobs here are small
generators and functions, so what is checked is the handle's contract, not a method.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import Frame, Progress
from engine.view.display import Picture
from gui.worker import EngineWorker, describe_failure

TIMEOUT = 30_000


@pytest.fixture
def worker(qtbot):
    worker = EngineWorker()
    with qtbot.waitSignal(worker.engine_ready, timeout=120_000):
        worker.start()
    yield worker
    worker.stop()


def frame(step: int) -> Frame:
    return Frame(Picture(rgb=np.full((4, 4, 3), step % 256, np.uint8)), step=step)


def record(handle) -> list[tuple]:
    """Every signal of ``handle``, in the order it came, with its arguments."""
    seen = []
    for name in ("started", "progress", "frame", "finished", "failed", "cancelled"):
        getattr(handle, name).connect(lambda *args, name=name: seen.append((name, *args)))
    return seen


def test_signals_come_in_order_and_the_result_last(qtbot, worker):
    shown = {1: threading.Event(), 2: threading.Event()}

    def job(session, handle):
        yield Progress(0.25, "a quarter")
        yield frame(1)
        shown[1].wait(5)  # the UI thread has taken frame 1 before frame 2 is made
        yield frame(2)
        shown[2].wait(5)  # taken before the progress, so the order is fixed
        yield Progress(1.0, "done")
        return "the result"

    handle = worker.submit(job, "ordered")
    seen = record(handle)
    handle.frame.connect(lambda shown_frame: shown[shown_frame.step].set())
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    assert [event[0] for event in seen] == ["started", "progress", "frame", "frame", "progress", "finished"]
    assert seen[1][1:] == (0.25, "a quarter") and [e[1].step for e in seen if e[0] == "frame"] == [1, 2]
    assert seen[-1] == ("finished", "the result") and handle.done and not worker.is_busy()


def test_a_plain_function_job_reports_progress_and_gets_the_session(qtbot, worker):
    def job(session, handle):
        handle.report(0.5, "half way")
        return type(session).__name__

    handle = worker.submit(job, "plain")
    seen = record(handle)
    with qtbot.waitSignal(worker.job_finished, timeout=TIMEOUT) as finished:
        pass
    assert seen == [("started",), ("progress", 0.5, "half way"), ("finished", "Session")]
    assert finished.args == [handle, "Session"]


def test_failed_carries_the_exception_itself(qtbot, worker):
    error = MethodInputError("the layer has no channel 9000")

    def job(session, handle):
        yield Progress(0.1)
        raise error

    handle = worker.submit(job, "failing")
    seen = record(handle)
    with qtbot.waitSignal(handle.failed, timeout=TIMEOUT) as failed:
        pass
    assert failed.args[0] is error  # the object: callers use isinstance, never a class name
    assert [event[0] for event in seen] == ["started", "progress", "failed"]
    assert describe_failure(error, "Saliency") == "the layer has no channel 9000"
    assert describe_failure(KeyError("x"), "Saliency") == "Saliency failed: KeyError: 'x'"
    assert describe_failure(MemoryError(), "Saliency").startswith("ran out of memory")


def test_a_cancelled_job_emits_cancelled_and_never_finished(qtbot, worker):
    def endless(session, handle):
        step = 0
        while True:
            step += 1
            yield frame(step)

    handle = worker.submit(endless, "endless")
    seen = record(handle)
    with qtbot.waitSignal(handle.frame, timeout=TIMEOUT):
        pass
    with qtbot.waitSignal(handle.cancelled, timeout=TIMEOUT):
        handle.cancel()
    qtbot.wait(50)
    names = [event[0] for event in seen]
    assert names[0] == "started" and names[-1] == "cancelled" and "finished" not in names
    assert handle.cancel_requested and not worker.is_busy()


def test_no_frame_reaches_the_window_after_cancel(qtbot, worker):
    release = threading.Event()

    def job(session, handle):
        yield frame(1)
        release.wait(5)
        yield frame(2)
        return "late"

    handle = worker.submit(job, "late frames")
    seen = record(handle)
    with qtbot.waitSignal(handle.frame, timeout=TIMEOUT):
        pass
    handle.cancel()
    release.set()
    with qtbot.waitSignal(handle.cancelled, timeout=TIMEOUT):
        pass
    assert [event[0] for event in seen] == ["started", "frame", "cancelled"]


def test_a_job_finished_on_the_engine_but_cancelled_before_delivery_delivers_no_result(qtbot, worker):
    """The engine may end a job in the moment the user cancels it: the window still gets
    ``cancelled``, never a result it no longer wants."""
    done = threading.Event()

    def job(session, handle):
        done.set()
        return "too late"

    handle = worker.submit(job, "racing")
    seen = record(handle)
    assert done.wait(10)
    time.sleep(0.1)  # the engine has ended it; the UI thread has not yet heard
    handle.cancel()
    with qtbot.waitSignal(handle.cancelled, timeout=TIMEOUT):
        pass
    assert [event[0] for event in seen] == ["cancelled"]  # not even "started": the UI heard of it after the cancel


def test_asking_again_supersedes_the_job_asked_before(qtbot, worker):
    gate = threading.Event()

    def slow(session, handle):
        while not gate.is_set():
            yield Progress(-1)
            time.sleep(0.01)
        return "old"

    first = worker.submit(slow, "first")
    first_seen = record(first)
    second = worker.submit(lambda session, handle: "new", "second", replaces=first)
    with qtbot.waitSignals([first.cancelled, second.finished], timeout=TIMEOUT, order="strict"):
        pass
    assert "finished" not in [event[0] for event in first_seen]
    gate.set()


def test_one_engine_thread_runs_one_job_at_a_time(qtbot, worker):
    threads, running, overlaps = set(), [0], []
    lock = threading.Lock()

    def job(session, handle):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return None

    handles = [worker.submit(job, f"job {i}") for i in range(5)]
    with qtbot.waitSignals([h.finished for h in handles], timeout=TIMEOUT):
        pass
    assert max(overlaps) == 1 and len(threads) == 1 and threading.get_ident() not in threads


def test_only_the_newest_frame_is_handed_over(qtbot, worker):
    """A canvas that falls behind gets the latest frame, never a backlog."""
    done = threading.Event()

    def burst(session, handle):
        for step in range(200):
            yield frame(step)
        done.set()
        return "burst"

    handle = worker.submit(burst, "a burst of frames")
    seen = record(handle)
    assert done.wait(TIMEOUT / 1000)  # the UI thread took no frame while all 200 were made
    time.sleep(0.1)
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    assert [(event[0], getattr(event[1], "step", None)) for event in seen if event[0] == "frame"] == [("frame", 199)]


def test_report_stops_a_cancelled_job(qtbot, worker):
    reached = []

    def download(session, handle):
        handle.cancel()  # as if the user pressed Cancel during the download
        try:
            handle.report(0.5, "half")
        except JobCancelled:
            reached.append("stopped")
            raise
        return "downloaded"

    handle = worker.submit(download, "download")
    with qtbot.waitSignal(handle.cancelled, timeout=TIMEOUT):
        pass
    assert reached == ["stopped"]


def test_frames_and_progress_reach_the_window_at_a_paced_rate_and_the_last_report_before_the_end(qtbot, worker):
    """A run that makes 100 frames and reports in a second costs the UI thread five
    frames and ten reports, not a hundred of each; the final report is still shown."""
    from gui import worker as worker_module

    def steady(session, handle):
        for step in range(100):
            yield frame(step)
            yield Progress(step / 100, f"step {step}")
            time.sleep(0.01)
        yield Progress(1.0, "all done")
        return "steady"

    handle = worker.submit(steady, "a steady stream")
    seen = record(handle)
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    frames = [event[1].step for event in seen if event[0] == "frame"]
    reports = [event[1:] for event in seen if event[0] == "progress"]
    seconds = 100 * 0.01
    assert 2 <= len(frames) <= seconds / worker_module.FRAME_INTERVAL_S + 2 and frames == sorted(frames)
    assert 3 <= len(reports) <= seconds / worker_module.PROGRESS_INTERVAL_S + 2
    assert reports[-1] == (1.0, "all done") and seen[-1] == ("finished", "steady")
    assert frames[-1] == 99  # the last frame too: its metrics end the loss plot's curves


def test_wait_until_blocks_on_the_event_loop_until_the_condition_holds_or_time_is_up(qtbot):
    from PySide6.QtCore import QTimer

    from gui.wait import wait_until

    flag = []
    QTimer.singleShot(100, lambda: flag.append(1))  # only an event loop running delivers it
    started = time.monotonic()
    assert wait_until(lambda: bool(flag), 5.0) and time.monotonic() - started < 2.0
    started = time.monotonic()
    assert not wait_until(lambda: False, 0.2) and 0.15 < time.monotonic() - started < 2.0
    # The loop sleeps between events: a second of waiting costs the UI thread little CPU.
    cpu = time.thread_time()
    wait_until(lambda: False, 1.0)
    assert time.thread_time() - cpu < 0.3
