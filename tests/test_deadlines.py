"""The shared deadline thread: fires in order, honours cancel, survives errors."""

from __future__ import annotations

import threading
import time

from fcmon.probe.deadlines import DeadlineWatcher


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


def test_deadlines_due_later_and_cancels_do_not_wake_the_thread() -> None:
    """Probes set a deadline and almost always cancel it long before it is due:
    neither should wake the shared thread."""
    watcher = DeadlineWatcher(idle_nap=60)
    now = time.monotonic()
    first = watcher.at(now + 30, lambda: None)  # starts the thread, which sleeps until then
    time.sleep(0.2)
    woken = watcher.wakeups
    for i in range(300):
        handle = watcher.at(now + 31 + i * 0.001, lambda: None)
        watcher.cancel(handle)
    time.sleep(0.2)
    assert watcher.wakeups == woken
    assert watcher.pending() == 1
    # An earlier deadline still wakes it, and fires on time.
    done = threading.Event()
    watcher.at(time.monotonic() + 0.05, done.set)
    assert done.wait(5)
    watcher.cancel(first)
    assert watcher.pending() == 0


def test_cancel_drops_the_deadline_at_once() -> None:
    watcher = DeadlineWatcher()
    handles = [watcher.at(time.monotonic() + 60 + i, lambda: None) for i in range(10)]
    for h in handles:
        watcher.cancel(h)
    assert watcher._heap == []


def test_cancel_waits_for_a_callback_already_taken_off_the_queue() -> None:
    """The race a probe ending exactly at its deadline meets: the thread has
    taken the deadline off the queue and is in its callback (cutting the
    connection) when the probe cancels. cancel() must not return while the
    callback can still act, and must say that it ran."""
    watcher = DeadlineWatcher()
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def callback() -> None:
        entered.set()
        release.wait(10)
        finished.set()

    handle = watcher.at(time.monotonic(), callback)
    assert entered.wait(10)
    returned = threading.Event()
    outcome: list = []
    canceller = threading.Thread(target=lambda: (outcome.append(watcher.cancel(handle)), returned.set()))
    canceller.start()
    # While the callback runs, cancel() is held.
    assert not returned.wait(0.3)
    release.set()
    assert returned.wait(10)
    assert finished.is_set()
    assert outcome == [True]
    canceller.join()


def test_cancel_in_time_says_the_callback_never_runs() -> None:
    watcher = DeadlineWatcher()
    fired: list = []
    handle = watcher.at(time.monotonic() + 0.2, lambda: fired.append(1))
    assert watcher.cancel(handle) is False
    time.sleep(0.4)
    assert fired == []


def test_cancel_from_inside_its_own_callback_does_not_deadlock() -> None:
    watcher = DeadlineWatcher()
    done = threading.Event()
    box: list = []

    def callback() -> None:
        box.append(watcher.cancel(box[0]))
        done.set()

    box.append(watcher.at(time.monotonic() + 0.05, callback))
    assert done.wait(10)
    assert box[1] is True
