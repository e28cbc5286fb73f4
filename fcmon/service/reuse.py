"""/probe's results, served again for a short window.

Single flight (flight.py) stops concurrent /probe calls from opening a
session each, but back-to-back calls on one connection each started a
probe when the previous had ended: 1,000 FairCom logins in 9.1 s. Here the
result of the last /probe of a target is kept for `window` seconds after
it ended, and served again (with its age) to /probe calls for the same
target: whatever the callers do, fcmon logs in to a server through /probe
at most about once per window.

`debug=true` asks for a fresh probe (the operator wants to see what
happens now): one at a time per target (a second one meanwhile is Busy),
and at most one per window per target (within it, the latest result is
served, with its age).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Set

from ..config import TargetConfig
from ..probe.result import ProbeResult


@dataclass(frozen=True)
class Kept:
    target: TargetConfig
    result: ProbeResult
    ended: float  # monotonic clock

    def age(self, now: float) -> float:
        return max(0.0, now - self.ended)


class RecentResults:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: Dict[str, Kept] = {}
        self._forced: Dict[str, float] = {}  # target -> when its last forced probe started
        self._forcing: Set[str] = set()

    def now(self) -> float:
        return self._clock()

    def get(self, target: TargetConfig) -> Optional[Kept]:
        """The kept result of this target (same config) if within the window."""
        with self._lock:
            kept = self._kept.get(target.name)
            if kept is None or kept.target != target or kept.age(self._clock()) >= self.window:
                return None
            return kept

    def put(self, target: TargetConfig, result: ProbeResult) -> Kept:
        kept = Kept(target, result, self._clock())
        if self.window > 0:
            with self._lock:
                self._kept[target.name] = kept
        return kept

    def start_forced(self, name: str) -> Optional[bool]:
        """For debug=true: True if a fresh probe may start now (then call
        `end_forced`), False if one started within the window (serve the
        kept result), None if one is running now."""
        with self._lock:
            if name in self._forcing:
                return None
            last = self._forced.get(name)
            now = self._clock()
            if last is not None and now - last < self.window and name in self._kept:
                return False
            self._forcing.add(name)
            self._forced[name] = now
            return True

    def end_forced(self, name: str) -> None:
        with self._lock:
            self._forcing.discard(name)

    def retain(self, names: Iterable[str]) -> None:
        """Forget targets no longer configured (a reload)."""
        keep = set(names)
        with self._lock:
            self._kept = {k: v for k, v in self._kept.items() if k in keep}
            self._forced = {k: v for k, v in self._forced.items() if k in keep}
