"""The shared deadline thread: fires in order, honours cancel, survives errors."""

from __future__ import annotations

import threading
import time

from fcmon.deadlines import DeadlineWatcher


def test_fires_in_order_and_cancel_holds() -> None:
    watcher = DeadlineWatcher()
    fired: list = []
    done = threading.Event()
    now = time.monotonic()
    watcher.at(now + 0.3, lambda: (fired.append("late"), done.set()))
    watcher.at(now + 0.1, lambda: fired.append("early"))
    cancelled = watcher.at(now + 0.2, lambda: fired.append("cancelled"))
    watcher.cancel(cancelled)
    assert done.wait(10)
    assert fired == ["early", "late"]
    assert watcher.pending() == 0


def test_a_failing_callback_does_not_stop_the_others() -> None:
    watcher = DeadlineWatcher()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    watcher.at(time.monotonic(), boom)
    watcher.at(time.monotonic() + 0.05, done.set)
    assert done.wait(10)


def test_one_thread_for_many_deadlines() -> None:
    watcher = DeadlineWatcher()
    before = threading.active_count()
    handles = [watcher.at(time.monotonic() + 60, lambda: None) for _ in range(500)]
    assert threading.active_count() <= before + 1
    for h in handles:
        watcher.cancel(h)
    assert watcher.pending() == 0
