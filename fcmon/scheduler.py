"""APScheduler wiring: one interval job per target.

APScheduler's defaults silently drop work (10 workers, 1 s misfire grace,
see pitfalls.md): here the pool is sized for the worst case of every
target hanging until its timeout, the grace is the interval, and every
skipped or missed run is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .config import TargetConfig
from .probe import Prober
from .result import ProbeResult

log = logging.getLogger(__name__)

MAX_WORKERS = 256


def pool_size(targets: Sequence[TargetConfig]) -> int:
    """Threads needed if every target hung until its deadline, plus headroom."""
    busy = sum((t.timeout + 1.0) / t.interval for t in targets)
    return max(4, min(MAX_WORKERS, math.ceil(busy) + 2))


def first_run_offsets(targets: Sequence[TargetConfig]) -> Dict[str, float]:
    """Spread first runs evenly over each target's interval.

    A random first run per target (instead of trigger jitter, which
    accumulates) would do too; even spacing also keeps the load flat.
    """
    n = len(targets)
    return {t.name: t.interval * i / n for i, t in enumerate(targets)}


class ProbeScheduler:
    def __init__(
        self,
        prober: Prober,
        on_result: Callable[[ProbeResult], None],
        on_skip: Callable[[str], None],
        on_lateness: Callable[[float], None] = lambda seconds: None,
    ):
        self._prober = prober
        self._on_result = on_result
        self._on_skip = on_skip
        self._on_lateness = on_lateness  # how late each scheduled run started
        # target -> (first scheduled run as Unix time, interval): every later
        # run is due a whole number of intervals after it.
        self._anchors: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._targets: Dict[str, TargetConfig] = {}
        self._pending_first: set = set()
        self._workers = 0
        self.last_completion: Optional[float] = None  # monotonic
        self._scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    # -- lifecycle

    def start(self, targets: Sequence[TargetConfig]) -> None:
        self._workers = pool_size(targets)
        self._scheduler.add_executor(ThreadPoolExecutor(self._workers), "default")
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
        offsets = first_run_offsets(targets)
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
        for name, target in wanted.items():
            if current.get(name) == target:
                continue
            if name in current:
                self._scheduler.remove_job(name)
            first = now + dt.timedelta(seconds=offsets[name])
            with self._lock:
                self._anchors[name] = (first.timestamp(), float(target.interval))
            self._scheduler.add_job(
                self._run,
                trigger=IntervalTrigger(
                    seconds=target.interval,
                    start_date=now + dt.timedelta(seconds=offsets[name]),
                    timezone=dt.timezone.utc,
                ),
                args=(target,),
                id=name,
                name=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(target.interval)),
                next_run_time=now + dt.timedelta(seconds=offsets[name]),
            )

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, return once in-flight probes have finished."""
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
        self._record_lateness(target.name, time.time())
        result = self._prober.probe(target)
        with self._lock:
            if self._targets.get(target.name) != target:
                return  # reconfigured or removed while it ran
            self._pending_first.discard(target.name)
        self.last_completion = time.monotonic()
        try:
            self._on_result(result)
        except Exception:  # the boundary: never kill the worker
            log.exception("handling the result of %s failed", target.name)

    def _record_lateness(self, name: str, started: float) -> None:
        """Start time minus scheduled time. The due time is the latest whole
        interval after the anchor (coalesced runs: the latest one is run), so
        a run started more than one interval late, already counted as
        skipped, shows as its lateness modulo the interval."""
        with self._lock:
            anchor = self._anchors.get(name)
        if anchor is None:
            return
        first, interval = anchor
        behind = started - first
        lateness = behind % interval if behind > 0 else 0.0
        try:
            self._on_lateness(lateness)
        except Exception:  # the boundary: never kill the worker
            log.exception("recording start lateness failed")

    def _skipped(self, event: JobEvent) -> None:
        log.warning("probe of %s skipped: %s", event.job_id,
                    "previous run still running" if event.code == EVENT_JOB_MAX_INSTANCES else "run missed")
        self._on_skip(event.job_id)
