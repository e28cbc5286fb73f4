"""ProbeResults -> Prometheus metric families.

`MetricsStore` keeps the latest result of each target and the cumulative
counters; `target_samples` turns one target's state into samples;
`FcmonCollector` (for /probe, `check` and tests) renders them from a
snapshot, and `exposition.TextRenderer` (for /metrics) renders each
target when it changes, through the store's renderer hook. Either way a
target removed from the store has no series at all. Nothing here knows of
HTTP or TLS.

Exposition for one healthy target (abridged)::

    fcmon_up{target="prod"} 1.0
    fcmon_step_duration_seconds{step="connect",target="prod"} 0.004
    fcmon_request_duration_seconds_bucket{action="createSession",le="0.005",target="prod"} 1.0
    fcmon_api_error_code{action="listDatabases",target="prod"} 0.0
    fcmon_databases{target="prod"} 2.0
    fcmon_cert_expiry_days{cert="server",serial="1f..",subject="CN=db1",target="prod"} 364.9
    fcmon_probe_failures_total{reason="tls_verify",stage="connect",target="prod"} 3.0
"""

from __future__ import annotations

import copy
import platform
import threading
import time
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..config import TargetConfig
from ..probe.flight import SKIP_REASONS
from ..probe.levels import SECONDS_PER_DAY
from ..probe.listeners import ListenerResult, ListenerRound
from ..probe.result import ProbeResult, ServerInfo, SessionCensus

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
# How late scheduled probes start (actual start - scheduled time): the scheduler's health.
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    float("inf"),
)
LATENESS = "fcmon_probe_start_lateness_seconds"


