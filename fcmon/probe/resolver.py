"""Name resolution with a deadline, on a small bounded pool of threads.

`socket.getaddrinfo` takes no timeout: with a resolver that does not
answer, it blocks for as long as the C library retries (20 s and more),
and a probe blocked in it cannot be cut. So every lookup of a host name
runs in a resolver thread while the probe waits for it only until its
deadline; a lookup that runs out is the probe's failure with reason `dns`
("name resolution timed out").

Bounds:

- at most `max_threads` resolver threads (RESOLVER_THREADS), started on
  demand and ended after IDLE_SECONDS without work: a lookup that never
  returns holds one thread, never more; lookups beyond the pool wait in
  arrival order, inside their own deadline;
- one lookup per name at a time: every probe that needs a name already
  being looked up waits for that lookup (2,000 targets on one hung name
  hold one thread, not 2,000), so one hung name cannot take the pool;
- a lookup whose callers all gave up is stuck: `stats()` counts them and
  the first of each name is logged (warning, at most once a minute per
  name); when it returns at last its thread is free again;
- while every thread is busy (more hung names than threads), a name
  resolved within the last STALE_FOR seconds is answered from its last
  good answer instead of queueing, so names that resolve keep resolving
  whatever the hung ones do (at most GOOD_ANSWERS names remembered).

IP literals are converted at once (AI_NUMERICHOST) without a thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

RESOLVER_THREADS = 16
IDLE_SECONDS = 30.0
STUCK_LOG_EVERY = 60.0
THREAD_NAME = "fcmon-resolver"
STALE_FOR = 600.0
GOOD_ANSWERS = 4096

AddrInfo = Tuple[Any, ...]
_Key = Tuple[str, Any, int, int]


class ResolveTimeout(socket.gaierror):
    """The lookup did not finish within the caller's time."""


@dataclass(frozen=True)
class ResolverStats:
    threads: int  # resolver threads alive
    busy: int  # threads running a lookup
    stuck: int  # lookups running that every caller gave up on
    queued: int  # lookups waiting for a thread


class _Lookup:
    __slots__ = ("key", "done", "result", "error", "waiters", "started", "stuck")

    def __init__(self, key: _Key):
        self.key = key
        self.done = threading.Event()
        self.result: Optional[List[AddrInfo]] = None
        self.error: Optional[BaseException] = None
        self.waiters = 0
        self.started: Optional[float] = None
        self.stuck = False


def _is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    return False


class Resolver:
    def __init__(self, max_threads: int = RESOLVER_THREADS,
                 getaddrinfo: Callable[..., List[AddrInfo]] = socket.getaddrinfo,
                 idle_seconds: float = IDLE_SECONDS):
        self._max = max(1, max_threads)
        self._getaddrinfo = getaddrinfo
        self._idle_seconds = idle_seconds
        self._cond = threading.Condition()
        self._pending: Dict[_Key, _Lookup] = {}
        self._queue: Deque[_Lookup] = deque()
        self._threads = 0
        self._idle = 0
        self._busy = 0
        self._stuck = 0
        self._stuck_logged: Dict[str, float] = {}
        # key -> (monotonic time, answer) of the last lookup that succeeded, oldest first
        self._good: Dict[_Key, Tuple[float, List[AddrInfo]]] = {}

    def stats(self) -> ResolverStats:
        with self._cond:
            return ResolverStats(self._threads, self._busy, self._stuck, len(self._queue))

    @property
    def max_threads(self) -> int:
        return self._max

    def resolve(self, host: str, port: Any, family: int, kind: int, timeout: Optional[float]) -> List[AddrInfo]:
        """getaddrinfo(host, port, family, kind), or ResolveTimeout after
        `timeout` seconds (None: as long as it takes)."""
        if _is_ip_literal(host):
            return self._getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST)
        key: _Key = (host.lower(), port, family, kind)
        with self._cond:
            lookup = self._pending.get(key)
            if (lookup is None or lookup.started is None) and not self._idle and self._threads >= self._max:
                good = self._good.get(key)
                if good is not None and time.monotonic() - good[0] <= STALE_FOR:
                    return list(good[1])  # the pool is busy (hung names): the last good answer
            if lookup is None:
                lookup = self._pending[key] = _Lookup(key)
                self._queue.append(lookup)
                if self._idle:
                    self._cond.notify()
                elif self._threads < self._max:
                    self._threads += 1
                    threading.Thread(target=self._work, name=THREAD_NAME, daemon=True).start()
            lookup.waiters += 1
        finished = lookup.done.wait(None if timeout is None else max(0.0, timeout))
        with self._cond:
            lookup.waiters -= 1
            if not finished and not lookup.done.is_set():
                if lookup.waiters == 0 and lookup.started is None:
                    # nobody waits for it any more: it never starts
                    self._drop(lookup)
                elif lookup.waiters == 0 and not lookup.stuck:
                    lookup.stuck = True
                    self._stuck += 1
                    self._log_stuck(lookup)
                raise ResolveTimeout(socket.EAI_AGAIN, self._timeout_message(timeout))
        err = lookup.error
        if isinstance(err, socket.gaierror):
            raise socket.gaierror(err.errno, err.strerror)  # one exception per caller
        if err is not None:
            raise err
        assert lookup.result is not None
        return list(lookup.result)

    def _timeout_message(self, timeout: Optional[float]) -> str:
        # under self._cond
        message = f"name resolution timed out after {timeout or 0:.1f} s"
        if self._busy >= self._max:
            message += f" (all {self._max} resolver threads busy, {self._stuck} with names that do not answer)"
        return message

    def _drop(self, lookup: _Lookup) -> None:
        # under self._cond
        try:
            self._queue.remove(lookup)
        except ValueError:
            pass
        if self._pending.get(lookup.key) is lookup:
            del self._pending[lookup.key]

    def _log_stuck(self, lookup: _Lookup) -> None:
        # under self._cond
        host = lookup.key[0]
        now = time.monotonic()
        if now - self._stuck_logged.get(host, -STUCK_LOG_EVERY) < STUCK_LOG_EVERY:
            return
        self._stuck_logged[host] = now
        if len(self._stuck_logged) > 4 * self._max:
            old = [h for h, t in self._stuck_logged.items() if now - t >= STUCK_LOG_EVERY]
            for h in old:
                del self._stuck_logged[h]
        log.warning("name resolution of %s has not returned after %.1f s; it holds a resolver thread until it "
                    "does (%d of %d threads stuck)", host, now - (lookup.started or now), self._stuck, self._max)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._idle += 1
                    woke = self._cond.wait(self._idle_seconds)
                    self._idle -= 1
                    if not woke and not self._queue:
                        self._threads -= 1
                        return
                lookup = self._queue.popleft()
                lookup.started = time.monotonic()
                self._busy += 1
            host, port, family, kind = lookup.key
            try:
                lookup.result = self._getaddrinfo(host, port, family, kind)
            except BaseException as exc:  # handed to the callers
                lookup.error = exc
            with self._cond:
                if lookup.result is not None:
                    self._good.pop(lookup.key, None)
                    self._good[lookup.key] = (time.monotonic(), lookup.result)
                    if len(self._good) > GOOD_ANSWERS:
                        del self._good[next(iter(self._good))]
                self._busy -= 1
                if lookup.stuck:
                    self._stuck -= 1
                if self._pending.get(lookup.key) is lookup:
                    del self._pending[lookup.key]
                lookup.done.set()


# The process's resolver: probes and listener checks share its threads.
DEFAULT = Resolver()
