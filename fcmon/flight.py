"""Who may start a probe: one per target, a few per FairCom host.

Every probe, whoever asks for it (the scheduler, `/probe`, `fcmon check`),
goes through one `Flights`:

- single flight: while a probe of a target runs, another request for that
  target waits for it and gets the same result instead of starting a second
  one. Without it, 80 concurrent `/probe?target=db` calls opened 80 sessions
  and locked the monitoring user out of FairCom (50 sessions per user);
- at most `per_host` probes in flight to one FairCom host (the endpoint's
  host name): FairCom accepts 25 connections per client IP by default, and
  the application sharing the server needs some of them. A probe that waits
  for a slot starts late, and the scheduler counts that in its lateness;
- optionally a pool of slots (`/probe`'s cap): a request that would start
  a new probe when none is free gets `Busy` at once, while joining a probe
  already in flight is always allowed (it costs FairCom nothing).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from .config import TargetConfig
from .result import ProbeResult


class Busy(Exception):
    """No slot free to start a new probe."""


class Slots:
    """A count of probes a caller may have started and not finished."""

    def __init__(self, limit: int):
        self._lock = threading.Lock()
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


class _Flight:
    __slots__ = ("target", "done", "result")

    def __init__(self, target: TargetConfig):
        self.target = target
        self.done = threading.Event()
        self.result: Optional[ProbeResult] = None


def host_of(target: TargetConfig) -> str:
    return (urlsplit(target.endpoint).hostname or target.endpoint).lower()


class Flights:
    def __init__(self, per_host: int = 8):
        self._cond = threading.Condition()
        self._per_host = per_host
        self._flights: Dict[str, _Flight] = {}
        self._hosts: Dict[str, int] = {}
        self.started = 0  # probes started, for tests

    def set_per_host(self, per_host: int) -> None:
        with self._cond:
            self._per_host = per_host
            self._cond.notify_all()

    def in_flight(self, host: Optional[str] = None) -> int:
        with self._cond:
            if host is None:
                return len(self._flights)
            return self._hosts.get(host, 0)

    def run(
        self,
        target: TargetConfig,
        probe: Callable[[TargetConfig], ProbeResult],
        on_start: Callable[[], None] = lambda: None,
        slots: Optional[Slots] = None,
        on_result: Optional[Callable[[ProbeResult], None]] = None,
    ) -> Tuple[ProbeResult, bool]:
        """The result of a probe of `target`, and whether this call ran it
        (False: it joined one already in flight). The caller that runs the
        probe calls its `on_result` (recording it) before the callers that
        joined are released, so they see it recorded.

        `on_start` is called when the probe starts (after any wait for a host
        slot) or when this call joins one in flight. Raises `Busy` when a new
        probe is needed and `slots` has none free.
        """
        host = host_of(target)
        joined = False
        with self._cond:
            while True:
                flight = self._flights.get(target.name)
                if flight is None:
                    break
                if flight.target == target:
                    self._cond.release()
                    try:
                        if not joined:
                            joined = True
                            on_start()
                        flight.done.wait()
                    finally:
                        self._cond.acquire()
                    if flight.result is not None:
                        return flight.result, False
                    continue  # the probe in flight died without a result: run one

                # The target was reconfigured: one at a time still, so wait
                # for the old probe, then run a new one.
                self._cond.wait()
            if slots is not None and not slots.take():
                raise Busy()
            flight = self._flights[target.name] = _Flight(target)
            try:
                while self._hosts.get(host, 0) >= self._per_host:
                    self._cond.wait()
            except BaseException:
                self._end(target.name, host, flight, slots, counted=False)
                raise
            self._hosts[host] = self._hosts.get(host, 0) + 1
            self.started += 1
        result: Optional[ProbeResult] = None
        try:
            if not joined:
                on_start()
            result = probe(target)
            if on_result is not None:
                on_result(result)
            return result, True
        finally:
            flight.result = result
            with self._cond:
                self._end(target.name, host, flight, slots, counted=True)

    def _end(self, name: str, host: str, flight: _Flight, slots: Optional[Slots], counted: bool) -> None:
        # under self._cond
        if counted:
            left = self._hosts[host] - 1
            if left:
                self._hosts[host] = left
            else:
                del self._hosts[host]
        if self._flights.get(name) is flight:
            del self._flights[name]
        if slots is not None:
            slots.give()
        flight.done.set()
        self._cond.notify_all()
