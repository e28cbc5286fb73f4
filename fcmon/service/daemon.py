"""Lifecycle of `fcmon run`: start, signals, reload, sd_notify, stop.

Signal handlers only set events; the main thread does the work, so a
reload or a stop never runs inside an interrupted probe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..probe import debuglog
from ..config import Config, ConfigError, TargetConfig, load_config
from ..export.exposition import TextRenderer
from ..probe.flight import Busy, Flights, Slots
from .handling import ResultHandling
from ..probe.listeners import ListenerChecker, ListenerRound
from .instance import instance_id
from .logs import setup_logging
from ..export.metrics import FcmonCollector, MetricsStore
from .notify import Notifier, probes_keep_completing, stall_limit, watchdog_ping_due
from ..probe.run import Prober
from ..probe.result import ProbeResult
from .reuse import Kept, RecentResults
from ..web.httpd import BASE_FD_RESERVE, REJECT_REASONS, connection_cap
from .scheduler import MAX_SLOT_WAIT_SHARE, ProbeScheduler, listener_pool_size, pool_size
from ..export.status import StatusBoard, one_line
from ..web.app import LANES, PAGE_LANE, App, WebServer, server_ssl_context

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config, environ: Mapping[str, str] = os.environ):
        self.config = config
        self._environ = environ
        self.store = MetricsStore()
        self.prober = Prober(instance_id=instance_id(config))
        process = CollectorRegistry()
        ProcessCollector(registry=process)
        self.renderer = TextRenderer(self.store, process)
        # One gate for every probe: single flight per target, a cap per
        # FairCom host, and a cap on the probes /probe may start.
        self.flights = Flights(config.max_connections_per_host)
        self.probe_slots = Slots(config.max_probe_requests)
        # /probe's results, served again for probe_reuse_window seconds.
        self.recent = RecentResults(config.probe_reuse_window)
        self.listeners = ListenerChecker(self.prober)
        # A due discovery rides on a probe's connection: no handshake of its own.
        self.prober.after_probe = self.listeners.piggyback
        self.scheduler = ProbeScheduler(self.prober, self._on_result, self.store.record_skipped,
                                        self.store.record_lateness, self.flights,
                                        check_listeners=self.listeners.run,
                                        on_listener_round=self._on_listener_round,
                                        on_listener_due=self.listeners.expect)
        self.notifier = Notifier(environ)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._started = time.monotonic()
        self._up: Dict[str, bool] = {}
        # target -> serverVersion of its last successful createSession
        self._versions: Dict[str, Optional[str]] = {}
        self._up_lock = threading.Lock()
        self._handling = ResultHandling()
        self.store.set_targets(config.targets)
        self.store.record_reload(True, time.time())
        self.board = StatusBoard(__version__)
        self.board.set_runbook_url(config.runbook_url)
        self.board.set_targets(config.targets)
        self.app = App(self.renderer.body, self.healthy, self.ready, self.probe_answer, config.web,
                       status=self.board.snapshot, debug_probe=self.debug_probe,
                       status_changes=self.board.changes, status_reloads=self.board.reloads,
                       on_auth_failure=self.store.record_auth_failure)
        self.store.set_lanes(sorted({lane.name for lane in (*LANES.values(), PAGE_LANE)}))
        self.store.set_reject_reasons(REJECT_REASONS)
        self.web = WebServer(self.app, config.listen_host, config.listen_port,
                             server_ssl_context(config.web), connection_cap(fd_reserve(config)),
                             self.store.record_connection_rejected,
                             on_shed=self.store.record_request_shed,
                             on_dropped=self.store.record_request_dropped)

    # -- health

    # Set by run(): when the stall clock last restarted. A reload reschedules
    # changed targets and drops the result of a probe it cut short, so the
    # time since the last completion says nothing right after one.
    _rescheduled: Optional[float] = None
    _reload_failed = False

    def _stall_limit(self) -> float:
        """How long without a completed probe before the scheduler counts as wedged."""
        targets = self.config.targets
        return stall_limit((t.interval for t in targets), (t.timeout for t in targets))

    def _stall_since(self) -> float:
        return max(self._started, self._rescheduled or 0.0)

    def healthy(self) -> bool:
        """Probes keep completing: what /-/healthy reports and what WATCHDOG=1 promises."""
        return probes_keep_completing(
            scheduler_running=self.scheduler.running,
            scheduled_targets=len(_scheduled(self.config)),
            last_completion=self.scheduler.last_completion,
            since=self._stall_since(),
            now=time.monotonic(),
            limit=self._stall_limit(),
        )

    def ready(self) -> bool:
        return self.scheduler.running and self.scheduler.first_round_done

    # -- probes

    def _on_result(self, result: ProbeResult) -> None:
        # A failure in here is the target's own `internal` (fcmon/service/handling.py),
        # never a swallowed error and a frozen series.
        self._handling.probe(result, self._handle_result)

    def _handle_result(self, result: ProbeResult) -> None:
        self.store.record(result)
        self.board.record(result)
        server = result.server
        with self._up_lock:
            before = self._up.get(result.target)
            self._up[result.target] = result.up
            old_version = self._versions.get(result.target)
            if server is not None and server.version is not None:
                self._versions[result.target] = server.version
        if server is not None and server.version is not None and old_version not in (None, server.version):
            log.info("target %s: server version changed from %r to %r", result.target, old_version, server.version)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("target %s: %s", result.target, debuglog.summary(result))
        f = result.failure
        if f is not None:
            log.warning("target %s: probe failed at %s: %s (%s)", result.target, f.stage, f.reason, f.message)
        elif before is False:
            log.info("target %s: up again", result.target)
        elif before is None:
            log.info("target %s: up (%d databases)", result.target, result.databases or 0)
        if result.session_leaked:
            log.warning("target %s: a session could not be deleted; it expires on the server by itself",
                        result.target)

    def probe_now(self, name: str) -> Optional[CollectorRegistry]:
        """For /probe?target=NAME: only configured names, never an address
        from the caller. Serves the result of a probe of that target that
        ended within probe_reuse_window; else joins a probe of it already in
        flight, or starts one; raises `Busy` when it would start one and
        /probe has started `max_probe_requests` that have not finished."""
        answer = self.probe_answer(name)
        return None if answer is None else answer[0]

    def probe_answer(self, name: str) -> Optional[Tuple[CollectorRegistry, float]]:
        """`probe_now`'s series, and the seconds since that probe ended."""
        done = self._probe_request(name)
        if done is None:
            return None
        kept, registry, _ = done
        return registry, kept.age(self.recent.now())

    def debug_probe(self, name: str) -> Optional[bytes]:
        """For /probe?target=NAME&debug=true: the probe's log, then the
        series /probe would return. A fresh probe (not a reused result),
        one at a time per target and one per probe_reuse_window at most:
        within it, the latest result with its age; `Busy` while one runs."""
        done = self._probe_request(name, debug=True)
        if done is None:
            return None
        kept, registry, fresh = done
        note = "" if fresh else (
            f"# This probe ended {kept.age(self.recent.now()):.1f} s ago: a fresh debug probe runs at most "
            f"once per probe_reuse_window ({self.recent.window:g} s) per target\n")
        return (note + debuglog.render(kept.result, kept.target, self.prober.instance_id) + "\n# Metrics produced by this probe\n").encode() + \
            generate_latest(registry)

    def _probe_request(self, name: str, debug: bool = False) -> Optional[Tuple[Kept, CollectorRegistry, bool]]:
        """The result for a /probe call, its series, and whether this call probed."""
        target = next((t for t in self.config.targets if t.name == name), None)
        if target is None:
            return None
        kept = None
        forced = None
        if debug:
            forced = self.recent.start_forced(name)
            if forced is None:  # a debug probe of this target is running
                self.store.record_probe_request_rejected()
                raise Busy()
            if not forced:
                kept = self.recent.get(target)
        else:
            kept = self.recent.get(target)
        fresh = kept is None
        try:
            if kept is None:
                kept = self._probe_fresh(target)
        finally:
            if forced:
                self.recent.end_forced(name)
        registry = CollectorRegistry()
        registry.register(FcmonCollector(self.store, only_target=name))
        return kept, registry, fresh

    def _probe_fresh(self, target: TargetConfig) -> Kept:
        # As a scheduled probe: the wait for a server slot counts against the
        # deadline, so /probe answers within the target's timeout (+ cleanup).
        asked = time.monotonic()
        try:
            result, _ = self.flights.run(target, lambda t: self.prober.probe(t, asked + t.timeout),
                                         slots=self.probe_slots, on_result=self._on_result,
                                         wait_until=asked + target.timeout * MAX_SLOT_WAIT_SHARE)
        except Busy:  # Skipped (server_busy) included: 503 with Retry-After
            self.store.record_probe_request_rejected()
            raise
        if not self.config.schedule and target.checks_listeners and self.listeners.due(target):
            # Prometheus drives the schedule: a due listener round runs in the
            # background, so this scrape is not held by a hung listener.
            threading.Thread(target=self._listener_round, args=(target,), daemon=True,
                             name=f"listeners:{target.name}").start()
        return self.recent.put(target, result)

    def _on_listener_round(self, round_: ListenerRound) -> None:
        self._handling.listeners(round_, self._handle_listener_round)

    def _handle_listener_round(self, round_: ListenerRound) -> None:
        self.store.record_listeners(round_)
        self.board.record_listeners(round_)

    def _listener_round(self, target: TargetConfig) -> None:
        round_ = self.listeners.run(target)
        if round_ is not None and target in self.config.targets:
            self._on_listener_round(round_)

    # -- signals

    def request_stop(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self, *_: object) -> None:
        self._reload.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload(self) -> bool:
        path = self.config.path
        if path is None:
            return False
        try:
            new = load_config(path, self._environ)
        except ConfigError as exc:
            log.error("config reload failed, keeping the running config:\n%s", exc)
            self.store.record_reload(False, time.time())
            self.board.record_reload(False, one_line(exc.problems))
            return False
        try:
            ssl_context = server_ssl_context(new.web)
        except (OSError, ValueError) as exc:
            log.error("config reload failed, keeping the running config: [web]: %s", exc)
            self.store.record_reload(False, time.time())
            self.board.record_reload(False, one_line([f"[web]: {exc}"]))
            return False
        if (new.listen_host, new.listen_port) != (self.config.listen_host, self.config.listen_port):
            log.warning("[fcmon] listen changed: takes effect after a restart")
        setup_logging(new.log_level, new.log_format, self._environ)
        old, self.config = self.config, new
        self.store.set_targets(new.targets)
        self.board.set_runbook_url(new.runbook_url)
        self.board.set_targets(new.targets)
        self.flights.set_per_host(new.max_connections_per_host)
        self.probe_slots.limit = new.max_probe_requests
        self.recent.window = new.probe_reuse_window
        self.recent.retain(t.name for t in new.targets)
        self.web.max_connections = connection_cap(fd_reserve(new))
        self.prober.set_instance_id(instance_id(new))
        self.prober.retain(new.targets)
        self.listeners.retain(new.targets)
        self.scheduler.update(_scheduled(new))
        self.app.web = new.web
        self.web.max_connections_per_client = new.web.max_connections_per_client
        self.web.set_ssl_context(ssl_context)
        with self._up_lock:
            self._up = {k: v for k, v in self._up.items() if any(t.name == k for t in new.targets)}
            self._versions = {k: v for k, v in self._versions.items() if k in self._up}
        self.store.record_reload(True, time.time())
        self.board.record_reload(True)
        log.info("config reloaded: %s", describe_reload(old.targets, new.targets))
        return True

    # -- main loop

    def status_line(self, healthy: bool = True) -> str:
        """The one line `systemctl status` shows (STATUS=)."""
        with self._up_lock:
            up = sum(1 for v in self._up.values() if v)
        line = f"{plural(len(self.config.targets), 'target')}, {up} up"
        if not healthy:
            line += "; probes stalled" if self.scheduler.running else "; scheduler stopped"
        if self._reload_failed:
            line += "; config reload failed, running the previous config"
        return line

    def _log_health_change(self, healthy: bool, watchdog: bool) -> None:
        if healthy:
            log.info("probes are completing again")
            return
        if not self.scheduler.running:
            why = "the scheduler is not running"
        else:
            last = max(self.scheduler.last_completion or 0.0, self._stall_since())
            why = (f"no probe completed for {time.monotonic() - last:.0f} s "
                   f"(limit {self._stall_limit():.0f} s)")
        then = "stopping watchdog pings: systemd will restart fcmon" if watchdog else "/-/healthy fails"
        log.error("%s: %s", why, then)

    def run(self) -> int:
        self.web.start()
        self.scheduler.start(_scheduled(self.config))
        scheme = "https" if self.config.web.tls_cert_file else "http"
        host = self.config.listen_host
        shown = f"[{host}]" if ":" in host else host
        log.info("serving metrics on %s://%s:%d/metrics", scheme, shown, self.web.port)
        log.info("status page on %s://%s:%d/", scheme, shown, self.web.port)
        # The endpoint listens (bound in WebServer's constructor) and the
        # scheduler runs: only now may systemd start what depends on us.
        status = self.status_line()
        self.notifier.send("READY=1", f"STATUS={status}")
        watchdog = self.notifier.watchdog_interval
        # Pings are due every watchdog/2; waking every watchdog/4 means a ping
        # goes out by 3/4 of systemd's deadline even when it is a tick late.
        tick = min(1.0, watchdog / 4) if watchdog else 1.0
        last_ping: Optional[float] = None
        was_healthy = True
        try:
            while not self._stop.is_set():
                self._wake.wait(tick)
                self._wake.clear()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    ok = self.reload()
                    if ok:
                        self._rescheduled = time.monotonic()
                    self._reload_failed = not ok and self.config.path is not None
                    status = self.status_line()
                    self.notifier.send("READY=1", f"STATUS={status}")
                healthy = self.healthy()
                if healthy != was_healthy:
                    self._log_health_change(healthy, bool(watchdog))
                    was_healthy = healthy
                now = time.monotonic()
                # A ping that could not be sent is retried next tick, not in watchdog/2.
                ping = watchdog and healthy and watchdog_ping_due(now, last_ping, watchdog)
                if ping and self.notifier.send("WATCHDOG=1"):
                    last_ping = now
                line = self.status_line(healthy)
                if line != status:
                    status = line
                    self.notifier.send(f"STATUS={line}")
        finally:
            log.info("stopping: waiting for probes in flight")
            self.notifier.send("STOPPING=1", "STATUS=stopping: waiting for probes in flight")
            # Listener rounds start no further check: a round ends with its
            # current handshake (the target's timeout), whatever it has left.
            self.listeners.stop()
            self.scheduler.shutdown(wait=True)
            self.web.stop()
        log.info("stopped")
        return 0


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


