"""The scheduler: sizing, staggering, and skipped runs counted."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter

import pytest

from fcmon.emulator import Emulator, Fault
from fcmon.probe.flight import Flights
from fcmon.probe.run import Prober
from fcmon.service.scheduler import (
    FIRST_ROUND_BURST,
    FIRST_ROUND_SPACING,
    FIRST_ROUND_SPACING_AFTER_BURST,
    MAX_WORKERS,
    PhasedTrigger,
    ProbeScheduler,
    phase_offsets,
    plan,
    pool_size,
)

from support import PKI, Blackhole, make_target, wait_for


def test_pool_size_covers_every_target_hanging() -> None:
    from fcmon.config import TargetConfig

    targets = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=30, timeout=10) for i in range(300)]
    # 300 targets that may each hold a worker for 11 s of every 30 s.
    assert pool_size(targets) >= 300 * 11 / 30
    assert pool_size(targets[:1]) >= 4
    many = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=2, timeout=1) for i in range(10000)]
    assert pool_size(many) == MAX_WORKERS


def test_phases_are_spread_over_the_interval() -> None:
    from fcmon.config import TargetConfig

    targets = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=60, timeout=10) for i in range(4)]
    assert sorted(phase_offsets(targets).values()) == [0, 15, 30, 45]


def test_first_round_is_compressed_and_never_after_the_phase() -> None:
    from fcmon.config import TargetConfig

    targets = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=60, timeout=10) for i in range(100)]
    p = plan(targets, [t.name for t in targets])
    firsts = sorted(first for first, _ in p.values())
    # One after the other, FIRST_ROUND_SPACING apart: 100 targets in half a second.
    assert firsts[0] == 0
    assert firsts[-1] == pytest.approx(99 * FIRST_ROUND_SPACING)
    assert all(b - a == pytest.approx(FIRST_ROUND_SPACING) for a, b in zip(firsts, firsts[1:]))
    assert all(first <= phase for first, phase in p.values())
    # Later runs still spread evenly over the interval.
    assert sorted(phase for _, phase in p.values()) == [60 * i / 100 for i in range(100)]
    # Past the burst, first probes come at the steady rate of a large fleet.
    many = [TargetConfig(name=f"m{i}", endpoint="https://x/api", interval=60, timeout=10) for i in range(1000)]
    firsts = sorted(first for first, _ in plan(many, [t.name for t in many]).values())
    gaps = [b - a for a, b in zip(firsts, firsts[1:])]
    assert gaps[: FIRST_ROUND_BURST - 1] == pytest.approx([FIRST_ROUND_SPACING] * (FIRST_ROUND_BURST - 1))
    assert gaps[FIRST_ROUND_BURST:] == pytest.approx([FIRST_ROUND_SPACING_AFTER_BURST] * (999 - FIRST_ROUND_BURST))
    # A reload that adds one target probes it at once, on its own phase afterwards.
    assert plan(targets, ["t99"]) == {"t99": (0.0, 59.4)}
    # Few targets and a short interval: the phase comes first.
    short = [TargetConfig(name=f"s{i}", endpoint="https://x/api", interval=0.004, timeout=0.002) for i in range(4)]
    assert [first for first, _ in plan(short, [t.name for t in short]).values()] == [0, 0.001, 0.002, 0.003]


def _fires(trigger: PhasedTrigger, n: int) -> list:
    out, prev = [], None
    now = trigger.first
    for _ in range(n):
        prev = trigger.get_next_fire_time(prev, now)
        out.append(prev)
    return out


def test_phased_trigger_moves_from_the_first_run_onto_the_phase() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    sec = dt.timedelta(seconds=1)
    # Phase late in the interval: the second run is that phase point, in the first interval.
    late = _fires(PhasedTrigger(t0, t0 + 50 * sec, 60), 4)
    assert late == [t0, t0 + 50 * sec, t0 + 110 * sec, t0 + 170 * sec]
    # Phase early: the next phase point is under half an interval away, so the one after.
    early = _fires(PhasedTrigger(t0, t0 + 10 * sec, 60), 3)
    assert early == [t0, t0 + 70 * sec, t0 + 130 * sec]
    # First run on the phase itself: a plain interval.
    assert _fires(PhasedTrigger(t0, t0, 60), 3) == [t0, t0 + 60 * sec, t0 + 120 * sec]
    # Whatever the phase, the first gap stays within half and one and a half intervals.
    for phase in range(0, 60, 7):
        first, second = _fires(PhasedTrigger(t0, t0 + phase * sec, 60), 2)
        assert 30 * sec <= second - first <= 90 * sec
    # A timeout over half the interval: the second run never comes before
    # the first may have ended (timeout + cleanup), later gaps stay one interval.
    for phase in range(0, 4000, 250):
        fires = _fires(PhasedTrigger(t0, t0 + phase * sec / 1000, 4, min_gap=3.9), 4)
        assert 3.9 * sec <= fires[1] - fires[0] < 7.9 * sec
        assert fires[2] - fires[1] == fires[3] - fires[2] == 4 * sec


def test_phased_trigger_after_a_late_run_stays_on_the_phase() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    sec = dt.timedelta(seconds=1)
    trigger = PhasedTrigger(t0, t0 + 20 * sec, 60)
    # APScheduler passes the scheduled time of the run it just made, even when
    # the run itself started late: the next is the phase point after it.
    assert trigger.get_next_fire_time(t0 + 200 * sec, t0 + 230 * sec) == t0 + 260 * sec


class Collect:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list = []
        self.skipped: Counter = Counter()
        self.reasons: Counter = Counter()

    def result(self, r) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.results.append(r)

    def skip(self, name: str, reason: str) -> None:
        with self.lock:
            self.skipped[name] += 1
            self.reasons[reason] += 1

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for r in self.results if r.target == name)


@pytest.mark.slow
def test_targets_probed_on_schedule_and_slow_runs_counted_as_skipped(test_pki: PKI, emulator: Emulator) -> None:
    fast = make_target(test_pki, emulator, name="fast", interval=1.0, timeout=0.9)
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as slow_server:
        # deleteSession may run past the timeout (cleanup grace): a run is
        # still going when the next one is due.
        slow_server.set_fault("deleteSession", Fault(delay=1.5))
        slow = make_target(test_pki, slow_server, name="slow", interval=1.0, timeout=0.9)
        collect = Collect()
        sched = ProbeScheduler(Prober(), collect.result, collect.skip)
        sched.start([slow, fast])
        try:
            assert sched.running
            wait_for(lambda: collect.count("fast") >= 3 and collect.skipped["slow"] >= 1, timeout=20)
            assert sched.first_round_done
        finally:
            sched.shutdown(wait=True)
        assert not sched.running
        assert collect.skipped["fast"] == 0
    assert emulator.open_sessions() == 0


@pytest.mark.slow
def test_update_removes_and_adds_jobs(test_pki: PKI, emulator: Emulator) -> None:
    a = make_target(test_pki, emulator, name="a", interval=1.0, timeout=0.9)
    b = make_target(test_pki, emulator, name="b", interval=1.0, timeout=0.9)
    collect = Collect()
    sched = ProbeScheduler(Prober(), collect.result, collect.skip)
    sched.start([a])
    try:
        wait_for(lambda: collect.count("a") >= 1)
        sched.update([b])
        assert not sched.first_round_done
        wait_for(lambda: collect.count("b") >= 2)
        n = collect.count("a")
        wait_for(lambda: collect.count("b") >= 4)
        assert collect.count("a") <= n + 1  # at most one run of a was already in flight
    finally:
        sched.shutdown(wait=True)


@pytest.mark.slow
def test_many_targets_first_round_counts_every_result(test_pki: PKI, emulator: Emulator) -> None:
    """Jobs that run while the others are still being added are neither lost
    nor let readiness through early."""
    # 200 targets on one server and user: the compressed first round may hold
    # more than FairCom's 50 sessions per user at once on a loaded machine
    # (this emulator shares the test's GIL); that limit is not under test
    # here, nor is the cap on probes per FairCom host.
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, max_sessions_per_user=1024,
                  max_sessions_per_ip=1024) as server:
        targets = [make_target(test_pki, server, name=f"t{i:03d}", interval=4.0, timeout=3.0) for i in range(200)]
        collect = Collect()
        sched = ProbeScheduler(Prober(), collect.result, collect.skip, flights=Flights(per_host=1024))
        sched.start(targets)
        try:
            assert not sched.first_round_done
            wait_for(lambda: sched.first_round_done, timeout=30)
            assert {r.target for r in collect.results} == {t.name for t in targets}
        finally:
            sched.shutdown(wait=True)
        # Every probe that ran (one session each) delivered its result.
        assert len(collect.results) == server.sessions_created()
        assert all(r.up for r in collect.results)
        assert sum(collect.skipped.values()) == 0, collect.reasons
        assert server.open_sessions() == 0


@pytest.mark.slow
def test_first_round_done_within_seconds_although_the_interval_is_long(
    test_pki: PKI, emulator: Emulator
) -> None:
    """Readiness waits for every first result, not for one staggered interval."""
    targets = [make_target(test_pki, emulator, name=f"r{i:02d}", interval=300.0, timeout=5.0) for i in range(30)]
    collect = Collect()
    sched = ProbeScheduler(Prober(), collect.result, collect.skip)
    t0 = time.monotonic()
    sched.start(targets)
    try:
        wait_for(lambda: sched.first_round_done, timeout=30)
        took = time.monotonic() - t0
        assert {r.target for r in collect.results} == {t.name for t in targets}
        # Phases spread over 300 s: without the compressed first round the
        # last target would be probed about 290 s from now.
        assert took < 60
        starts = sorted(r.started for r in collect.results)
        assert starts[-1] - starts[0] >= 29 * FIRST_ROUND_SPACING * 0.9  # spaced, not all at once
        # No target runs a second time until its phase, at least half an interval later.
        time.sleep(1.0)
        assert len(collect.results) == len(targets)
    finally:
        sched.shutdown(wait=True)


def test_a_healthy_target_is_probed_every_interval_whatever_its_dead_neighbours_do(
        test_pki: PKI, emulator: Emulator) -> None:
    """200 targets on the host name `localhost` at a port that accepts and
    never answers, 5 healthy ones on `localhost` at the emulator: the
    healthy ones are probed every interval (gap bound: the first gap may be
    1.5 intervals, PhasedTrigger; plus the timeout and a second for a loaded
    machine), never skipped, and the dead ones' skips are counted with
    their reason. Before the cap was keyed by server and served in turn,
    the healthy targets waited behind the dead ones' slots."""
    interval, timeout = 2.0, 1.0
    with Blackhole() as hole:
        dead = [make_target(test_pki, emulator, name=f"dead{i:03d}", endpoint=f"https://localhost:{hole.port}/api",
                            interval=interval, timeout=timeout) for i in range(200)]
        url = emulator.url.replace("127.0.0.1", "localhost")
        healthy = [make_target(test_pki, emulator, name=f"ok{i}", endpoint=url, interval=interval, timeout=timeout)
                   for i in range(5)]
        fleet = dead[:100] + healthy + dead[100:]
        collect = Collect()
        lateness: list = []
        sched = ProbeScheduler(Prober(), collect.result, collect.skip, lateness.append, flights=Flights(per_host=8))
        t0 = time.monotonic()
        sched.start(fleet)
        try:
            time.sleep(4 * interval + 1.0)
        finally:
            sched.shutdown(wait=True)
        took = time.monotonic() - t0
    bound = 1.5 * interval + timeout + 1.0
    for t in healthy:
        starts = sorted(r.started for r in collect.results if r.target == t.name)
        assert all(r.up for r in collect.results if r.target == t.name)
        assert len(starts) >= 4, (t.name, len(starts), took)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert max(gaps) <= bound, (t.name, gaps)
        assert collect.skipped[t.name] == 0
    # the dead server's probes beyond its slots were skipped, each counted with its reason
    assert collect.reasons["server_busy"] > 0
    assert set(collect.reasons) <= {"server_busy", "still_running", "missed"}
    assert sum(collect.skipped[t.name] for t in dead) == sum(collect.reasons.values())
    # a run after a skipped first run is late by its wait, not by the
    # intervals since that first due time
    assert max(lateness) < interval, sorted(lateness)[-5:]
