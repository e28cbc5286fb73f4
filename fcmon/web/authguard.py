"""Failed basic-auth attempts: logged (rate-limited), counted, and slowed per
client address.

An address gets FREE_FAILURES failed attempts; after that, while its last
failure is less than WINDOW seconds old, its requests are admitted one per
PENALTY seconds (whatever their credentials: they are not known before
the check). The wait is spent on the event loop (`httpd.Server` asks
`admit()` before dispatching), so it holds no worker thread and delays no
other client; a request that would wait more than MAX_WAIT is answered 429
at once. Guesses from one address: at most one a second (was 3,118/s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

log = logging.getLogger(__name__)

FREE_FAILURES = 5
WINDOW = 60.0
PENALTY = 1.0
MAX_WAIT = 10.0
# Addresses remembered at most (the oldest is forgotten first).
MAX_ADDRESSES = 4096
# One log line at most this often, with a count of the failures since.
LOG_EVERY = 10.0


class _Record:
    __slots__ = ("failures", "last", "next_slot")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0
        self.next_slot = 0.0


class AuthGuard:
    """Per client key (`httpd.client_key`): failures, and the admission delay
    they earn. Thread-safe: the app records from worker threads, the event
    loop admits."""

    def __init__(self, on_failure: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic):
        self._on_failure = on_failure
        self._clock = clock
        self._lock = threading.Lock()
        self._records: "OrderedDict[str, _Record]" = OrderedDict()
        self._last_log = -LOG_EVERY
        self._unlogged = 0

    def failed(self, key: str) -> None:
        """A request from `key` had wrong or missing credentials."""
        now = self._clock()
        with self._lock:
            rec = self._records.pop(key, None) or _Record()
            if now - rec.last > WINDOW:
                rec.failures = 0
            rec.failures += 1
            rec.last = now
            self._records[key] = rec
            while len(self._records) > MAX_ADDRESSES:
                self._records.popitem(last=False)
            self._unlogged += 1
            due = now - self._last_log >= LOG_EVERY
            if due:
                self._last_log, count, self._unlogged = now, self._unlogged, 0
            failures = rec.failures
        try:
            self._on_failure()
        except Exception:
            log.exception("counting a failed authentication failed")
        if due:
            # Neither the user name nor the password given: either may be a secret mistyped.
            log.warning("HTTP basic auth failed for a client at %s (%d failures from it within %.0f s; "
                        "%d failures from any client since the last such line)%s",
                        key, failures, WINDOW, count,
                        "; its requests are now admitted one per %.0f s" % PENALTY
                        if failures >= FREE_FAILURES else "")

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def admit(self, key: str) -> Optional[float]:
        """Seconds a request from `key` must wait before it is handled, or
        None: it would wait longer than MAX_WAIT (answer 429)."""
        now = self._clock()
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.failures < FREE_FAILURES:
                return 0.0
            if now - rec.last > WINDOW:
                del self._records[key]
                return 0.0
            start = max(now, rec.next_slot)
            if start - now > MAX_WAIT:
                return None
            rec.next_slot = start + PENALTY
            return start - now
