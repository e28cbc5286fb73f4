"""APScheduler wiring: one job per target.

APScheduler's defaults silently drop work (10 workers, 1 s misfire grace;
docs/design-notes.md#apscheduler-defaults-drop-work): here the pool is
sized for the worst case of every target hanging until its timeout, the
grace is the interval, and every skipped or missed run is counted.

Targets run on phases spread evenly over the interval, so the steady load
is flat. Only the first round is compressed: the first 200 first probes
start 5 ms apart, the rest 10 ms apart, so `/-/ready`, which waits for
every target's first result, comes within about a second for 100 targets
instead of one interval, and every target has series by then.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from ..config import TargetConfig
from ..probe.flight import SKIP_MISSED, SKIP_STILL_RUNNING, Flights, Skipped
from ..probe.listeners import round_budget
from ..probe.run import CLEANUP_GRACE, Prober
from ..probe.result import ProbeResult

log = logging.getLogger(__name__)

MAX_WORKERS = 256
# A scheduled probe may wait this share of its timeout for a slot on its
# FairCom server; the wait counts against its deadline, so a probe that
# starts still has at least the rest. No slot by then: skipped (server_busy).
MAX_SLOT_WAIT_SHARE = 0.5
# Skips of one target are logged at most once per this many seconds (the
# counter has every one).
SKIP_LOG_EVERY = 60.0
# Gaps between first probes at start-up (and of targets a reload adds): the
# first FIRST_ROUND_BURST 5 ms apart, the rest 10 ms apart (100 a second,
# the steady rate of 3,000 targets at 30 s). Faster would pile up hung
# first probes in the pool and overload a small machine.
FIRST_ROUND_SPACING = 0.005
FIRST_ROUND_BURST = 200
FIRST_ROUND_SPACING_AFTER_BURST = 0.010


# Listener rounds (fcmon/probe/listeners.py) run in their own executor of the same
# scheduler, so a round of hung listeners never holds a probe's worker.
LISTENER_JOB_PREFIX = "listeners/"  # "/" is not allowed in target names
LISTENER_EXECUTOR = "listeners"
# Listener rounds of a start-up (or reload) begin this long after the
# first probes, so the two first rounds do not compete for the CPU.
LISTENER_FIRST_DELAY = 1.0
# Listeners a round is expected to check when discovery is on: FairCom's
# defaults have two TLS listeners besides the HTTPS API (8883, 9002).
EXPECTED_DISCOVERED = 2


def listener_pool_size(targets: Sequence[TargetConfig]) -> int:
    """Threads for listener rounds if every listener hung until its deadline."""
    busy = 0.0
    for t in targets:
        if not t.checks_listeners:
            continue
        checks = len(t.listeners) + (1 + EXPECTED_DISCOVERED if t.discovers_listeners else 0)
        # a round ends within ROUND_TIMEOUTS timeouts whatever it finds
        busy += (min(checks * t.timeout, round_budget(t)) + 1.0) / t.listener_interval
    return max(2, min(MAX_WORKERS // 4, math.ceil(busy) + 2))


def pool_size(targets: Sequence[TargetConfig]) -> int:
    """Threads needed if every target hung until its deadline, plus headroom."""
    busy = sum((t.timeout + 1.0) / t.interval for t in targets)
    return max(4, min(MAX_WORKERS, math.ceil(busy) + 2))


def phase_offsets(targets: Sequence[TargetConfig]) -> Dict[str, float]:
    """Each target's phase: its steady runs spread evenly over its interval.

    A random phase per target (instead of trigger jitter, which
    accumulates: docs/design-notes.md#apscheduler-jitter-accumulates) would do
    too; even spacing keeps the load flat.
    """
    n = len(targets)
    return {t.name: t.interval * i / n for i, t in enumerate(targets)}


def plan(targets: Sequence[TargetConfig], fresh: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """(first run, phase) offsets in seconds from now for the `fresh` targets
    (new or changed): first runs in `fresh` order at first_round_offset(),
    never later than the target's phase."""
    phases = phase_offsets(targets)
    return {name: (min(phases[name], first_round_offset(i)), phases[name]) for i, name in enumerate(fresh)}


def first_round_offset(i: int) -> float:
    """When the i-th first probe of a round is due, in seconds from its start."""
    if i < FIRST_ROUND_BURST:
        return i * FIRST_ROUND_SPACING
    return FIRST_ROUND_BURST * FIRST_ROUND_SPACING + (i - FIRST_ROUND_BURST) * FIRST_ROUND_SPACING_AFTER_BURST


class PhasedTrigger(BaseTrigger):
    """Fires at `first`, then on `phase` + k * interval.

    Every run after the first is the earliest phase point at least `gap`
    after the previous run: half an interval, or the time a run may take
    (`min_gap`: a probe's timeout and cleanup grace) if that is longer, at
    most one interval. So after the compressed first round the gap between
    a target's first two probes is between `gap` and `gap` + one interval,
    and every later gap is exactly one interval. Without `min_gap` a target
    whose timeout is over half its interval had its second run due while
    its first could still legitimately run (a "still running" skip of a
    healthy target; 13 to 55 of 200 in the first-round test under load).
    """

    __slots__ = ("first", "phase", "interval", "gap")

    def __init__(self, first: dt.datetime, phase: dt.datetime, interval: float, min_gap: float = 0.0):
        self.first = first
        self.phase = phase
        self.interval = dt.timedelta(seconds=interval)
        self.gap = dt.timedelta(seconds=max(interval / 2, min(min_gap, interval)))

    def get_next_fire_time(
        self, previous_fire_time: Optional[dt.datetime], now: dt.datetime
    ) -> Optional[dt.datetime]:
        if previous_fire_time is None:
            return self.first
        earliest = previous_fire_time + self.gap
        k = math.ceil((earliest - self.phase) / self.interval)
        return self.phase + k * self.interval

    def __str__(self) -> str:
        return f"phased[first={self.first.isoformat()}, phase={self.phase.isoformat()}, interval={self.interval}]"


class ProbeScheduler:
    def __init__(
        self,
        prober: Prober,
        on_result: Callable[[ProbeResult], None],
        on_skip: Callable[[str, str], None],
        on_lateness: Callable[[float], None] = lambda seconds: None,
        flights: Optional[Flights] = None,
        check_listeners: Optional[Callable[[TargetConfig], Any]] = None,
        on_listener_round: Callable[[Any], None] = lambda round_: None,
        on_listener_due: Callable[[str, float], None] = lambda name, due: None,
    ):
        self._prober = prober
        # shared with /probe: one probe per target, a few per FairCom host
        self._flights = flights or Flights()
        self._on_result = on_result
        self._on_skip = on_skip
        self._on_lateness = on_lateness  # how late each scheduled run started
        # runs a target's listener round (None: no listener jobs); its
        # result goes to on_listener_round unless the target changed meanwhile
        self._on_listeners = check_listeners
        self._on_listener_round = on_listener_round
        # told when each target's next listener round is due (Unix time)
        self._on_listener_due = on_listener_due
        self._listener_triggers: Dict[str, PhasedTrigger] = {}
        self._listener_workers = 0
        # target -> [first run, phase] as Unix times and the interval: the
        # first run is due at `first`, every later one a whole number of
        # intervals after `phase`. `first` becomes None once it has started.
        self._anchors: Dict[str, List[Any]] = {}
        self._lock = threading.Lock()
        self._targets: Dict[str, TargetConfig] = {}
        self._pending_first: set = set()
        self._workers = 0
        self._stopping = False
        # target -> (monotonic time of the last skip logged, skips not logged since)
        self._skip_logged: Dict[str, Tuple[float, int]] = {}
        self.last_completion: Optional[float] = None  # monotonic
        self._scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    # -- lifecycle

    def start(self, targets: Sequence[TargetConfig]) -> None:
        self._workers = pool_size(targets)
        self._scheduler.add_executor(ThreadPoolExecutor(self._workers), "default")
        if self._on_listeners is not None:
            self._listener_workers = listener_pool_size(targets)
            self._scheduler.add_executor(ThreadPoolExecutor(self._listener_workers), LISTENER_EXECUTOR)
        # Jobs added before start() are queued and all added at once: adding
        # thousands to a running scheduler wakes it up once per job.
        self.update(targets)
        self._scheduler.start()

    def update(self, targets: Sequence[TargetConfig]) -> None:
        """Make the jobs match `targets`: unchanged targets keep their rhythm."""
        wanted = {t.name: t for t in targets}
        needed = pool_size(targets)
        if needed > self._workers:
            # The old pool finishes its running probes; new runs use the new one.
            self._scheduler.remove_executor("default", shutdown=False)
            self._scheduler.add_executor(ThreadPoolExecutor(needed), "default")
            self._workers = needed
        now = dt.datetime.now(dt.timezone.utc)
        with self._lock:
            current = dict(self._targets)
            # Before any job is added: a job that runs while the others are
            # still being added must find its target, and readiness must
            # already wait for it.
            self._targets = wanted
            self._pending_first = {n for n in self._pending_first if n in wanted} | {
                n for n in wanted if n not in current
            }
        for name in current:
            if name not in wanted:
                self._scheduler.remove_job(name)
                with self._lock:
                    self._anchors.pop(name, None)
                    self._skip_logged.pop(name, None)
        fresh = [name for name, target in wanted.items() if current.get(name) != target]
        for name, (first_s, phase_s) in plan(targets, fresh).items():
            target = wanted[name]
            if name in current:
                self._scheduler.remove_job(name)
            first = now + dt.timedelta(seconds=first_s)
            phase = now + dt.timedelta(seconds=phase_s)
            with self._lock:
                self._anchors[name] = [first.timestamp(), phase.timestamp(), float(target.interval)]
            self._scheduler.add_job(
                self._run,
                trigger=PhasedTrigger(first, phase, target.interval, target.timeout + CLEANUP_GRACE),
                args=(target,),
                id=name,
                name=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(target.interval)),
                next_run_time=first,
            )
        if self._on_listeners is not None:
            self._update_listener_jobs(targets, current, now)

    def _update_listener_jobs(self, targets: Sequence[TargetConfig], current: Dict[str, TargetConfig],
                              now: dt.datetime) -> None:
        """One job per target that checks listeners, on its own phase of its
        listener_interval; at most one round of a target runs at a time."""
        needed = listener_pool_size(targets)
        if needed > self._listener_workers:
            self._scheduler.remove_executor(LISTENER_EXECUTOR, shutdown=False)
            self._scheduler.add_executor(ThreadPoolExecutor(needed), LISTENER_EXECUTOR)
            self._listener_workers = needed
        checking = [t for t in targets if t.checks_listeners]
        wanted = {t.name: t for t in checking}
        for name, old in current.items():
            if old.checks_listeners and (name not in wanted or wanted[name] != old):
                self._scheduler.remove_job(LISTENER_JOB_PREFIX + name)
                self._listener_triggers.pop(name, None)
        n = len(checking)
        position = {t.name: k for k, t in enumerate(checking)}
        fresh = [t for t in checking if current.get(t.name) != t]
        for i, target in enumerate(fresh):
            phase_s = target.listener_interval * position[target.name] / n
            first_s = min(phase_s, LISTENER_FIRST_DELAY + first_round_offset(i))
            first = now + dt.timedelta(seconds=first_s)
            trigger = PhasedTrigger(first, now + dt.timedelta(seconds=phase_s), target.listener_interval)
            self._listener_triggers[target.name] = trigger
            self._scheduler.add_job(
                self._run_listeners,
                trigger=trigger,
                args=(target,),
                id=LISTENER_JOB_PREFIX + target.name,
                name=LISTENER_JOB_PREFIX + target.name,
                executor=LISTENER_EXECUTOR,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(target.listener_interval)),
                next_run_time=first,
            )
            self._on_listener_due(target.name, first.timestamp())

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, return once in-flight probes have
        finished. Runs still queued in the pools return at once."""
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    # -- state

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    @property
    def first_round_done(self) -> bool:
        with self._lock:
            return not self._pending_first

    @property
    def workers(self) -> int:
        return self._workers

    # -- jobs

    def _run(self, target: TargetConfig) -> None:
        # Lateness is taken when the probe starts, after any wait for a slot
        # on its FairCom server (or when it joins a probe already in flight).
        # The wait counts against the probe's deadline.
        if self._stopping:
            return
        asked = time.monotonic()
        deadline = asked + target.timeout
        try:
            _, ran = self._flights.run(
                target, lambda t: self._prober.probe(t, deadline),
                on_start=lambda: self._record_lateness(target.name, time.time()),
                on_result=lambda result: self._record(target, result),
                wait_until=asked + target.timeout * MAX_SLOT_WAIT_SHARE)
        except Skipped as skip:
            # Tried, and its server is busy: readiness does not wait for it
            # (a dead server's 2,000 targets would hold /-/ready for minutes).
            self._completed(target, result=False)
            with self._lock:
                anchor = self._anchors.get(target.name)
                if anchor is not None:
                    # later runs' lateness is measured on the phase, not from
                    # this first due time (it read as a whole interval late)
                    anchor[0] = None
            self._skip(target.name, skip.reason, skip.message)
            return
        if not ran:
            self._completed(target)  # a /probe caller ran it and recorded it

    def _completed(self, target: TargetConfig, result: bool = True) -> bool:
        """The target's first round is done (a result, or a skip); with a
        `result`, a probe completed. False: reconfigured or removed meanwhile."""
        with self._lock:
            if self._targets.get(target.name) != target:
                return False
            self._pending_first.discard(target.name)
        if result:
            self.last_completion = time.monotonic()
        return True

    def _record(self, target: TargetConfig, result: ProbeResult) -> None:
        if not self._completed(target):
            return
        try:
            self._on_result(result)
        except Exception:  # the boundary: never kill the worker
            log.exception("handling the result of %s failed", target.name)

    def _run_listeners(self, target: TargetConfig) -> None:
        if self._stopping:
            return
        with self._lock:
            if self._targets.get(target.name) != target:
                return  # reconfigured or removed before it started
        assert self._on_listeners is not None
        started = dt.datetime.now(dt.timezone.utc)
        try:
            round_ = self._on_listeners(target)
            with self._lock:
                if self._targets.get(target.name) != target:
                    return  # reconfigured or removed while it ran
            if round_ is not None:
                self._on_listener_round(round_)
            # Not the job's next_run_time: get_job() waits for the job store
            # lock, which shutdown() holds while it waits for this very job.
            trigger = self._listener_triggers.get(target.name)
            if trigger is not None:
                now = dt.datetime.now(dt.timezone.utc)
                due = trigger.get_next_fire_time(started, now)
                if due is not None:
                    self._on_listener_due(target.name, due.timestamp())
        except Exception:  # the boundary: never kill the worker
            log.exception("listener check of %s failed", target.name)

    def _record_lateness(self, name: str, started: float) -> None:
        """Start time minus scheduled time. After the first run the due time
        is the latest phase point (coalesced runs: the latest one is run), so
        a run started more than one interval late, already counted as
        skipped, shows as its lateness modulo the interval."""
        with self._lock:
            anchor = self._anchors.get(name)
            if anchor is None:
                return
            first, phase, interval = anchor
            anchor[0] = None
        if first is not None:
            lateness = max(0.0, started - first)
        else:
            behind = started - phase
            lateness = behind % interval if behind > 0 else 0.0
        try:
            self._on_lateness(lateness)
        except Exception:  # the boundary: never kill the worker
            log.exception("recording start lateness failed")

    def _skipped(self, event: JobEvent) -> None:
        if event.job_id.startswith(LISTENER_JOB_PREFIX):
            log.warning("listener check of %s skipped: %s", event.job_id[len(LISTENER_JOB_PREFIX):],
                        "previous round still running" if event.code == EVENT_JOB_MAX_INSTANCES else "run missed")
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self._skip(event.job_id, SKIP_STILL_RUNNING, "previous run still running")
        else:
            self._skip(event.job_id, SKIP_MISSED, "run missed (not started within its grace time)")

    def _skip(self, name: str, reason: str, message: str) -> None:
        """Count every skip; log the first of a target, then at most one a SKIP_LOG_EVERY."""
        now = time.monotonic()
        with self._lock:
            last, unlogged = self._skip_logged.get(name, (-math.inf, 0))
            due = now - last >= SKIP_LOG_EVERY
            self._skip_logged[name] = (now, 0) if due else (last, unlogged + 1)
        if due:
            more = f" (and {unlogged} more skips since the last message)" if unlogged else ""
            log.warning("probe of %s skipped (%s): %s%s", name, reason, message, more)
        try:
            self._on_skip(name, reason)
        except Exception:  # the boundary: never kill the worker
            log.exception("counting a skipped probe of %s failed", name)