#: Names listed per kind of change in the reload line; a fleet edit stays one readable line.
RELOAD_NAMES_SHOWN = 10


def describe_reload(old: Sequence[TargetConfig], new: Sequence[TargetConfig]) -> str:
    """What a reload changed, by target name: "3 targets; added c; removed a; changed b"
    (or "1 target; no change to targets").

    "changed" is any difference in a target's settings, including one it
    inherits ([defaults], [fcmon] interval/timeout); secrets are compared,
    never shown.
    """
    before = {t.name: t for t in old}
    after = {t.name: t for t in new}
    kinds = (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("changed", [n for n in after if n in before and after[n] != before[n]]),
    )
    parts = [plural(len(new), "target")]
    for kind, names in kinds:
        if names:
            shown = ", ".join(names[:RELOAD_NAMES_SHOWN])
            more = len(names) - RELOAD_NAMES_SHOWN
            parts.append(f"{kind} {shown}" + (f" and {more} more" if more > 0 else ""))
    if len(parts) == 1:
        parts.append("no change to targets")
    return "; ".join(parts)


def fd_reserve(config: Config) -> int:
    """Descriptors no caller of the endpoint can take: two per probe that may
    be in flight (its connection, and a fresh one to delete its session)
    from the scheduler's pool and from /probe, one per listener round that
    may be in flight (its checks connect one at a time), plus fcmon's own files."""
    probes = pool_size(_scheduled(config)) + config.max_probe_requests
    return BASE_FD_RESERVE + 2 * probes + listener_pool_size(config.targets)


def _scheduled(config: Config) -> Tuple[TargetConfig, ...]:
    return config.targets if config.schedule else ()


def run_daemon(config_path: Path, environ: Mapping[str, str] = os.environ) -> int:
    config = load_config(config_path, environ)  # ConfigError is reported by the CLI
    setup_logging(config.log_level, config.log_format, environ)
    daemon = Daemon(config, environ)
    daemon.install_signal_handlers()
    return daemon.run()
