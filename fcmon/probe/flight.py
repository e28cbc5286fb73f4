"""Who may start a probe: one per target, a fair few per FairCom server.

Every probe, whoever asks for it (the scheduler, `/probe`, `fcmon check`),
goes through one `Flights`:

- single flight: while a probe of a target runs, another request for that
  target waits for it and gets the same result instead of starting a second
  one. Without it, 80 concurrent `/probe?target=db` calls opened 80 sessions
  and locked the monitoring user out of FairCom (50 sessions per user);
- at most `per_host` probes in flight to one FairCom server, the endpoint's
  host name and port as configured (FairCom accepts 25 connections per
  client IP by default, and the application sharing the server needs some
  of them). Two servers on one host do not share a cap;
- a probe that finds its server's slots taken queues for one, and the queue
  is served strictly in arrival order: a freed slot is handed to the
  oldest waiter, which alone is woken (no herd, no overtaking). A caller
  may bound the wait (`wait_until`): a probe that has no slot by then is
  not started (`Skipped`, reason `server_busy`), and a server whose queue
  already holds WAITERS_PER_SLOT x `per_host` waiters turns such callers
  away at once, so a dead server's targets hold at most
  (1 + WAITERS_PER_SLOT) x `per_host` of the scheduler's workers;
- optionally a pool of slots (`/probe`'s cap): a request that would start
  a new probe when none is free gets `Busy` at once, while joining a probe
  already in flight is always allowed (it costs FairCom nothing).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Optional, Tuple, Union
from urllib.parse import urlsplit

from ..config import MAX_CONNECTIONS_PER_HOST, TargetConfig
from .result import ProbeResult

# Why a scheduled probe did not run (fcmon_probes_skipped_total's `reason`):
SKIP_SERVER_BUSY = "server_busy"  # no slot on its FairCom server in time
SKIP_STILL_RUNNING = "still_running"  # its previous probe had not ended
SKIP_MISSED = "missed"  # the scheduler could not start it within the grace time
SKIP_REASONS = (SKIP_MISSED, SKIP_SERVER_BUSY, SKIP_STILL_RUNNING)

Server = Tuple[str, int]
# Waiters with a deadline one server may queue, per slot.
WAITERS_PER_SLOT = 4


class Busy(Exception):
    """No slot free to start a new probe."""


class Skipped(Busy):
    """The probe was not started: `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


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


class _Waiter:
    __slots__ = ("granted", "event")

    def __init__(self) -> None:
        self.granted = False
        self.event = threading.Event()


class _Server:
    __slots__ = ("running", "queue")

    def __init__(self) -> None:
        self.running = 0
        self.queue: Deque[_Waiter] = deque()


_DEFAULT_PORTS = {"https": 443, "http": 80}


def server_of(target: TargetConfig) -> Server:
    """The FairCom server a target probes: host name (lower case) and port, as configured."""
    parts = urlsplit(target.endpoint)
    host = (parts.hostname or target.endpoint).lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return host, port if port is not None else _DEFAULT_PORTS.get(parts.scheme.lower(), 0)


class Flights:
    def __init__(self, per_host: int = MAX_CONNECTIONS_PER_HOST):
        self._lock = threading.Lock()
        self._per_host = per_host
        self._flights: Dict[str, _Flight] = {}
        self._servers: Dict[Server, _Server] = {}
        self.started = 0  # probes started, for tests

    def set_per_host(self, per_host: int) -> None:
        with self._lock:
            self._per_host = per_host
            for server in list(self._servers.values()):
                while server.queue and server.running < per_host:
                    self._grant(server)

    def in_flight(self, server: Union[None, str, Server] = None) -> int:
        """Probes running: all of them, or to one server ((host, port)) or host name."""
        with self._lock:
            if server is None:
                return len(self._flights)
            if isinstance(server, str):
                return sum(s.running for key, s in self._servers.items() if key[0] == server)
            s = self._servers.get(server)
            return s.running if s is not None else 0

    def waiting(self, server: Server) -> int:
        with self._lock:
            s = self._servers.get(server)
            return len(s.queue) if s is not None else 0

    def run(
        self,
        target: TargetConfig,
        probe: Callable[[TargetConfig], ProbeResult],
        on_start: Callable[[], None] = lambda: None,
        slots: Optional[Slots] = None,
        on_result: Optional[Callable[[ProbeResult], None]] = None,
        wait_until: Optional[float] = None,
    ) -> Tuple[ProbeResult, bool]:
        """The result of a probe of `target`, and whether this call ran it
        (False: it joined one already in flight). The caller that runs the
        probe calls its `on_result` (recording it) before the callers that
        joined are released, so they see it recorded.

        `on_start` is called when the probe starts (after any wait for a
        server slot) or when this call joins one in flight. Raises `Busy`
        when a new probe is needed and `slots` has none free, and `Skipped`
        (reason `server_busy`) when no server slot is free by `wait_until`
        (monotonic; None: wait in turn as long as it takes).
        """
        key = server_of(target)
        joined = False
        while True:
            with self._lock:
                flight = self._flights.get(target.name)
                if flight is None:
                    if slots is not None and not slots.take():
                        raise Busy()
                    flight = self._flights[target.name] = _Flight(target)
                    server = self._servers.get(key)
                    if server is None:
                        server = self._servers[key] = _Server()
                    waiter: Optional[_Waiter] = None
                    if server.running < self._per_host and not server.queue:
                        server.running += 1
                    elif wait_until is not None and len(server.queue) >= WAITERS_PER_SLOT * self._per_host:
                        self._end(target.name, key, flight, slots, counted=False)
                        raise Skipped(SKIP_SERVER_BUSY, _busy_message(key, self._per_host, queued=True))
                    else:
                        waiter = _Waiter()
                        server.queue.append(waiter)
                    break
            # A probe of this target is in flight: join it, or (the target
            # was reconfigured) wait for it to end, then run a new one.
            if flight.target == target and not joined:
                joined = True
                on_start()
            flight.done.wait()
            if flight.target == target and flight.result is not None:
                return flight.result, False
        if waiter is not None:
            timeout = None if wait_until is None else max(0.0, wait_until - time.monotonic())
            waiter.event.wait(timeout)
            with self._lock:
                if not waiter.granted:
                    try:
                        server.queue.remove(waiter)
                    except ValueError:
                        pass
                    self._end(target.name, key, flight, slots, counted=False)
                    raise Skipped(SKIP_SERVER_BUSY, _busy_message(key, self._per_host, queued=False))
        with self._lock:
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
            with self._lock:
                self._end(target.name, key, flight, slots, counted=True)

    def _grant(self, server: _Server) -> None:
        # under self._lock, with server.queue not empty: the oldest waiter
        # gets a slot; only it is woken
        waiter = server.queue.popleft()
        waiter.granted = True
        server.running += 1
        waiter.event.set()

    def _end(self, name: str, key: Server, flight: _Flight, slots: Optional[Slots], counted: bool) -> None:
        # under self._lock
        server = self._servers.get(key)
        if server is not None:
            if counted:
                server.running -= 1
                # The slot goes to the oldest waiter, never to a newcomer.
                while server.queue and server.running < self._per_host:
                    self._grant(server)
            if not server.running and not server.queue:
                del self._servers[key]
        if self._flights.get(name) is flight:
            del self._flights[name]
        if slots is not None:
            slots.give()
        flight.done.set()


def _busy_message(key: Server, per_host: int, queued: bool) -> str:
    host, port = key
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if queued:
        return (f"server {where} busy: {per_host} probes running and "
                f"{WAITERS_PER_SLOT * per_host} waiting for a slot")
    return f"server {where} busy: no slot free in time ({per_host} probes running)"
