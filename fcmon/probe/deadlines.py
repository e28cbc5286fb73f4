"""One thread that fires callbacks at monotonic instants.

A probe must be cut at its deadline even while a server drips bytes into
it. A `threading.Timer` per probe would start and stop a thread for every
probe; this shares one thread among all probes of the process.

Almost every deadline is cancelled long before it is due (the probe ended
in time), so the thread is woken as little as possible:

- a new deadline wakes it only when it is due before the instant the
  thread already sleeps until;
- cancelling never wakes it (a cancelled deadline at the front of the queue
  is dropped at once);
- cancelling is synchronous: once `cancel()` returns, the callback has
  either finished or will never run. A probe that ends exactly at its
  deadline would otherwise see its callback, already taken off the queue,
  cut the connection that then carries deleteSession (a leak counted for
  a probe that was in time);
- with nothing due, the thread naps for IDLE_NAP before it waits for good,
  so that while probes keep coming their deadlines (due `timeout` later)
  find it asleep until an earlier instant and need no wake-up.

With probes running back to back the thread wakes about once per IDLE_NAP,
not once per deadline set and again once per deadline cancelled.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from typing import Callable, List, Optional, Tuple

log = logging.getLogger(__name__)

IDLE_NAP = 1.0


class Handle:
    __slots__ = ("cancelled", "fired")

    def __init__(self) -> None:
        self.cancelled = False
        self.fired = False


class DeadlineWatcher:
    def __init__(self, clock: Callable[[], float] = time.monotonic, idle_nap: float = IDLE_NAP):
        self._clock = clock
        self._idle_nap = idle_nap
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, Handle, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._added = 0
        self._thread: Optional[threading.Thread] = None
        # While the thread waits: the instant it wakes by itself (math.inf:
        # never). None while it is not waiting (it looks at the queue before
        # it waits again).
        self._wake_at: Optional[float] = None
        # The deadline taken off the queue whose callback may be running;
        # cancel() of it waits until the callback is over.
        self._running: Optional[Handle] = None
        self.wakeups = 0  # for tests that guard the mechanism

    def at(self, when: float, callback: Callable[[], None]) -> Handle:
        """Run `callback` (in the watcher thread) at monotonic time `when`, unless cancelled."""
        handle = Handle()
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), handle, callback))
            self._added += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fcmon-deadlines", daemon=True)
                self._thread.start()
            elif self._wake_at is not None and when < self._wake_at:
                self._cond.notify()
        return handle

    def cancel(self, handle: Handle) -> bool:
        """Drop a deadline; never wakes the thread.

        Returns once the callback can no longer run: if the thread has
        already taken it off the queue, waits for it to finish (or to see
        the cancel first). True if the callback ran, False if it never will.
        """
        with self._cond:
            handle.cancelled = True
            heap = self._heap
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            if self._running is handle and threading.current_thread() is not self._thread:
                while self._running is handle:
                    self._cond.wait()
            return handle.fired

    def pending(self) -> int:
        with self._cond:
            return sum(1 for _, _, h, _ in self._heap if not h.cancelled)

    def _run(self) -> None:
        heap = self._heap
        seen = -1
        while True:
            with self._cond:
                while True:
                    while heap and heap[0][2].cancelled:
                        heapq.heappop(heap)
                    now = self._clock()
                    if heap and heap[0][0] <= now:
                        _, _, handle, callback = heapq.heappop(heap)
                        self._running = handle
                        break
                    if heap:
                        wake_at = heap[0][0]
                    elif self._added != seen:
                        seen = self._added
                        wake_at = now + self._idle_nap
                    else:
                        wake_at = math.inf
                    self._wake_at = wake_at
                    self._cond.wait(None if wake_at == math.inf else wake_at - now)
                    self._wake_at = None
                    self.wakeups += 1
            try:
                with self._cond:
                    # Decided under the lock, so a cancel() either comes
                    # first (no call) or waits for the call to end.
                    run = not handle.cancelled
                    handle.fired = run
                if run:
                    callback()
            except Exception:  # never let one callback stop every deadline
                log.exception("deadline callback failed")
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
