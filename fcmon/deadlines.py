"""One thread that fires callbacks at monotonic instants.

A probe must be cut at its deadline even while a server drips bytes into
it. A `threading.Timer` per probe would start and stop a thread for every
probe; this shares one thread among all probes of the process.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, List, Optional, Tuple

log = logging.getLogger(__name__)


class Handle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class DeadlineWatcher:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, Handle, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def at(self, when: float, callback: Callable[[], None]) -> Handle:
        """Run `callback` (in the watcher thread) at monotonic time `when`, unless cancelled."""
        handle = Handle()
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), handle, callback))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fcmon-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def cancel(self, handle: Handle) -> None:
        # Lazy removal: the entry is dropped when it reaches the top.
        handle.cancelled = True

    def pending(self) -> int:
        with self._cond:
            return sum(1 for _, _, h, _ in self._heap if not h.cancelled)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        _, _, handle, callback = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            if handle.cancelled:
                continue
            try:
                callback()
            except Exception:  # never let one callback stop every deadline
                log.exception("deadline callback failed")
