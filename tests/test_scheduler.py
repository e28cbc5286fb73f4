"""The scheduler: sizing, staggering, and skipped runs counted."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from fcmon.emulator import Emulator, Fault
from fcmon.probe import Prober
from fcmon.scheduler import MAX_WORKERS, ProbeScheduler, first_run_offsets, pool_size

from support import PKI, make_target, wait_for


def test_pool_size_covers_every_target_hanging() -> None:
    from fcmon.config import TargetConfig

    targets = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=30, timeout=10) for i in range(300)]
    # 300 targets that may each hold a worker for 11 s of every 30 s.
    assert pool_size(targets) >= 300 * 11 / 30
    assert pool_size(targets[:1]) >= 4
    many = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=2, timeout=1) for i in range(10000)]
    assert pool_size(many) == MAX_WORKERS


def test_first_runs_are_spread_over_the_interval() -> None:
    from fcmon.config import TargetConfig

    targets = [TargetConfig(name=f"t{i}", endpoint="https://x/api", interval=60, timeout=10) for i in range(4)]
    assert sorted(first_run_offsets(targets).values()) == [0, 15, 30, 45]


class Collect:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list = []
        self.skipped: Counter = Counter()

    def result(self, r) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.results.append(r)

    def skip(self, name: str) -> None:
        with self.lock:
            self.skipped[name] += 1

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
    targets = [make_target(test_pki, emulator, name=f"t{i:03d}", interval=4.0, timeout=3.0) for i in range(200)]
    collect = Collect()
    created = emulator.sessions_created()
    sched = ProbeScheduler(Prober(), collect.result, collect.skip)
    sched.start(targets)
    try:
        assert not sched.first_round_done
        wait_for(lambda: sched.first_round_done, timeout=30)
        assert {r.target for r in collect.results} == {t.name for t in targets}
    finally:
        sched.shutdown(wait=True)
    # Every probe that ran (one session each) delivered its result.
    assert len(collect.results) == emulator.sessions_created() - created
    assert all(r.up for r in collect.results)
    assert sum(collect.skipped.values()) == 0
