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

from fcmon.check import probe_all
from fcmon.config import load_config
from fcmon.daemon import Daemon
from fcmon.emulator import Emulator, Fault
from fcmon.flight import Busy, Flights, Slots, host_of
from fcmon.probe import Prober
from fcmon.scheduler import ProbeScheduler

from support import PKI, make_target, sample, target_section, wait_for


@pytest.fixture
def quiet(emulator: Emulator) -> Iterator[Emulator]:
    wait_for(lambda: emulator.open_sessions() == 0)
    emulator.reset_peaks()
    yield emulator


def test_host_of_is_the_endpoint_host_name(test_pki: PKI, emulator: Emulator) -> None:
    assert host_of(make_target(test_pki, emulator, endpoint="https://DB1.example.com:8443/api")) == "db1.example.com"


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
    scheduler = ProbeScheduler(Prober(), results.append, lambda name: None, lateness.append, Flights(1))
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
