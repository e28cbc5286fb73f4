"""What the status page and /api/v1/status show, kept from the results.

`StatusBoard` is fed by the daemon: each `ProbeResult`, each reload and
each new set of targets. It keeps the latest result of every configured
target, since when its state holds, and a bounded list of recent events
(state changes and failures), all in memory. `snapshot()` hands the
renderers (`statuspage.py`) one consistent, immutable view; nothing here
knows of HTML or JSON.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Optional, Sequence, Tuple

from ..probe.certs import CERT_CRIT_DAYS, CERT_WARN_DAYS
from ..config import TargetConfig
from ..probe.levels import SECONDS_PER_DAY, cert_level  # noqa: F401 (the renderers and tests read them here)
from ..probe.listeners import ListenerRound
from ..probe.result import ProbeResult, ServerInfo, SessionCensus
from ..runbook import RUNBOOK_URL

MAX_EVENTS = 50

# Target states
UP = "up"
DOWN = "down"
NOT_PROBED = "not_probed"


@dataclass(frozen=True)
class Event:
    time: float  # Unix time
    target: str
    kind: str  # "up", "down", "failure" (still down, failing differently), "added", "removed"
    text: str


@dataclass(frozen=True)
class TargetStatus:
    name: str
    endpoint: str
    state: str  # UP, DOWN or NOT_PROBED
    since: float  # Unix time the state began (NOT_PROBED: when the target was configured)
    latest: Optional[ProbeResult]
    # the last listener round (fcmon/probe/listeners.py): a row per listener
    listeners: Optional[ListenerRound] = None
    # the server's identity from the last probe whose createSession succeeded
    # (the latest one may have failed before it), and that probe's end
    server: Optional[ServerInfo] = None
    server_seen: Optional[float] = None
    # the last session census (kept by a probe that took none; cleared by
    # one that found it unavailable) and this instance's orphans reaped so far
    census: Optional[SessionCensus] = None
    reaped: int = 0


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool
    last_attempt: Optional[float]  # None: no reload since start
    last_success: float  # the start counts as one
    error: Optional[str]  # one line, set while the last reload failed


@dataclass(frozen=True)
class StatusSnapshot:
    version: str
    started: float  # Unix time
    now: float
    targets: Tuple[TargetStatus, ...]  # in config order
    events: Tuple[Event, ...]  # newest first
    reload: ReloadStatus
    # where docs/runbook.md is published ([fcmon] runbook_url)
    runbook_url: str = RUNBOOK_URL

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.started)

    @property
    def targets_up(self) -> int:
        return sum(1 for t in self.targets if t.state == UP)


@dataclass
class _Entry:
    endpoint: str
    state: str
    since: float
    latest: Optional[ProbeResult] = None
    listeners: Optional[ListenerRound] = None
    server: Optional[ServerInfo] = None
    server_seen: Optional[float] = None
    census: Optional[SessionCensus] = None
    reaped: int = 0


def _failure_text(result: ProbeResult) -> str:
    f = result.failure
    assert f is not None
    return f"down at {f.stage}: {f.reason}: {f.message}"


def _why(result: ProbeResult) -> object:
    f = result.failure
    return None if f is None else (f.stage, f.reason)


class StatusBoard:
    def __init__(self, version: str, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._version = version
        self._started = clock()
        self._lock = threading.Lock()
        self._targets: Dict[str, _Entry] = {}
        self._events: Deque[Event] = deque(maxlen=MAX_EVENTS)
        self._reload = ReloadStatus(True, None, self._started, None)
        self._configured = False
        # Bumped by every change: the status page is re-rendered only after
        # one (pages.py); `_reloads` by the operator's (a reload, its
        # outcome), which the page shows at once.
        self._changes = 0
        self._reloads = 0
        self._runbook_url = RUNBOOK_URL

    def changes(self) -> int:
        """How many changes the board has seen (any result, reload or new targets)."""
        with self._lock:
            return self._changes

    def reloads(self) -> int:
        """How many reloads (new targets, a reload's outcome) the board has seen."""
        with self._lock:
            return self._reloads

    def set_runbook_url(self, url: str) -> None:
        """Where the page's runbook links point (at start and on each reload)."""
        with self._lock:
            if url != self._runbook_url:
                self._runbook_url = url
                self._changes += 1
                self._reloads += 1

    def set_targets(self, targets: Sequence[TargetConfig]) -> None:
        """Hold exactly these targets, in this order; the first call is the
        start, later ones are reloads (targets added or removed are events)."""
        now = self._clock()
        with self._lock:
            self._changes += 1
            self._reloads += 1
            fresh: Dict[str, _Entry] = {}
            for t in targets:
                entry = self._targets.get(t.name)
                if entry is None or entry.endpoint != t.endpoint:
                    # A new endpoint is another server: what the old one said no longer holds.
                    entry = _Entry(t.endpoint, NOT_PROBED, now)
                    if self._configured:
                        self._events.appendleft(Event(now, t.name, "added", f"added by a reload ({t.endpoint})"))
                fresh[t.name] = entry
            if self._configured:
                for name in self._targets:
                    if name not in fresh:
                        self._events.appendleft(Event(now, name, "removed", "removed by a reload"))
            self._targets = fresh
            self._configured = True

    def record(self, result: ProbeResult) -> None:
        with self._lock:
            self._changes += 1
            entry = self._targets.get(result.target)
            if entry is None:  # removed while its probe ran
                return
            previous = entry.latest
            state = UP if result.up else DOWN
            when = result.ended
            if state != entry.state:
                entry.state, entry.since = state, when
                text = "up" if state == UP else _failure_text(result)
                if state == UP and result.databases is not None:
                    text += f" ({result.databases} databases)"
                self._events.appendleft(Event(when, result.target, state, text))
            elif state == DOWN and previous is not None and _why(previous) != _why(result):
                # Still down, for another reason: worth a line; the same
                # failure probe after probe is not (it would push out the
                # rest), nor is a new wording of it (a TLS alert's text varies).
                self._events.appendleft(Event(when, result.target, "failure", _failure_text(result)))
            entry.latest = result
            if result.server is not None:
                entry.server, entry.server_seen = result.server, result.ended
            if result.census is not None:
                entry.census = result.census
                entry.reaped += result.census.reaped
            elif result.census_unavailable is not None:
                entry.census = None

    def record_listeners(self, round_: ListenerRound) -> None:
        """A target's listener round; a listener that goes down or comes back is an event."""
        with self._lock:
            self._changes += 1
            entry = self._targets.get(round_.target)
            if entry is None:
                return
            before = {} if entry.listeners is None else {
                x.listener.name: x.up for x in entry.listeners.results}
            for x in round_.results:
                was = before.get(x.listener.name)
                if x.up and was is False:
                    self._events.appendleft(Event(x.ended, round_.target, "up", f"listener {x.listener.name} up"))
                elif not x.up and was is not False:
                    self._events.appendleft(Event(
                        x.ended, round_.target, "down",
                        f"listener {x.listener.name} (port {x.listener.port}) down: {x.reason}: {x.message}"))
            entry.listeners = round_

    def record_reload(self, ok: bool, error: Optional[str] = None) -> None:
        """A reload's outcome; `error` is a one-line message without secrets."""
        now = self._clock()
        with self._lock:
            self._changes += 1
            self._reloads += 1
            last_success = now if ok else self._reload.last_success
            self._reload = ReloadStatus(ok, now, last_success, None if ok else (error or "reload failed"))

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            targets = tuple(
                TargetStatus(name, e.endpoint, e.state, e.since, e.latest, listeners=e.listeners,
                             server=e.server, server_seen=e.server_seen, census=e.census, reaped=e.reaped)
                for name, e in self._targets.items()
            )
            events = tuple(self._events)
            reload = self._reload
            runbook_url = self._runbook_url
        return StatusSnapshot(self._version, self._started, self._clock(), targets, events, reload, runbook_url)


def one_line(problems: Sequence[str], limit: int = 400) -> str:
    """Config problems as one line for the status page: the first ones, and
    how many more (the log has them all)."""
    parts = [" ".join(p.split()) for p in problems if p.strip()]
    if not parts:
        return "reload failed"
    # Each problem names the file: say it once.
    source = parts[0].split(": ", 1)[0] + ": "
    if len(parts) > 1 and all(p.startswith(source) and len(p) > len(source) for p in parts):
        parts = [source + parts[0][len(source):]] + [p[len(source):] for p in parts[1:]]
    line = parts[0]
    shown = 1
    for p in parts[1:]:
        if len(line) + 2 + len(p) > limit:
            break
        line += "; " + p
        shown += 1
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    if shown < len(parts):
        line += f" (and {len(parts) - shown} more)"
    return line
