"""The generated fleet adversary: hypothesis draws a fleet and the real
scheduler, flights and listener rounds (and `fcmon run` as a process, for
SIGTERM) run it against real servers on loopback.

Kinds of target, each on its own server (host name and port), the host
name drawn as `localhost` or `127.0.0.1` (so names are shared in any mix)
and every target of a kind sharing its server's port:

- healthy: the emulator, listeners discovered (one good TLS listener);
- slow: another emulator answering listDatabases 150 ms late;
- blackholed: a port that accepts and never answers (up to 60 targets:
  several times the per-server cap);
- refused: a port nobody listens on;
- hung_listener: an emulator whose listServices names 50 ports that never
  handshake (max_listeners drawn small).

A resolver hang needs a mount namespace (root, `unshare`): it is covered by
tests/test_resolver.py with fcmon as a process, not drawn here.

Invariants on every fleet: every healthy target probed within each of its
intervals plus a stated bound (the first gap may be max(interval/2,
timeout + cleanup) + an interval, PhasedTrigger; plus 1 s for a loaded
machine), up every time, never skipped; every skip counted with one of the
documented reasons, `server_busy` never for a healthy target; each
healthy target's listener round comes every listener_interval (same
bound); every round ends within its budget; threads and descriptors back
to baseline after shutdown. The process variant: SIGTERM ends `fcmon run`
within the longest timeout + 5 s, exit 0, no traceback.

`make test` runs a derandomized handful; `make chaos-fleet` a long random
run (FLEET_EXAMPLES, FLEET_SEED).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcmon.config import TargetConfig
from fcmon.emulator import Emulator, Fault, ListenerSpec
from fcmon.probe.flight import SKIP_REASONS, Flights
from fcmon.probe.listeners import ListenerChecker, round_budget
from fcmon.probe.run import CLEANUP_GRACE, Prober
from fcmon.service.scheduler import ProbeScheduler

from support import (PKI, Blackhole, FcmonProcess, free_port, hung_ports, make_target, threads_besides_resolver,
                     write_config)

KINDS = ("healthy", "slow", "blackholed", "refused", "hung_listener")
HOSTS = ("localhost", "127.0.0.1")
SLACK = 1.0  # seconds a loaded 2-core machine may add to a bound


@dataclass(frozen=True)
class Member:
    kind: str
    host: str
    interval: float
    timeout: float
    max_listeners: int


@dataclass(frozen=True)
class Fleet:
    per_host: int
    members: Tuple[Member, ...]

    def __str__(self) -> str:
        counts = Counter(m.kind for m in self.members)
        return f"per_host {self.per_host}, " + ", ".join(f"{k} {counts[k]}" for k in KINDS if counts[k])


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    sizes = {"healthy": (1, 4), "slow": (0, 3), "blackholed": (0, 60), "refused": (0, 4), "hung_listener": (0, 2)}
    members: List[Member] = []
    for kind, (lo, hi) in sizes.items():
        for _ in range(draw(st.integers(lo, hi), label=kind)):
            interval = draw(st.sampled_from([1.0, 1.5, 2.0]))
            timeout = draw(st.sampled_from([0.3, 0.5, 0.8]))
            members.append(Member(kind, draw(st.sampled_from(HOSTS)), interval, timeout,
                                  draw(st.integers(1, 6))))
    order = draw(st.permutations(members))
    return Fleet(draw(st.integers(1, 8), label="per_host"), tuple(order))


@dataclass
class Servers:
    healthy: Emulator
    slow: Emulator
    crowded: Emulator
    blackhole: Blackhole
    refused: int

    def port(self, kind: str) -> int:
        return {"healthy": self.healthy.port, "slow": self.slow.port, "hung_listener": self.crowded.port,
                "blackholed": self.blackhole.port, "refused": self.refused}[kind]


@pytest.fixture(scope="module")
def servers(test_pki: PKI) -> Iterator[Servers]:
    def emulator(**kw: object) -> Emulator:
        return Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                        client_ca_file=test_pki.ca_file, max_sessions_per_user=4096, **kw)  # type: ignore[arg-type]

    with hung_ports(50) as ports, Blackhole() as hole, \
            emulator(listeners=[ListenerSpec("mqtts8883", "mqtts", test_pki.server.cert,
                                             test_pki.server.key)]) as healthy, \
            emulator() as slow, emulator() as crowded:
        slow.set_fault("listDatabases", Fault(delay=0.15))
        crowded.name_services(ports)
        yield Servers(healthy, slow, crowded, hole, free_port())


def targets_of(fleet: Fleet, servers: Servers, test_pki: PKI) -> List[TargetConfig]:
    out = []
    for i, m in enumerate(fleet.members):
        listeners = "auto" if m.kind in ("healthy", "hung_listener") else "none"
        out.append(make_target(
            test_pki, servers.healthy, name=f"{m.kind}{i:02d}",
            endpoint=f"https://{m.host}:{servers.port(m.kind)}/api", interval=m.interval, timeout=m.timeout,
            listeners_mode=listeners, listener_interval=1.5 * m.interval, max_listeners=m.max_listeners))
    return out


def first_gap(t: TargetConfig, interval: float) -> float:
    """The longest gap PhasedTrigger may leave between two runs."""
    return max(interval / 2, min(t.timeout + CLEANUP_GRACE, interval)) + interval


def run_fleet(fleet: Fleet, servers: Servers, test_pki: PKI) -> None:
    targets = targets_of(fleet, servers, test_pki)
    lock = threading.Lock()
    results: Dict[str, List[Tuple[float, bool]]] = {t.name: [] for t in targets}
    skips: Dict[str, Counter] = {t.name: Counter() for t in targets}
    rounds: Dict[str, List[Tuple[float, float]]] = {t.name: [] for t in targets}

    def on_result(r) -> None:  # type: ignore[no-untyped-def]
        with lock:
            results[r.target].append((r.started, r.up))

    def on_skip(name: str, reason: str) -> None:
        with lock:
            skips[name][reason] += 1

    def on_round(r) -> None:  # type: ignore[no-untyped-def]
        # the checks of this round (a listener it did not reach carries its
        # last result, ended before the previous round did): first start to end
        with lock:
            before = rounds[r.target][-1][0] if rounds[r.target] else 0.0
            fresh = [x.ended - x.duration for x in r.results if x.ended > before]
            rounds[r.target].append((r.ended, r.ended - min(fresh) if fresh else 0.0))

    prober = Prober()
    checker = ListenerChecker(prober)
    prober.deadlines.cancel(prober.deadlines.at(time.monotonic() + 60, lambda: None))  # its thread, started
    threads, fds = threads_besides_resolver(), len(os.listdir("/proc/self/fd"))
    sched = ProbeScheduler(prober, on_result, on_skip, flights=Flights(fleet.per_host),
                           check_listeners=checker.run, on_listener_round=on_round)
    longest = max(t.interval for t in targets)
    started = time.time()
    sched.start(targets)
    try:
        time.sleep(3 * longest + 1.0)
    finally:
        checker.stop()
        sched.shutdown(wait=True)
    ended = time.time()
    for t in targets:
        got, skipped = results[t.name], skips[t.name]
        assert set(skipped) <= set(SKIP_REASONS), (t.name, skipped)
        # every target was tried: a result or a counted skip
        assert got or sum(skipped.values()), (t.name, fleet)
        if not t.name.startswith("healthy"):
            continue
        bound = first_gap(t, t.interval) + SLACK
        starts = sorted(s for s, _ in got)
        assert all(up for _, up in got), (t.name, fleet)
        assert not skipped, (t.name, skipped, fleet)
        assert len(starts) >= 2, (t.name, starts, fleet)
        gaps = [b - a for a, b in zip([started] + starts, starts + [ended])]
        assert max(gaps[1:-1], default=0) <= bound, (t.name, gaps, bound, fleet)
        assert gaps[-1] <= bound + t.timeout, (t.name, gaps, fleet)
        # its listener rounds keep coming, whatever the hung listeners do
        assert rounds[t.name], (t.name, fleet)
    for t in targets:
        for _, spent in rounds[t.name]:
            assert spent <= round_budget(t) + SLACK, (t.name, spent, fleet)
    # threads and descriptors back to baseline (the blackhole closes its
    # end once fcmon closed its own)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (threads_besides_resolver() > threads
                                           or len(os.listdir("/proc/self/fd")) > fds):
        time.sleep(0.1)
    assert threads_besides_resolver() <= threads, ("threads", threading.enumerate(), fleet)
    assert len(os.listdir("/proc/self/fd")) <= fds, ("descriptors", len(os.listdir("/proc/self/fd")), fds, fleet)


# `make test`: a derandomized handful; `make chaos-fleet`: a long random run.
FLEET_EXAMPLES = int(os.environ.get("FLEET_EXAMPLES", "0") or 0)
_settings = settings(max_examples=FLEET_EXAMPLES or 2, derandomize=not FLEET_EXAMPLES, deadline=None,
                     database=None, print_blob=True, suppress_health_check=list(HealthCheck))


@_settings
@given(fleet=fleets())
def test_generated_fleet(fleet: Fleet, servers: Servers, test_pki: PKI) -> None:
    run_fleet(fleet, servers, test_pki)


def _section(t: TargetConfig, test_pki: PKI) -> str:
    listeners = "auto" if t.listeners_mode == "auto" else "none"
    return "\n".join([
        f"[target:{t.name}]", f"endpoint = {t.endpoint}", "username = ADMIN", "password = ADMIN",
        f"ca_file = {test_pki.ca_file}", f"client_cert_file = {test_pki.client.cert}",
        f"client_key_file = {test_pki.client.key}", f"interval = {t.interval:g}", f"timeout = {t.timeout:g}",
        f"listeners = {listeners}", f"listener_interval = {t.listener_interval:g}",
        f"max_listeners = {t.max_listeners}", ""])


@pytest.mark.slow
@settings(max_examples=FLEET_EXAMPLES or 1, derandomize=not FLEET_EXAMPLES, deadline=None, database=None,
          print_blob=True, suppress_health_check=list(HealthCheck))
@given(fleet=fleets())
def test_generated_fleet_stops_within_the_bound(fleet: Fleet, servers: Servers, test_pki: PKI,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    targets = targets_of(fleet, servers, test_pki)
    config = write_config(tmp_path_factory.mktemp("fleet") / "config.ini", "\n".join(
        ["[fcmon]", "listen = 127.0.0.1:0", f"max_connections_per_host = {fleet.per_host}", ""]
        + [_section(t, test_pki) for t in targets]))
    with FcmonProcess("run", "-c", str(config)) as fcmon:
        fcmon.metrics_url()
        time.sleep(2 * max(t.interval for t in targets))
        t0 = time.monotonic()
        code = fcmon.stop()
        took = time.monotonic() - t0
    assert code == 0, fcmon.text()[-2000:]
    assert took <= max(t.timeout for t in targets) + 5.0, (took, fleet)
    assert "Traceback" not in fcmon.text()