class _Histogram:
    # one per target and action: slots keep 9,000 of them small
    __slots__ = ("counts", "total")

    def __init__(self, counts: Optional[List[int]] = None, total: float = 0.0):
        self.counts = [0] * len(REQUEST_BUCKETS) if counts is None else counts
        self.total = total

    def __repr__(self) -> str:
        return f"_Histogram(counts={self.counts!r}, total={self.total!r})"

    def observe(self, value: float) -> None:
        for i, bound in enumerate(REQUEST_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value

    def cumulative(self) -> List[Tuple[str, int]]:
        out = []
        running = 0
        for bound, count in zip(REQUEST_BUCKETS, self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass
class _TargetState:
    endpoint: str
    username: str
    latest: Optional[ProbeResult] = None
    last_success: Optional[float] = None
    databases: Optional[int] = None
    probes: int = 0
    # reason -> skipped runs; every reason is exported, zero or not
    skipped: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    leaks: int = 0
    failures: Dict[Tuple[str, str], int] = field(default_factory=dict)
    api_errors: Dict[Tuple[str, int], int] = field(default_factory=dict)
    last_error_code: Dict[str, int] = field(default_factory=dict)
    requests: Dict[str, _Histogram] = field(default_factory=dict)
    # from the last successful createSession; a later failed probe keeps it
    server: Optional[ServerInfo] = None
    # the last listener round (fcmon/probe/listeners.py), None until one ran or
    # when the target checks no listener; failures by (listener, reason)
    listeners: Optional[ListenerRound] = None
    listener_failures: Dict[Tuple[str, str], int] = field(default_factory=dict)
    # the last session census (a probe that did not take one keeps it; one
    # that found it unavailable, or census off, clears it) and the orphans
    # of this instance deleted so far
    census: Optional[SessionCensus] = None
    reaped: int = 0
    # what the store's renderer made of this state (exposition.Fragment), or None
    rendered: object = None

    def copy(self) -> "_TargetState":
        # ProbeResults are frozen; only the small mutable parts are copied.
        out = copy.copy(self)
        out.failures = dict(self.failures)
        out.skipped = dict(self.skipped)
        out.api_errors = dict(self.api_errors)
        out.last_error_code = dict(self.last_error_code)
        out.requests = {a: _Histogram(list(h.counts), h.total) for a, h in self.requests.items()}
        out.listener_failures = dict(self.listener_failures)
        return out


class MetricsStore:
    """Thread-safe store of everything the collector exports.

    With a renderer (`set_renderer`), each change of a target's state
    renders that target at once, in the recording thread and under the
    lock, so readers of `rendered()` only collect references.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._render: Optional[Callable[[str, _TargetState], object]] = None
        self._targets: Dict[str, _TargetState] = {}
        self._reload_ok: Optional[bool] = None
        self._reload_ok_at: Optional[float] = None
        self._lateness_counts = [0] * len(LATENESS_BUCKETS)
        self._lateness_sum = 0.0
        self._probe_requests_rejected = 0
        self._connections_rejected: Dict[str, int] = {}  # counters start at 0: set_reject_reasons
        self._auth_failures = 0
        # lane -> requests answered 503 (lane full) / not run (client gone)
        self._requests_shed: Dict[str, int] = {}
        self._requests_dropped: Dict[str, int] = {}

    def set_targets(self, targets: Sequence[TargetConfig]) -> None:
        """Make the store hold exactly these targets; a removed target's series vanish."""
        with self._lock:
            fresh: Dict[str, _TargetState] = {}
            for t in targets:
                state = self._targets.get(t.name)
                if state is None:
                    state = _TargetState(t.endpoint, t.username or "")
                    self._changed(t.name, state)
                elif (state.endpoint, state.username) != (t.endpoint, t.username or ""):
                    state.endpoint, state.username = t.endpoint, t.username or ""
                    self._changed(t.name, state)
                if not t.checks_listeners and (state.listeners is not None or state.listener_failures):
                    state.listeners, state.listener_failures = None, {}
                    self._changed(t.name, state)
                if not t.session_census and state.census is not None:
                    state.census = None
                    self._changed(t.name, state)
                fresh[t.name] = state
            self._targets = fresh

    def set_renderer(self, render: Optional[Callable[[str, _TargetState], object]]) -> None:
        """Call `render(name, state)` whenever a target's state changes (and
        now, for every target); `rendered()` returns what it made."""
        with self._lock:
            self._render = render
            for name, state in self._targets.items():
                state.rendered = None if render is None else render(name, state)

    def _changed(self, name: str, state: _TargetState) -> None:
        # under self._lock
        if self._render is not None:
            state.rendered = self._render(name, state)

    def record(self, result: ProbeResult) -> None:
        """All or nothing: the state changes only if it renders, so a result
        that cannot be handled leaves no half-counted probe behind (the
        caller then records the target's `internal` failure instead)."""
        with self._lock:
            current = self._targets.get(result.target)
            if current is None:  # removed while its probe was running
                return
            state = current.copy()
            state.latest = result
            state.probes += 1
            if result.failure is None:
                state.last_success = result.ended
                state.databases = result.databases
            else:
                key = (result.failure.stage, result.failure.reason)
                state.failures[key] = state.failures.get(key, 0) + 1
            if result.session_leaked:
                state.leaks += 1
            if result.server is not None:
                state.server = result.server
            if result.census is not None:
                state.census = result.census
                state.reaped += result.census.reaped
            elif result.census_unavailable is not None:
                state.census = None
            for call in result.calls:
                hist = state.requests.get(call.action)
                if hist is None:
                    hist = state.requests[call.action] = _Histogram()
                hist.observe(call.duration)
                if call.error_code is None:
                    state.last_error_code.pop(call.action, None)
                    continue
                state.last_error_code[call.action] = call.error_code
                if call.error_code != 0 and not (result.session_gone and call.action == "deleteSession"):
                    key2 = (call.action, call.error_code)
                    state.api_errors[key2] = state.api_errors.get(key2, 0) + 1
            self._changed(result.target, state)
            self._targets[result.target] = state

    def record_listeners(self, round_: ListenerRound) -> None:
        """A target's listener round: a listener it no longer names loses its series."""
        with self._lock:
            current = self._targets.get(round_.target)
            if current is None:  # removed while its round was running
                return
            state = current.copy()  # all or nothing, as in record()
            names = {r.listener.name for r in round_.results}
            failures = {k: n for k, n in state.listener_failures.items() if k[0] in names}
            for r in round_.results:
                if r.reason is not None:
                    key = (r.listener.name, r.reason)
                    failures[key] = failures.get(key, 0) + 1
            state.listeners = round_
            state.listener_failures = failures
            self._changed(round_.target, state)
            self._targets[round_.target] = state

    def record_skipped(self, target: str, reason: str) -> None:
        with self._lock:
            state = self._targets.get(target)
            if state is not None:
                state.skipped[reason] = state.skipped.get(reason, 0) + 1
                self._changed(target, state)

    def record_lateness(self, seconds: float) -> None:
        """A scheduled probe started `seconds` after its scheduled time (all targets together)."""
        seconds = max(0.0, seconds)
        with self._lock:
            for i, bound in enumerate(LATENESS_BUCKETS):
                if seconds <= bound:
                    self._lateness_counts[i] += 1
                    break
            self._lateness_sum += seconds

    def record_probe_request_rejected(self) -> None:
        """A /probe call was answered 503: too many probes started by /probe in flight."""
        with self._lock:
            self._probe_requests_rejected += 1

    def record_connection_rejected(self, reason: str) -> None:
        """The HTTP endpoint closed a connection at once, for `reason`
        (fcmon/web/httpd.py REJECT_REASONS: the cap, the client's own limit,
        the slots held back for new clients)."""
        with self._lock:
            self._connections_rejected[reason] = self._connections_rejected.get(reason, 0) + 1

    def record_auth_failure(self) -> None:
        """A request to the HTTP endpoint had wrong or missing basic-auth credentials."""
        with self._lock:
            self._auth_failures += 1

    def set_reject_reasons(self, reasons: Sequence[str]) -> None:
        """Why the HTTP endpoint may close a connection at once
        (fcmon/web/httpd.py REJECT_REASONS, handed down by the daemon: the
        store sits below the web layer): their counters start at 0."""
        with self._lock:
            for reason in reasons:
                self._connections_rejected.setdefault(reason, 0)

    def set_lanes(self, lanes: Sequence[str]) -> None:
        """The HTTP endpoint's lanes: their counters start at 0."""
        with self._lock:
            for lane in lanes:
                self._requests_shed.setdefault(lane, 0)
                self._requests_dropped.setdefault(lane, 0)

    def record_request_shed(self, lane: str) -> None:
        """A request answered 503 at once: its lane's queue was full."""
        with self._lock:
            self._requests_shed[lane] = self._requests_shed.get(lane, 0) + 1

    def record_request_dropped(self, lane: str) -> None:
        """A request not run: its client had gone before its turn."""
        with self._lock:
            self._requests_dropped[lane] = self._requests_dropped.get(lane, 0) + 1

    def record_reload(self, ok: bool, when: float) -> None:
        with self._lock:
            self._reload_ok = ok
            if ok:
                self._reload_ok_at = when

    def snapshot(self, only: Optional[str] = None) -> "Snapshot":
        """A consistent copy (of target `only` alone, if given)."""
        with self._lock:
            if only is None:
                targets = {name: state.copy() for name, state in self._targets.items()}
            else:
                state = self._targets.get(only)
                targets = {} if state is None else {only: state.copy()}
            return self._snapshot(targets)

    def rendered(self) -> Tuple[List[object], "Snapshot"]:
        """What the renderer made of each target, in target order, and a
        snapshot without targets (the global series). Only collects
        references under the lock: the caller formats outside it."""
        with self._lock:
            return [s.rendered for s in self._targets.values()], self._snapshot({})

    def _snapshot(self, targets: Dict[str, _TargetState]) -> "Snapshot":
        return Snapshot(targets, self._reload_ok, self._reload_ok_at,
                        (tuple(self._lateness_counts), self._lateness_sum),
                        self._probe_requests_rejected, dict(self._connections_rejected),
                        self._auth_failures,
                        tuple(sorted(self._requests_shed.items())), tuple(sorted(self._requests_dropped.items())))


@dataclass(frozen=True)
class Snapshot:
    targets: Dict[str, _TargetState]
    reload_ok: Optional[bool]
    reload_ok_at: Optional[float]
    # (count per LATENESS_BUCKETS bucket, sum of seconds)
    start_lateness: Tuple[Tuple[int, ...], float] = ((), 0.0)
    probe_requests_rejected: int = 0
    connections_rejected: Dict[str, int] = field(default_factory=dict)  # reason -> count
    auth_failures: int = 0
    requests_shed: Tuple[Tuple[str, int], ...] = ()  # (lane, count)
    requests_dropped: Tuple[Tuple[str, int], ...] = ()


Labels = Tuple[Tuple[str, str], ...]
# (sample name, labels, value)
Sample = Tuple[str, Labels, float]
# One series of a family: its label values (strings, in the family's
# `labels` order; the string alone for a family of one label) and its value.
Series = Tuple[Union[str, Tuple[Optional[str], ...]], Any]


# What a family reads (`Family.source`): one part of a target's state. A
# part that is None (never probed, no census, no listener round) has no
# series in any family that reads it.
STATE = None  # the target's state itself (`_TargetState`)
LATEST = attrgetter("latest")  # its last ProbeResult
CENSUS = attrgetter("census")  # its last SessionCensus
LISTENERS = attrgetter("listeners")  # its last ListenerRound
SERVER = attrgetter("server")  # the ServerInfo of its last successful createSession


@dataclass(frozen=True)
class Family:
    """One per-target metric family: the one place that says what it is and
    where its values come from. The family list (HELP and TYPE), the
    Collector's samples (`target_samples`, for /probe and `check`) and the
    fast renderer's text (fcmon/export/exposition.py, for /metrics) are all made
    from `FAMILIES`; docs/design-notes.md#metric-families-one-specification
    says what a new family needs.

    Every series has the `target` label first; `labels` are the ones after
    it. `source` picks what the family reads: the target's state (STATE) or
    a part of it (LATEST, CENSUS, LISTENERS, SERVER; when that part is None
    the family has no series for the target). Then give either `value` (one
    series without more labels: its value, None for no series) or `series`
    (the series as (label values, value), in exposition order; for a family
    of one label, the label's value alone: `sorted(d.items())` of a dict of
    label value -> value is a family's series). Values are numbers (an
    int is written "N.0", as prometheus_client writes it); a histogram's are
    `_Histogram`s. `days_until` names a family whose values are Unix times:
    this one has the same series, valued in days from the scrape until that
    time (so formatted at each scrape, and in `expiry_samples`, not in
    `target_samples`).
    """

    name: str  # counters without _total, as prometheus_client wants them
    type: str  # gauge, counter or histogram
    help: str
    labels: Tuple[str, ...] = ()
    # what `value` and `series` read: the target's state (STATE) or a part of it
    source: Optional[Callable[[_TargetState], Any]] = STATE
    value: Optional[Callable[[Any], Optional[float]]] = None
    series: Optional[Callable[[Any], Iterable[Series]]] = None
    days_until: Optional[str] = None
    # A label whose value is None is left out of that series, not written
    # empty (fcmon_server_info: only the fields the server sent).
    sparse: bool = False

    def read(self, s: _TargetState) -> Any:
        """What `value` and `series` take for target state `s` (None: no series)."""
        return s if self.source is None else self.source(s)

    @property
    def sample(self) -> str:
        """Its samples' name (a histogram's: before _bucket, _count, _sum)."""
        return self.name + "_total" if self.type == "counter" else self.name


def _listener(x: ListenerResult) -> Tuple[str, str]:
    return x.listener.name, str(x.listener.port)


def _server_values(server: ServerInfo) -> Tuple[Optional[str], ...]:
    return server.version, server.hostname


NOT_AFTER = "fcmon_cert_not_after_timestamp_seconds"
LISTENER_NOT_AFTER = "fcmon_listener_cert_not_after_timestamp_seconds"
CERT_LABELS = ("cert", "subject", "serial")
LISTENER_CERT_LABELS = ("listener", "port") + CERT_LABELS

# Every per-target family, in exposition order.
FAMILIES = (
    Family("fcmon_up", "gauge", "1 if the last probe created, used and deleted a session",
           source=LATEST, value=lambda r: 1 if r.up else 0),
    Family("fcmon_probe_duration_seconds", "gauge", "Wall time of the last probe",
           source=LATEST, value=attrgetter("duration")),
    Family("fcmon_step_duration_seconds", "gauge", "Last probe's time per step", ("step",),
           source=LATEST, series=attrgetter("steps")),
    Family("fcmon_request_duration_seconds", "histogram", "Latency of every API call", ("action",),
           series=lambda s: sorted(s.requests.items())),
    Family("fcmon_api_error_code", "gauge", "errorCode of the last call of each action (0 = success)", ("action",),
           series=lambda s: sorted(s.last_error_code.items())),
    Family("fcmon_api_errors", "counter", "Calls that returned a non-zero errorCode", ("action", "code"),
           series=lambda s: [((action, str(code)), n) for (action, code), n in sorted(s.api_errors.items())]),
    Family("fcmon_probes", "counter", "Probes run", value=attrgetter("probes")),
    Family("fcmon_probe_failures", "counter", "Failed probes", ("stage", "reason"),
           series=lambda s: sorted(s.failures.items())),
    Family("fcmon_last_probe_timestamp_seconds", "gauge", "End of the last probe (Unix time)",
           source=LATEST, value=attrgetter("ended")),
    Family("fcmon_last_success_timestamp_seconds", "gauge", "End of the last successful probe (Unix time)",
           value=attrgetter("last_success")),
    Family("fcmon_databases", "gauge", "Databases listed by the last successful listDatabases",
           value=attrgetter("databases")),
    Family(NOT_AFTER, "gauge", "Certificate expiry (Unix time)", CERT_LABELS,
           source=LATEST, series=lambda r: [((c.role, c.subject, c.serial), c.not_after) for c in r.certs]),
    Family("fcmon_cert_expiry_days", "gauge", "Days until the certificate expires (negative once expired)",
           CERT_LABELS, days_until=NOT_AFTER),
    Family("fcmon_tls_info", "gauge", "TLS version and cipher of the last handshake", ("version", "cipher"),
           source=LATEST, series=lambda r: [((r.tls_version, r.tls_cipher or ""), 1)] if r.tls_version else []),
    Family("fcmon_server_info", "gauge",
           "Server version and host name from the last successful createSession (labels only when sent)",
           ("version", "hostname"), sparse=True, source=SERVER, series=lambda server: [(_server_values(server), 1)]),
    Family("fcmon_session_leaks", "counter",
           "Sessions created, or possibly created (createSession sent, no usable answer), whose deleteSession did not succeed",
           value=attrgetter("leaks")),
    Family("fcmon_probes_skipped", "counter",
           "Scheduled runs not started, by reason: still_running (previous run not ended), "
           "missed (not started within its grace time), server_busy (no slot on its FairCom server in time)",
           ("reason",), series=lambda s: sorted(s.skipped.items())),
    Family("fcmon_target_info", "gauge", "Configured target", ("endpoint", "username"),
           series=lambda s: [((s.endpoint, s.username), 1)]),
    Family("fcmon_account_sessions", "gauge",
           "Live sessions of the target's account as describeSessions reported them in the last census, "
           "the probe's own current session included",
           source=CENSUS, value=attrgetter("sessions")),
    Family("fcmon_account_sessions_limit", "gauge",
           "The account's session limit (account_sessions_limit; FairCom's default is 50 per user)",
           source=CENSUS, value=attrgetter("limit")),
    Family("fcmon_account_sessions_fcmon", "gauge",
           "Sessions of the account whose description marks them as fcmon's (any instance; the probe's own included)",
           source=CENSUS, value=attrgetter("fcmon")),
    Family("fcmon_account_sessions_oldest_idle_seconds", "gauge",
           "Longest idle time among the account's sessions, on the server's clock (its timestamps "
           "against the probe's own session's)",
           source=CENSUS, value=attrgetter("oldest_idle")),
    Family("fcmon_account_sessions_by_user", "gauge",
           "Live sessions per configured user name (session_census_usernames), from listSessions", ("username",),
           source=CENSUS, series=attrgetter("by_user")),
    Family("fcmon_sessions_reaped", "counter",
           "Orphaned sessions of this fcmon instance (older than the longest possible probe) deleted by a probe",
           value=attrgetter("reaped")),
    Family("fcmon_listener_up", "gauge", "1 if the last TLS handshake with the listener verified",
           ("listener", "port", "protocol"), source=LISTENERS,
           series=lambda lr: [(_listener(x) + (x.listener.protocol,), 1 if x.up else 0) for x in lr.results]),
    Family(LISTENER_NOT_AFTER, "gauge", "Listener certificate expiry (Unix time)", LISTENER_CERT_LABELS,
           source=LISTENERS, series=lambda lr: [
               (_listener(x) + (c.role, c.subject, c.serial), c.not_after) for x in lr.results for c in x.certs]),
    Family("fcmon_listener_cert_expiry_days", "gauge",
           "Days until the listener certificate expires (negative once expired)", LISTENER_CERT_LABELS,
           days_until=LISTENER_NOT_AFTER),
    Family("fcmon_listener_failures", "counter", "Failed listener checks", ("listener", "reason"),
           series=lambda s: sorted(s.listener_failures.items())),
    Family("fcmon_listener_discovery_success", "gauge", "1 if the last listServices named the listeners",
           source=LISTENERS, value=lambda lr: None if lr.discovery is None else (1 if lr.discovery else 0)),
    Family("fcmon_listeners", "gauge", "TLS listeners checked besides the endpoint",
           source=LISTENERS, value=lambda lr: len(lr.results)),
    Family("fcmon_listeners_not_checked", "gauge",
           "Listeners the last round did not check: over_cap (beyond max_listeners), "
           "round_deadline (left for the next round by the round's deadline)", ("reason",),
           source=LISTENERS, series=lambda lr: [("over_cap", lr.over_cap), ("round_deadline", lr.not_reached)]),
)
BY_NAME = {f.name: f for f in FAMILIES}


def _check_families() -> None:
    # A family the renderers could not make would show only as missing series.
    for f in FAMILIES:
        assert f.type in ("gauge", "counter", "histogram"), f.name
        if f.days_until is None:
            assert (f.value is None) != (f.series is None), f"{f.name}: give value or series"
            assert f.value is None or not f.labels, f"{f.name}: a value has no labels"
        else:
            source = BY_NAME[f.days_until]
            assert f.value is f.series is None and f.source is STATE and source.series is not None and source.labels == f.labels, f.name


_check_families()


def label_pairs(family: Family, values: Union[str, Tuple[Optional[str], ...]]) -> Labels:
    """A series' labels after `target`, as (name, value) pairs."""
    if len(family.labels) == 1:
        return ((family.labels[0], values),)  # type: ignore[return-value]
    if family.sparse:
        return tuple([(k, v) for k, v in zip(family.labels, values) if v is not None])
    return tuple(zip(family.labels, values))  # type: ignore[arg-type]


def target_samples(name: str, s: _TargetState) -> Dict[str, List[Sample]]:
    """Every sample of one target but the time-dependent expiry days, by family."""
    out: Dict[str, List[Sample]] = {}
    target = (("target", name),)
    for f in FAMILIES:
        x = f.read(s)
        if x is None:
            continue
        if f.value is not None:
            value = f.value(x)
            if value is not None:
                out[f.name] = [(f.sample, target, value)]
        elif f.series is not None:
            samples: List[Sample] = []
            for values, value in f.series(x):
                labels = target + label_pairs(f, values)
                if f.type == "histogram":
                    buckets = value.cumulative()
                    samples += [(f.sample + "_bucket", labels + (("le", le),), count) for le, count in buckets]
                    samples += [(f.sample + "_count", labels, buckets[-1][1]), (f.sample + "_sum", labels, value.total)]
                else:
                    samples.append((f.sample, labels, value))
            if samples:
                out[f.name] = samples
    return out


def server_labels(server: ServerInfo) -> Labels:
    """fcmon_server_info's labels after `target`: only the fields the server
    sent; an absent one is no label at all (Prometheus treats an empty label
    as absent anyway)."""
    return label_pairs(BY_NAME["fcmon_server_info"], _server_values(server))


def expiry_samples(name: str, s: _TargetState, now: float) -> List[Sample]:
    """The time-dependent days left of the target's and its listeners' certificates."""
    out: List[Sample] = []
    target = (("target", name),)
    for f in FAMILIES:
        if f.days_until is not None:
            source = BY_NAME[f.days_until]
            x = source.read(s)
            if x is not None:
                out += [(f.sample, target + label_pairs(f, values), (not_after - now) / SECONDS_PER_DAY)
                        for values, not_after in source.series(x)]  # type: ignore[misc]
    return out


class FcmonCollector(Collector):
    """The store as metric families; `only_target` limits it to one target (for /probe).

    /metrics uses `TextRenderer`, which renders the same samples faster.
    """

    def __init__(
        self,
        store: MetricsStore,
        only_target: Optional[str] = None,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._only = only_target
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        snap = self._store.snapshot(self._only)
        now = self._clock()
        families = {f.name: Metric(f.name, f.help, f.type) for f in FAMILIES}
        for name, state in snap.targets.items():
            for fam, samples in target_samples(name, state).items():
                for sample, labels, value in samples:
                    families[fam].add_sample(sample, dict(labels), value)
            for sample, labels, value in expiry_samples(name, state, now):
                families[sample].add_sample(sample, dict(labels), value)
        yield from families.values()
        if self._only is None:
            yield from _global_families(snap)


def _global_families(snap: Snapshot) -> Iterable[Metric]:
    build = GaugeMetricFamily("fcmon_build_info", "fcmon build", labels=["version", "python"])
    build.add_metric([__version__, platform.python_version()], 1)
    yield build
    ok = GaugeMetricFamily(
        "fcmon_config_last_reload_successful", "1 if the last config load succeeded"
    )
    if snap.reload_ok is not None:
        ok.add_metric([], 1 if snap.reload_ok else 0)
    yield ok
    at = GaugeMetricFamily(
        "fcmon_config_last_reload_success_timestamp_seconds", "Time of the last successful config load"
    )
    if snap.reload_ok_at is not None:
        at.add_metric([], snap.reload_ok_at)
    yield at
    counts, total = snap.start_lateness
    if counts:
        lateness = HistogramMetricFamily(
            LATENESS, "How long after its scheduled time each scheduled probe started"
        )
        running = 0
        buckets = []
        for bound, n in zip(LATENESS_BUCKETS, counts):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        lateness.add_metric([], buckets, total)
        yield lateness
    yield CounterMetricFamily(
        "fcmon_probe_requests_rejected",
        "/probe calls answered 503 because too many probes started by /probe were in flight",
        value=snap.probe_requests_rejected)
    rejected = CounterMetricFamily(
        "fcmon_http_connections_rejected",
        "Connections to the HTTP endpoint closed at once: full (the cap), per_client (that address's "
        "limit), held_back (the last slots are kept for addresses holding few)",
        labels=["reason"])
    for reason, count in sorted(snap.connections_rejected.items()):
        rejected.add_metric([reason], count)
    yield rejected
    yield CounterMetricFamily(
        "fcmon_http_auth_failures",
        "Requests to the HTTP endpoint with wrong or missing basic-auth credentials",
        value=snap.auth_failures)
    for name, text, counts in (
            ("fcmon_http_requests_shed", "HTTP requests answered 503 at once because their lane's queue was full",
             snap.requests_shed),
            ("fcmon_http_requests_dropped", "HTTP requests not run because their client had gone before their turn",
             snap.requests_dropped)):
        family = CounterMetricFamily(name, text, labels=["lane"])
        for lane, n in counts:
            family.add_metric([lane], n)
        yield family
