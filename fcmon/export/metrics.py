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
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..config import TargetConfig
from ..web.httpd import REJECT_REASONS
from ..probe.flight import SKIP_REASONS
from ..probe.listeners import ListenerResult, ListenerRound
from ..probe.result import CertInfo, ProbeResult, ServerInfo, SessionCensus

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
# How late scheduled probes start (actual start - scheduled time): the scheduler's health.
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    float("inf"),
)
LATENESS = "fcmon_probe_start_lateness_seconds"
SECONDS_PER_DAY = 86400.0


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
        self._connections_rejected: Dict[str, int] = {reason: 0 for reason in REJECT_REASONS}
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


@dataclass(frozen=True)
class Family:
    name: str  # counters without _total, as prometheus_client wants them
    type: str
    help: str


# Every per-target family, in exposition order.
UP = Family("fcmon_up", "gauge", "1 if the last probe created, used and deleted a session")
FAMILIES = (
    UP,
    Family("fcmon_probe_duration_seconds", "gauge", "Wall time of the last probe"),
    Family("fcmon_step_duration_seconds", "gauge", "Last probe's time per step"),
    Family("fcmon_request_duration_seconds", "histogram", "Latency of every API call"),
    Family("fcmon_api_error_code", "gauge", "errorCode of the last call of each action (0 = success)"),
    Family("fcmon_api_errors", "counter", "Calls that returned a non-zero errorCode"),
    Family("fcmon_probes", "counter", "Probes run"),
    Family("fcmon_probe_failures", "counter", "Failed probes"),
    Family("fcmon_last_probe_timestamp_seconds", "gauge", "End of the last probe (Unix time)"),
    Family("fcmon_last_success_timestamp_seconds", "gauge", "End of the last successful probe (Unix time)"),
    Family("fcmon_databases", "gauge", "Databases listed by the last successful listDatabases"),
    Family("fcmon_cert_not_after_timestamp_seconds", "gauge", "Certificate expiry (Unix time)"),
    Family("fcmon_cert_expiry_days", "gauge", "Days until the certificate expires (negative once expired)"),
    Family("fcmon_tls_info", "gauge", "TLS version and cipher of the last handshake"),
    Family("fcmon_server_info", "gauge",
           "Server version and host name from the last successful createSession (labels only when sent)"),
    Family("fcmon_session_leaks", "counter",
           "Sessions created, or possibly created (createSession sent, no usable answer), whose deleteSession did not succeed"),
    Family("fcmon_probes_skipped", "counter",
           "Scheduled runs not started, by reason: still_running (previous run not ended), "
           "missed (not started within its grace time), server_busy (no slot on its FairCom server in time)"),
    Family("fcmon_target_info", "gauge", "Configured target"),
    Family("fcmon_account_sessions", "gauge",
           "Live sessions of the target's account as describeSessions reported them in the last census, "
           "the probe's own current session included"),
    Family("fcmon_account_sessions_limit", "gauge",
           "The account's session limit (account_sessions_limit; FairCom's default is 50 per user)"),
    Family("fcmon_account_sessions_fcmon", "gauge",
           "Sessions of the account whose description marks them as fcmon's (any instance; the probe's own included)"),
    Family("fcmon_account_sessions_oldest_idle_seconds", "gauge",
           "Longest idle time among the account's sessions, on the server's clock (its timestamps "
           "against the probe's own session's)"),
    Family("fcmon_account_sessions_by_user", "gauge",
           "Live sessions per configured user name (session_census_usernames), from listSessions"),
    Family("fcmon_sessions_reaped", "counter",
           "Orphaned sessions of this fcmon instance (older than the longest possible probe) deleted by a probe"),
    Family("fcmon_listener_up", "gauge", "1 if the last TLS handshake with the listener verified"),
    Family("fcmon_listener_cert_not_after_timestamp_seconds", "gauge", "Listener certificate expiry (Unix time)"),
    Family("fcmon_listener_cert_expiry_days", "gauge",
           "Days until the listener certificate expires (negative once expired)"),
    Family("fcmon_listener_failures", "counter", "Failed listener checks"),
    Family("fcmon_listener_discovery_success", "gauge", "1 if the last listServices named the listeners"),
    Family("fcmon_listeners", "gauge", "TLS listeners checked besides the endpoint"),
    Family("fcmon_listeners_not_checked", "gauge",
           "Listeners the last round did not check: over_cap (beyond max_listeners), "
           "round_deadline (left for the next round by the round's deadline)"),
)
EXPIRY_DAYS = "fcmon_cert_expiry_days"
LISTENER_EXPIRY_DAYS = "fcmon_listener_cert_expiry_days"
LISTENER_NOT_AFTER = "fcmon_listener_cert_not_after_timestamp_seconds"

Labels = Tuple[Tuple[str, str], ...]
# (sample name, labels, value)
Sample = Tuple[str, Labels, float]


