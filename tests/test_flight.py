"""No caller can spend FairCom's session budget: one probe per target in
flight (single flight), a few per FairCom host, and a cap on the probes
/probe may start. Against the real emulator; the /probe cases through the
daemon's real web server and wiring."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from fcmon.commands.check import probe_all
from fcmon.config import load_config
from fcmon.service.daemon import Daemon
from fcmon.emulator import Emulator, Fault
from fcmon.probe.flight import SKIP_SERVER_BUSY, WAITERS_PER_SLOT, Busy, Flights, Skipped, Slots, server_of
from fcmon.probe.run import Prober
from fcmon.service.scheduler import ProbeScheduler

from support import PKI, Blackhole, make_target, sample, target_section, wait_for


@pytest.fixture
def quiet(emulator: Emulator) -> Iterator[Emulator]:
    wait_for(lambda: emulator.open_sessions() == 0)
    emulator.reset_peaks()
    yield emulator


def test_host_of_is_the_endpoint_host_name(test_pki: PKI, emulator: Emulator) -> None:
    assert server_of(make_target(test_pki, emulator, endpoint="https://DB1.example.com:8443/api"))[0] == "db1.example.com"


def test_the_cap_is_keyed_by_the_server_host_and_port(test_pki: PKI, emulator: Emulator) -> None:
    def server(endpoint: str):  # type: ignore[no-untyped-def]
        return server_of(make_target(test_pki, emulator, endpoint=endpoint))

    assert server("https://DB1.example.com:8443/api") == ("db1.example.com", 8443)
    assert server("https://db1.example.com/api") == ("db1.example.com", 443)
    assert server("http://db1.example.com/api") == ("db1.example.com", 80)
    assert server("https://[::1]:8443/api") == ("::1", 8443)
    # two servers on one host do not share a cap
    assert server("https://db1:8443/api") != server("https://db1:9443/api")


def test_waiters_get_slots_in_arrival_order(test_pki: PKI, quiet: Emulator) -> None:
    """A freed slot goes to the oldest waiter: with one slot and a probe
    holding it, probes asked for one after the other start in that order."""
    quiet.set_fault("listDatabases", Fault(delay=0.3))
    targets = [make_target(test_pki, quiet, name=f"t{i}", timeout=10.0) for i in range(6)]
    flights, prober = Flights(per_host=1), Prober()
    order: List[str] = []
    lock = threading.Lock()
    key = server_of(targets[0])

    def call(target):  # type: ignore[no-untyped-def]
        def started() -> None:
            with lock:
                order.append(target.name)
        return flights.run(target, prober.probe, on_start=started)[0]

    threads = []
    for i, target in enumerate(targets):
        t = threading.Thread(target=call, args=(target,))
        t.start()
        threads.append(t)
        # each asks once the one before is running or queued
        wait_for(lambda: flights.in_flight(key) + flights.waiting(key) == i + 1)
    for t in threads:
        t.join(30)
    assert order == [t.name for t in targets]
    assert quiet.peak_sessions() == 1


def test_a_wait_for_a_slot_ends_at_its_deadline_as_server_busy(test_pki: PKI, emulator: Emulator) -> None:
    """A dead server holds its slots until each probe's deadline: a probe
    that cannot start by its own deadline is not started (Skipped,
    server_busy), after waiting in turn; a queue longer than the cap allows
    turns callers away at once; the same host on another port is another
    server and starts at once."""
    import time

    with Blackhole() as hole:
        dead = [make_target(test_pki, emulator, name=f"d{i}", endpoint=f"https://localhost:{hole.port}/api",
                            timeout=1.0) for i in range(2 + 2 * WAITERS_PER_SLOT + 1)]
        healthy = make_target(test_pki, emulator, name="ok", endpoint=emulator.url.replace("127.0.0.1", "localhost"))
        flights, prober = Flights(per_host=2), Prober()
        key = server_of(dead[0])
        with ThreadPoolExecutor(2) as pool:
            holders = [pool.submit(flights.run, t, prober.probe) for t in dead[:2]]
            wait_for(lambda: flights.in_flight(key) == 2)
            t0 = time.monotonic()
            with pytest.raises(Skipped) as skipped:
                flights.run(dead[2], prober.probe, wait_until=t0 + 0.3)
            waited = time.monotonic() - t0
            assert 0.29 <= waited < 0.95  # the holders end at 1 s
            assert skipped.value.reason == SKIP_SERVER_BUSY
            assert "busy" in skipped.value.message and str(hole.port) in skipped.value.message
            # the healthy server on the same host name is not behind the dead one
            result, ran = flights.run(healthy, prober.probe, wait_until=time.monotonic() + 0.5)
            assert ran and result.up
            assert all(not r.result()[0].up for r in holders)
        with ThreadPoolExecutor(2 * WAITERS_PER_SLOT + 2) as pool:
            holders = [pool.submit(flights.run, t, prober.probe) for t in dead[:2]]
            wait_for(lambda: flights.in_flight(key) == 2)
            queued = [pool.submit(flights.run, t, prober.probe, wait_until=time.monotonic() + 30)
                      for t in dead[2:2 + 2 * WAITERS_PER_SLOT]]
            wait_for(lambda: flights.waiting(key) == 2 * WAITERS_PER_SLOT)
            t0 = time.monotonic()
            with pytest.raises(Skipped):
                flights.run(dead[-1], prober.probe, wait_until=t0 + 30)
            assert time.monotonic() - t0 < 1.0  # turned away, not queued
            for f in holders + queued:
                f.result()
        assert flights.in_flight() == 0 and flights.waiting(key) == 0


def test_concurrent_callers_share_one_probe(test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=1.0))
    target = make_target(test_pki, quiet)
    flights, prober = Flights(), Prober()
    recorded: List[object] = []
    barrier = threading.Barrier(50)

    def call(_: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return flights.run(target, prober.probe, on_result=recorded.append)

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(call, range(50)))
    assert all(result.up for result, _ in outcomes)
    ran = [result for result, owner in outcomes if owner]
    # Every caller got the result of a probe that ran while it waited; each
    # probe was recorded once, by the caller that ran it.
    assert len(recorded) == len(ran) == flights.started
    assert flights.started < 5
    assert quiet.peak_sessions() == 1
    assert flights.in_flight() == 0


def test_per_host_cap_and_check(test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=0.5))
    targets = [make_target(test_pki, quiet, name=f"t{i}") for i in range(5)]
    results = probe_all(targets, Prober(), max_connections_per_host=2)
    assert [r.up for r in results] == [True] * 5
    assert quiet.peak_sessions() == 2


def test_scheduled_probes_wait_for_a_host_slot_and_count_it_as_lateness(test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=1.0))
    targets = [make_target(test_pki, quiet, name=f"t{i}", interval=60.0, timeout=5.0) for i in range(3)]
    lateness: List[float] = []
    results: List[object] = []
    scheduler = ProbeScheduler(Prober(), results.append, lambda name, reason: None, lateness.append, Flights(1))
    scheduler.start(targets)
    try:
        wait_for(lambda: len(results) == 3, timeout=30)
    finally:
        scheduler.shutdown()
    assert quiet.peak_sessions() == 1
    # The second and third waited for the first (and the second) to finish:
    # at least one listDatabases delay each.
    assert sorted(lateness)[-1] >= 1.0
    assert sum(lateness) >= 2.0


def test_slots_refuse_new_probes_but_not_joiners(test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=1.0))
    a, b = make_target(test_pki, quiet, name="a"), make_target(test_pki, quiet, name="b")
    flights, prober, slots = Flights(), Prober(), Slots(1)
    started = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(flights.run, a, prober.probe, started.set, slots)
        started.wait(10)
        joined = pool.submit(flights.run, a, prober.probe, lambda: None, slots)
        with pytest.raises(Busy):
            flights.run(b, prober.probe, slots=slots)
        assert first.result()[1] is True
        assert joined.result() == (first.result()[0], False)
    assert slots.used == 0
    assert flights.run(b, prober.probe, slots=slots)[0].up  # free again


def _daemon(tmp_path: Path, test_pki: PKI, emu: Emulator, fcmon_extra: str = "", targets: int = 1) -> Daemon:
    config = tmp_path / "config.ini"
    config.write_text(
        "[fcmon]\nlisten = 127.0.0.1:0\ninterval = 30\ntimeout = 5\nschedule = false\n" + fcmon_extra + "\n"
        + "".join(target_section(test_pki, emu, name=f"t{i}") for i in range(targets)))
    daemon = Daemon(load_config(config, {}))
    daemon.web.start()
    return daemon


def _get(url: str) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.get(url, timeout=60)


@pytest.mark.slow
def test_200_concurrent_probe_requests_open_one_session_at_a_time(
        tmp_path: Path, test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=1.0))
    daemon = _daemon(tmp_path, test_pki, quiet)
    try:
        url = f"http://127.0.0.1:{daemon.web.port}/probe?target=t0"
        barrier = threading.Barrier(200)

        def call(_: int) -> requests.Response:
            barrier.wait()
            return _get(url)

        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(call, range(200)))
    finally:
        daemon.web.stop()
    assert [r.status_code for r in answers] == [200] * 200
    assert all(sample(r.text, "fcmon_up", target="t0") == 1 for r in answers)
    assert quiet.peak_sessions() == 1
    assert daemon.flights.started < 10
    assert sample(daemon.renderer.render().decode(), "fcmon_probes_total", target="t0") == daemon.flights.started


@pytest.mark.slow
def test_probe_requests_beyond_the_cap_get_503(tmp_path: Path, test_pki: PKI, quiet: Emulator) -> None:
    quiet.set_fault("listDatabases", Fault(delay=2.0))
    daemon = _daemon(tmp_path, test_pki, quiet, "max_probe_requests = 1", targets=2)
    base = f"http://127.0.0.1:{daemon.web.port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_get, base + "/probe?target=t0")
            wait_for(lambda: daemon.flights.in_flight() == 1)
            refused = _get(base + "/probe?target=t1")
            assert first.result().status_code == 200
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        metrics = _get(base + "/metrics").text
        assert sample(metrics, "fcmon_probe_requests_rejected_total") == 1
        assert _get(base + "/probe?target=t1").status_code == 200  # the slot is free again
    finally:
        daemon.web.stop()
