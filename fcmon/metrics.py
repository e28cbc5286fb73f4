"""ProbeResults -> Prometheus metric families.

`MetricsStore` keeps the latest result of each target and the cumulative
counters; `FcmonCollector` renders a snapshot of it on every scrape, so a
target removed from the store has no series at all. The collector knows
nothing of HTTP or TLS.

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

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .config import TargetConfig
from .result import ProbeResult

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
SECONDS_PER_DAY = 86400.0


@dataclass
class _Histogram:
    counts: List[int] = field(default_factory=lambda: [0] * len(REQUEST_BUCKETS))
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(REQUEST_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value

    def cumulative(self) -> List[Tuple[str, float]]:
        out = []
        running = 0
        for bound, count in zip(REQUEST_BUCKETS, self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class _TargetState:
    endpoint: str
    username: str
    latest: Optional[ProbeResult] = None
    last_success: Optional[float] = None
    databases: Optional[int] = None
    probes: int = 0
    skipped: int = 0
    leaks: int = 0
    failures: Dict[Tuple[str, str], int] = field(default_factory=dict)
    api_errors: Dict[Tuple[str, int], int] = field(default_factory=dict)
    last_error_code: Dict[str, int] = field(default_factory=dict)
    requests: Dict[str, _Histogram] = field(default_factory=dict)


class MetricsStore:
    """Thread-safe store of everything the collector exports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: Dict[str, _TargetState] = {}
        self._reload_ok: Optional[bool] = None
        self._reload_ok_at: Optional[float] = None

    def set_targets(self, targets: Sequence[TargetConfig]) -> None:
        """Make the store hold exactly these targets; a removed target's series vanish."""
        with self._lock:
            fresh: Dict[str, _TargetState] = {}
            for t in targets:
                state = self._targets.get(t.name) or _TargetState(t.endpoint, t.username or "")
                state.endpoint, state.username = t.endpoint, t.username or ""
                fresh[t.name] = state
            self._targets = fresh

    def record(self, result: ProbeResult) -> None:
        with self._lock:
            state = self._targets.get(result.target)
            if state is None:  # removed while its probe was running
                return
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
            for call in result.calls:
                state.requests.setdefault(call.action, _Histogram()).observe(call.duration)
                if call.error_code is None:
                    state.last_error_code.pop(call.action, None)
                    continue
                state.last_error_code[call.action] = call.error_code
                if call.error_code != 0:
                    key2 = (call.action, call.error_code)
                    state.api_errors[key2] = state.api_errors.get(key2, 0) + 1

    def record_skipped(self, target: str) -> None:
        with self._lock:
            state = self._targets.get(target)
            if state is not None:
                state.skipped += 1

    def record_reload(self, ok: bool, when: float) -> None:
        with self._lock:
            self._reload_ok = ok
            if ok:
                self._reload_ok_at = when

    def latest(self, target: str) -> Optional[ProbeResult]:
        with self._lock:
            state = self._targets.get(target)
            return state.latest if state else None

    def snapshot(self) -> "Snapshot":
        with self._lock:
            # ProbeResults are frozen; only the small mutable parts are copied.
            targets = {name: copy.copy(s) for name, s in self._targets.items()}
            for s in targets.values():
                s.failures = dict(s.failures)
                s.api_errors = dict(s.api_errors)
                s.last_error_code = dict(s.last_error_code)
                s.requests = {a: _Histogram(list(h.counts), h.total) for a, h in s.requests.items()}
            return Snapshot(targets, self._reload_ok, self._reload_ok_at)


@dataclass(frozen=True)
class Snapshot:
    targets: Dict[str, _TargetState]
    reload_ok: Optional[bool]
    reload_ok_at: Optional[float]


class FcmonCollector(Collector):
    """Renders the store; `only_target` limits it to one target (for /probe)."""

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
        snap = self._store.snapshot()
        targets = snap.targets
        if self._only is not None:
            targets = {k: v for k, v in targets.items() if k == self._only}
        now = self._clock()
        yield from _target_families(targets, now)
        if self._only is None:
            yield from _global_families(snap)