def target_samples(name: str, s: _TargetState) -> Dict[str, List[Sample]]:
    """Every sample of one target but the time-dependent expiry days, by family."""
    out: Dict[str, List[Sample]] = {}

    def add(family: str, sample: str, labels: Labels, value: float) -> None:
        out.setdefault(family, []).append((sample, (("target", name),) + labels, value))

    add("fcmon_target_info", "fcmon_target_info", (("endpoint", s.endpoint), ("username", s.username)), 1)
    add("fcmon_probes", "fcmon_probes_total", (), s.probes)
    for reason, n in sorted(s.skipped.items()):
        add("fcmon_probes_skipped", "fcmon_probes_skipped_total", (("reason", reason),), n)
    add("fcmon_session_leaks", "fcmon_session_leaks_total", (), s.leaks)
    add("fcmon_sessions_reaped", "fcmon_sessions_reaped_total", (), s.reaped)
    c = s.census
    if c is not None:
        add("fcmon_account_sessions", "fcmon_account_sessions", (), c.sessions)
        add("fcmon_account_sessions_limit", "fcmon_account_sessions_limit", (), c.limit)
        add("fcmon_account_sessions_fcmon", "fcmon_account_sessions_fcmon", (), c.fcmon)
        if c.oldest_idle is not None:
            add("fcmon_account_sessions_oldest_idle_seconds", "fcmon_account_sessions_oldest_idle_seconds", (),
                c.oldest_idle)
        for user, n in c.by_user:
            add("fcmon_account_sessions_by_user", "fcmon_account_sessions_by_user", (("username", user),), n)
    for (stage, reason), n in sorted(s.failures.items()):
        add("fcmon_probe_failures", "fcmon_probe_failures_total", (("stage", stage), ("reason", reason)), n)
    for (action, code), n in sorted(s.api_errors.items()):
        add("fcmon_api_errors", "fcmon_api_errors_total", (("action", action), ("code", str(code))), n)
    for action, code in sorted(s.last_error_code.items()):
        add("fcmon_api_error_code", "fcmon_api_error_code", (("action", action),), code)
    for action, hist in sorted(s.requests.items()):
        fam = "fcmon_request_duration_seconds"
        buckets = hist.cumulative()
        for le, count in buckets:
            add(fam, fam + "_bucket", (("action", action), ("le", le)), count)
        add(fam, fam + "_count", (("action", action),), buckets[-1][1])
        add(fam, fam + "_sum", (("action", action),), hist.total)
    if s.last_success is not None:
        add("fcmon_last_success_timestamp_seconds", "fcmon_last_success_timestamp_seconds", (), s.last_success)
    if s.databases is not None:
        add("fcmon_databases", "fcmon_databases", (), s.databases)
    if s.server is not None:
        add("fcmon_server_info", "fcmon_server_info", server_labels(s.server), 1)
    lr = s.listeners
    if lr is not None:
        add("fcmon_listeners", "fcmon_listeners", (), len(lr.results))
        add("fcmon_listeners_not_checked", "fcmon_listeners_not_checked", (("reason", "over_cap"),), lr.over_cap)
        add("fcmon_listeners_not_checked", "fcmon_listeners_not_checked", (("reason", "round_deadline"),),
            lr.not_reached)
        if lr.discovery is not None:
            add("fcmon_listener_discovery_success", "fcmon_listener_discovery_success", (),
                1 if lr.discovery else 0)
        for x in lr.results:
            add("fcmon_listener_up", "fcmon_listener_up", _listener_labels(x) + (("protocol", x.listener.protocol),),
                1 if x.up else 0)
            for c in x.certs:
                add(LISTENER_NOT_AFTER, LISTENER_NOT_AFTER, _listener_labels(x) + _cert_labels(c), c.not_after)
    for (listener, reason), n in sorted(s.listener_failures.items()):
        add("fcmon_listener_failures", "fcmon_listener_failures_total",
            (("listener", listener), ("reason", reason)), n)
    r = s.latest
    if r is None:
        return out
    add("fcmon_up", "fcmon_up", (), 1 if r.up else 0)
    add("fcmon_probe_duration_seconds", "fcmon_probe_duration_seconds", (), r.duration)
    add("fcmon_last_probe_timestamp_seconds", "fcmon_last_probe_timestamp_seconds", (), r.ended)
    for step, seconds in r.steps:
        add("fcmon_step_duration_seconds", "fcmon_step_duration_seconds", (("step", step),), seconds)
    for c in r.certs:
        add("fcmon_cert_not_after_timestamp_seconds", "fcmon_cert_not_after_timestamp_seconds",
            _cert_labels(c), c.not_after)
    if r.tls_version:
        add("fcmon_tls_info", "fcmon_tls_info", (("version", r.tls_version), ("cipher", r.tls_cipher or "")), 1)
    return out


def server_labels(server: ServerInfo) -> Labels:
    """Only the fields the server sent: an absent one is no label at all
    (Prometheus treats an empty label as absent anyway)."""
    out: Labels = ()
    if server.version is not None:
        out += (("version", server.version),)
    if server.hostname is not None:
        out += (("hostname", server.hostname),)
    return out


def _cert_labels(c: CertInfo) -> Labels:
    return (("cert", c.role), ("subject", c.subject), ("serial", c.serial))


def _listener_labels(x: ListenerResult) -> Labels:
    return (("listener", x.listener.name), ("port", str(x.listener.port)))


def expiry_samples(name: str, s: _TargetState, now: float) -> List[Sample]:
    """The time-dependent days left of the target's and its listeners' certificates."""
    out: List[Sample] = []
    if s.latest is not None:
        out += [
            (EXPIRY_DAYS, (("target", name),) + _cert_labels(c), (c.not_after - now) / SECONDS_PER_DAY)
            for c in s.latest.certs
        ]
    if s.listeners is not None:
        out += [
            (LISTENER_EXPIRY_DAYS, (("target", name),) + _listener_labels(x) + _cert_labels(c),
             (c.not_after - now) / SECONDS_PER_DAY)
            for x in s.listeners.results for c in x.certs
        ]
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