def _target_families(targets: Dict[str, _TargetState], now: float) -> Iterable[Metric]:
    up = GaugeMetricFamily("fcmon_up", "1 if the last probe created, used and deleted a session", labels=["target"])
    duration = GaugeMetricFamily("fcmon_probe_duration_seconds", "Wall time of the last probe", labels=["target"])
    steps = GaugeMetricFamily(
        "fcmon_step_duration_seconds", "Last probe's time per step", labels=["target", "step"]
    )
    requests = HistogramMetricFamily(
        "fcmon_request_duration_seconds", "Latency of every API call", labels=["target", "action"]
    )
    error_code = GaugeMetricFamily(
        "fcmon_api_error_code", "errorCode of the last call of each action (0 = success)",
        labels=["target", "action"],
    )
    api_errors = CounterMetricFamily(
        "fcmon_api_errors", "Calls that returned a non-zero errorCode", labels=["target", "action", "code"]
    )
    probes = CounterMetricFamily("fcmon_probes", "Probes run", labels=["target"])
    failures = CounterMetricFamily(
        "fcmon_probe_failures", "Failed probes", labels=["target", "stage", "reason"]
    )
    last_probe = GaugeMetricFamily(
        "fcmon_last_probe_timestamp_seconds", "End of the last probe (Unix time)", labels=["target"]
    )
    last_success = GaugeMetricFamily(
        "fcmon_last_success_timestamp_seconds", "End of the last successful probe (Unix time)",
        labels=["target"],
    )
    databases = GaugeMetricFamily(
        "fcmon_databases", "Databases listed by the last successful listDatabases", labels=["target"]
    )
    cert_labels = ["target", "cert", "subject", "serial"]
    not_after = GaugeMetricFamily(
        "fcmon_cert_not_after_timestamp_seconds", "Certificate expiry (Unix time)", labels=cert_labels
    )
    expiry_days = GaugeMetricFamily(
        "fcmon_cert_expiry_days", "Days until the certificate expires (negative once expired)",
        labels=cert_labels,
    )
    tls = GaugeMetricFamily("fcmon_tls_info", "TLS version and cipher of the last handshake",
                            labels=["target", "version", "cipher"])
    leaks = CounterMetricFamily(
        "fcmon_session_leaks", "Sessions created whose deleteSession did not succeed", labels=["target"]
    )
    skipped = CounterMetricFamily(
        "fcmon_probes_skipped", "Scheduled runs skipped: previous run still running, or missed",
        labels=["target"],
    )
    info = GaugeMetricFamily("fcmon_target_info", "Configured target", labels=["target", "endpoint", "username"])

    for name, s in sorted(targets.items()):
        info.add_metric([name, s.endpoint, s.username], 1)
        probes.add_metric([name], s.probes)
        skipped.add_metric([name], s.skipped)
        leaks.add_metric([name], s.leaks)
        for (stage, reason), n in sorted(s.failures.items()):
            failures.add_metric([name, stage, reason], n)
        for (action, code), n in sorted(s.api_errors.items()):
            api_errors.add_metric([name, action, str(code)], n)
        for action, code in sorted(s.last_error_code.items()):
            error_code.add_metric([name, action], code)
        for action, hist in sorted(s.requests.items()):
            requests.add_metric([name, action], hist.cumulative(), hist.total)
        if s.last_success is not None:
            last_success.add_metric([name], s.last_success)
        if s.databases is not None:
            databases.add_metric([name], s.databases)
        r = s.latest
        if r is None:
            continue
        up.add_metric([name], 1 if r.up else 0)
        duration.add_metric([name], r.duration)
        last_probe.add_metric([name], r.ended)
        for step, seconds in r.steps:
            steps.add_metric([name, step], seconds)
        for c in r.certs:
            labels = [name, c.role, c.subject, c.serial]
            not_after.add_metric(labels, c.not_after)
            expiry_days.add_metric(labels, (c.not_after - now) / SECONDS_PER_DAY)
        if r.tls_version:
            tls.add_metric([name, r.tls_version, r.tls_cipher or ""], 1)

    return (
        up, duration, steps, requests, error_code, api_errors, probes, failures, last_probe,
        last_success, databases, not_after, expiry_days, tls, leaks, skipped, info,
    )


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
