"""Listeners: discovery with listServices and handshake-only checks, with
real TLS against real emulator listeners over loopback."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from fcmon import pki
from fcmon.emulator import Emulator, ListenerSpec
from fcmon.export.exposition import TextRenderer
from fcmon.probe.listeners import (
    CONFIGURED_PROTOCOL,
    DiscoveryUnsupported,
    Listener,
    ListenerChecker,
    ListenerRound,
    merge,
    parse_listeners,
)
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober

from support import PKI, make_target, reap, sample, threads_besides_resolver


@pytest.fixture(scope="module")
def certs(test_pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("listener-pki")
    now = dt.datetime.now(dt.timezone.utc)
    other = pki.make_ca("another CA")
    out = {}
    for name, issued in {
        "soon": pki.make_server(test_pki.ca, days=5),
        "expired": pki.make_server(test_pki.ca, days=3, not_before=now - dt.timedelta(days=5)),
        "other": pki.make_server(other),
    }.items():
        files = issued.write(d, name)
        out[name] = (files.cert, files.key)
    out["good"] = (test_pki.server.cert, test_pki.server.key)
    return out


def spec(name: str, protocol: str, cert: Tuple[Path, Path], **kw: object) -> ListenerSpec:
    return ListenerSpec(name, protocol, cert[0], cert[1], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(test_pki: PKI, certs: Dict[str, Tuple[Path, Path]]) -> Iterator[Emulator]:
    """An emulator that names every kind of listener in listServices."""
    listeners = [
        spec("mqtts8883", "mqtts", certs["soon"]),  # expires in 5 days
        spec("mqttwss9002", "mqttwss", certs["good"], client_ca_file=test_pki.ca_file),
        spec("wss-expired", "wss", certs["expired"]),
        spec("https-other-ca", "https", certs["other"]),
        spec("hang", "mqtts", certs["good"], mode="hang"),
        spec("reset", "mqtts", certs["good"], mode="reset"),
        spec("off", "mqtts", certs["good"], mode="disabled"),
        ListenerSpec("mqtt1883", "mqtt"),  # plain: never connected to
        spec("tls12-client-certs", "mqtts", certs["good"], client_ca_file=test_pki.ca_file,
             tls_max_version=ssl.TLSVersion.TLSv1_2, mode="disabled"),
    ]
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file,
                  listeners=listeners) as emu:
        yield emu


@pytest.fixture
def emu(server: Emulator) -> Iterator[Emulator]:
    modes = {x.spec.name: x.spec.mode for x in server.listeners()}
    server.clear_faults()
    yield server
    server.clear_faults()
    for name, mode in modes.items():
        server.set_listener_mode(name, mode)


def by_name(r: ListenerRound) -> Dict[str, object]:
    return {x.listener.name: x for x in r.results}


def days(x: object, role: str = "server") -> float:
    c = next(c for c in x.certs if c.role == role)  # type: ignore[attr-defined]
    return (c.not_after - time.time()) / 86400


# ---------------------------------------------------------------- pure parts


def test_listservices_answer_keeps_enabled_tls_listeners_but_the_endpoints_own() -> None:
    body = {"errorCode": 0, "result": {"listeners": [
        {"serviceName": "http8080", "enabled": True, "port": "8080", "protocol": "http"},
        {"serviceName": "https8443", "enabled": True, "port": "8443", "protocol": "https"},
        {"serviceName": "mqtt1883", "enabled": True, "port": "1883", "protocol": "mqtt"},
        {"serviceName": "mqtts8883", "enabled": True, "port": "8883", "protocol": "mqtts"},
        {"serviceName": "mqttws9001", "enabled": True, "port": "9001", "protocol": "mqttws"},
        {"serviceName": "mqttwss9002", "enabled": True, "port": "9002", "protocol": "mqttwss"},
        {"serviceName": "wss9003", "enabled": False, "port": "9003", "protocol": "wss"},
        {"serviceName": "https-bad", "enabled": True, "port": "99999", "protocol": "https"},
        {"serviceName": "sql", "enabled": True, "port": "6597", "protocol": "sql"},
        "junk",
    ]}}
    assert parse_listeners(body, 8443) == [
        Listener("mqtts8883", 8883, "mqtts"), Listener("mqttwss9002", 9002, "mqttwss")]


@pytest.mark.parametrize("body", [
    {"errorCode": 14701, "errorMessage": "unknown action 'listServices'", "result": {}},
    {"errorCode": 0, "result": {}},
    {"errorCode": 0, "result": {"listeners": "8883"}},
])
def test_an_answer_without_listeners_is_unsupported(body: dict) -> None:
    with pytest.raises(DiscoveryUnsupported):
        parse_listeners(body, 8443)


def test_configured_names_win_and_each_port_is_checked_once() -> None:
    found = [Listener("mqtts8883", 8883, "mqtts"), Listener("mqttwss9002", 9002, "mqttwss"),
             Listener("mine", 9100, "wss")]
    assert merge([("mine", 8883), ("extra", 9999)], found) == (
        Listener("mine", 8883, "mqtts"), Listener("extra", 9999, CONFIGURED_PROTOCOL),
        Listener("mqttwss9002", 9002, "mqttwss"), Listener("mine-9100", 9100, "wss"))


# ---------------------------------------------------------------- real TLS


def test_discovery_finds_every_enabled_tls_listener_and_nothing_else(test_pki: PKI, emu: Emulator) -> None:
    before = {x.spec.name: x.connections for x in emu.listeners()}
    r = ListenerChecker(Prober()).run(make_target(test_pki, emu, timeout=1.0))
    assert r is not None and r.discovery is True
    assert set(by_name(r)) == {"mqtts8883", "mqttwss9002", "wss-expired", "https-other-ca", "hang", "reset"}
    assert all(x.listener.port == emu.listener(x.listener.name).port for x in r.results)
    after = {x.spec.name: x.connections for x in emu.listeners()}
    # never a port the server did not enable for TLS
    for name in ("off", "mqtt1883", "tls12-client-certs"):
        assert after[name] == before[name]
    res = by_name(r)
    assert res["mqtts8883"].up and 4.9 < days(res["mqtts8883"]) < 5.0  # type: ignore[attr-defined]
    assert res["mqttwss9002"].up  # type: ignore[attr-defined]  (client certificate presented)
    assert res["wss-expired"].reason == "tls_verify"  # type: ignore[attr-defined]
    assert -2.1 < days(res["wss-expired"]) < -1.9  # negative days, from the unverified fetch
    assert res["https-other-ca"].reason == "tls_verify"  # type: ignore[attr-defined]
    assert days(res["https-other-ca"]) > 300
    assert res["hang"].reason == "connect_timeout"  # type: ignore[attr-defined]
    assert res["hang"].duration < 1.0 + 1.0  # type: ignore[attr-defined]
    assert res["reset"].reason == "tls_handshake"  # type: ignore[attr-defined]
    assert r.ended >= time.time() - 60


def test_hung_listener_times_out_within_the_targets_timeout(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=2.0, listeners_mode="list",
                         listeners=(("hang", emu.listener("hang").port),), listeners_discover=False)
    started = time.monotonic()
    r = ListenerChecker(Prober()).run(target)
    assert r is not None and r.discovery is None
    assert [x.reason for x in r.results] == ["connect_timeout"]
    assert time.monotonic() - started < 2.0 + 1.0


def test_client_certificate_required_and_missing(test_pki: PKI, emu: Emulator) -> None:
    emu.set_listener_mode("tls12-client-certs", "ok")
    ports = (("wss13", emu.listener("mqttwss9002").port), ("wss12", emu.listener("tls12-client-certs").port))
    with_cert = make_target(test_pki, emu, listeners_mode="list", listeners=ports, listeners_discover=False)
    without = replace(with_cert, client_cert_file=None, client_key_file=None)
    checker = ListenerChecker(Prober())
    ok = by_name(checker.run(with_cert))  # type: ignore[arg-type]
    assert ok["wss13"].up and ok["wss12"].up  # type: ignore[attr-defined]
    bad = by_name(checker.run(without))  # type: ignore[arg-type]
    # TLS 1.3: after the handshake, read by the short wait; TLS 1.2: in the handshake
    assert bad["wss13"].reason == "client_cert_rejected", bad["wss13"]  # type: ignore[attr-defined]
    assert bad["wss12"].reason == "client_cert_rejected", bad["wss12"]  # type: ignore[attr-defined]
    # TLS 1.3 completed the handshake: the certificate is known all the same
    assert days(bad["wss13"]) > 300  # type: ignore[arg-type]


def test_a_client_certificate_from_another_ca_is_rejected(test_pki: PKI, emu: Emulator, tmp_path: Path) -> None:
    stranger = pki.make_client(pki.make_ca("stranger CA")).write(tmp_path, "stranger")
    target = make_target(test_pki, emu, client_cert_file=stranger.cert, client_key_file=stranger.key,
                         listeners_mode="list", listeners=(("wss", emu.listener("mqttwss9002").port),),
                         listeners_discover=False)
    r = ListenerChecker(Prober()).run(target)
    assert [x.reason for x in r.results] == ["client_cert_rejected"]  # type: ignore[union-attr]


def test_dns_and_refused(test_pki: PKI, emu: Emulator) -> None:
    from support import free_port

    refused = make_target(test_pki, emu, listeners_mode="list", listeners=(("gone", free_port()),),
                          listeners_discover=False)
    assert [x.reason for x in ListenerChecker(Prober()).run(refused).results] == ["connect_refused"]  # type: ignore[union-attr]
    nowhere = replace(refused, endpoint="https://no-such-host.invalid:8443/api")
    assert [x.reason for x in ListenerChecker(Prober()).run(nowhere).results] == ["dns"]  # type: ignore[union-attr]


def test_list_alone_checks_only_the_list(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, listeners_mode="list", listeners_discover=False,
                         listeners=(("m", emu.listener("mqtts8883").port),))
    before = len(emu.requests_seen())
    r = ListenerChecker(Prober()).run(target)
    assert r is not None and r.discovery is None
    assert [(x.listener.name, x.listener.protocol, x.up) for x in r.results] == [("m", CONFIGURED_PROTOCOL, True)]
    assert len(emu.requests_seen()) == before  # listServices not asked


def test_list_with_discovery_adds_to_the_discovered(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=1.0, listeners_mode="list",
                         listeners=(("mine", emu.listener("mqtts8883").port), ("plain-off", emu.listener("off").port)))
    r = ListenerChecker(Prober()).run(target)
    names = by_name(r)  # type: ignore[arg-type]
    # configured names win on a discovered port; a configured port is checked even if not enabled
    assert "mine" in names and "mqtts8883" not in names and "plain-off" in names and "mqttwss9002" in names
    assert names["mine"].listener.protocol == "mqtts"  # type: ignore[attr-defined]


def test_none_checks_nothing(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, listeners_mode="none")
    assert not target.checks_listeners and not target.discovers_listeners
    store = MetricsStore()
    store.set_targets([make_target(test_pki, emu)])
    store.record_listeners(ListenerChecker(Prober()).run(  # type: ignore[arg-type]
        make_target(test_pki, emu, listeners_mode="list", listeners_discover=False,
                    listeners=(("m", emu.listener("mqtts8883").port),))))
    assert "fcmon_listener_up" in text_of(store)
    store.set_targets([target])  # reloaded as listeners = none: every listener series goes
    assert "fcmon_listener" not in text_of(store).replace("# HELP fcmon_listener", "").replace(
        "# TYPE fcmon_listener", "")


def text_of(store: MetricsStore) -> str:
    reg = CollectorRegistry()
    reg.register(FcmonCollector(store))
    return generate_latest(reg).decode()


def test_server_without_listservices_is_not_a_failure(test_pki: PKI, certs: Dict[str, Tuple[Path, Path]],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file,
                  listeners=[spec("mqtts", "mqtts", certs["good"])], list_services=False) as old:
        target = make_target(test_pki, old, listeners_mode="list",
                             listeners=(("mqtts", old.listener("mqtts").port),))
        checker = ListenerChecker(Prober())
        with caplog.at_level(logging.INFO, logger="fcmon.probe.listeners"):
            rounds = [checker.run(target) for _ in range(3)]
        for r in rounds:
            assert r is not None and r.discovery is False
            assert [(x.listener.name, x.up) for x in r.results] == [("mqtts", True)]
        said = [rec for rec in caplog.records if "listServices answered" in rec.getMessage()]
        assert len(said) == 1, [rec.getMessage() for rec in caplog.records]  # logged once
        store = MetricsStore()
        store.set_targets([target])
        store.record_listeners(rounds[-1])  # type: ignore[arg-type]
        text = text_of(store)
        assert sample(text, "fcmon_listener_discovery_success", target="prod") == 0
        assert sample(text, "fcmon_listeners", target="prod") == 1
        assert sample(text, "fcmon_listener_up", target="prod", listener="mqtts") == 1


def test_a_listener_that_disappears_loses_its_series(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=1.0)
    checker = ListenerChecker(Prober())
    store = MetricsStore()
    store.set_targets([target])
    renderer = TextRenderer(store, CollectorRegistry())
    store.record_listeners(checker.run(target))  # type: ignore[arg-type]
    first = renderer.render().decode()
    assert sample(first, "fcmon_listener_up", target="prod", listener="reset") == 0
    assert sample(first, "fcmon_listener_failures_total", target="prod", listener="reset",
                  reason="tls_handshake") == 1
    assert sample(first, "fcmon_listener_cert_expiry_days", target="prod", listener="mqtts8883",
                  cert="server") is not None
    emu.set_listener_mode("reset", "disabled")
    emu.set_listener_mode("mqtts8883", "disabled")
    store.record_listeners(checker.run(target))  # type: ignore[arg-type]
    for text in (renderer.render().decode(), text_of(store)):
        assert 'listener="reset"' not in text and 'listener="mqtts8883"' not in text
        assert sample(text, "fcmon_listeners", target="prod") == 4
        assert sample(text, "fcmon_listener_discovery_success", target="prod") == 1
    store.set_targets([])  # a removed target loses all
    assert 'target="prod"' not in renderer.render().decode()


def test_discovery_failure_keeps_the_listeners_named_last(test_pki: PKI, emu: Emulator) -> None:
    from fcmon.emulator import Fault

    target = make_target(test_pki, emu, timeout=1.0)
    checker = ListenerChecker(Prober())
    first = checker.run(target)
    emu.set_fault("listServices", Fault(http500_html=True))
    second = checker.run(target)
    assert second is not None and second.discovery is False and "http_status" in second.discovery_message
    assert set(by_name(first)) == set(by_name(second))  # type: ignore[arg-type]


def test_discovery_names_the_probes_reason_and_leaves_the_warning_to_it(  # type: ignore[no-untyped-def]
        test_pki: PKI, emu: Emulator, tmp_path: Path, caplog) -> None:
    """A server that is down or untrusted: discovery says what the probe says
    (it once said bad_response for a refused connection, tls_handshake for an
    expired certificate) and logs no warning of its own: the probe's is enough."""
    from support import free_port

    expired = pki.make_server(test_pki.ca, days=1,
                              not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=5))
    files = expired.write(tmp_path, "expired")
    prober = Prober()
    checker = ListenerChecker(prober)
    with Emulator(files.cert, files.key, client_ca_file=test_pki.ca_file) as old:
        for endpoint, reason in ((f"https://localhost:{free_port()}/api", "connect_refused"),
                                 (old.url, "tls_verify")):
            target = make_target(test_pki, emu, endpoint=endpoint, timeout=2.0)
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="fcmon.probe.listeners"):
                round_ = checker.run(target)
            probe = prober.probe(target)
            assert probe.failure is not None and probe.failure.reason == reason
            assert round_ is not None and round_.discovery is False
            assert round_.discovery_message.startswith(f"listServices failed: {reason}: "), round_.discovery_message
            said = [r for r in caplog.records if "listServices" in r.getMessage()]
            assert said and all(r.levelno == logging.DEBUG for r in said), [r.getMessage() for r in said]
        assert old.open_sessions() == 0


def test_one_round_per_target_at_a_time(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=1.0, listeners_mode="list", listeners_discover=False,
                         listeners=(("hang", emu.listener("hang").port),))
    checker = ListenerChecker(Prober())
    out = []
    t = threading.Thread(target=lambda: out.append(checker.run(target)))
    t.start()
    time.sleep(0.2)
    assert checker.run(target) is None  # the first round is still in its handshake
    assert not checker.due(target)
    t.join(5)
    assert out and out[0] is not None


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_rounds_leak_no_descriptor_thread_or_connection(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=0.5)
    checker = ListenerChecker(Prober())
    checker.run(target)  # warm up: contexts, imports
    time.sleep(0.5)
    fds, threads = _fds(), threads_besides_resolver()
    for _ in range(5):
        checker.run(target)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (emu.live_connections() or any(
            x.live_connections() for x in emu.listeners())):
        time.sleep(0.05)
    assert _fds() <= fds
    assert threads_besides_resolver() <= threads + 1  # the emulator's hang handler may still be winding down
    assert sum(x.live_connections() for x in emu.listeners()) == 0


# ---------------------------------------------------------------- scheduling


def test_listener_pool_covers_hung_listeners_of_a_fleet() -> None:
    from fcmon.config import TargetConfig
    from fcmon.service.scheduler import listener_pool_size

    fleet = [TargetConfig(name=f"t{i}", endpoint="https://x/api", timeout=10) for i in range(300)]
    # discovery + 2 listeners, each up to 10 s, every 600 s
    assert listener_pool_size(fleet) >= 300 * 31 / 600
    assert listener_pool_size([replace(t, listeners_mode="none") for t in fleet]) == 2


def test_hung_listener_rounds_never_delay_probes(test_pki: PKI, emu: Emulator) -> None:
    from fcmon.service.scheduler import ProbeScheduler

    hang = emu.listener("hang").port
    targets = [make_target(test_pki, emu, name=f"t{i}", interval=1.0, timeout=0.9, listener_interval=1.0,
                           listeners_mode="list", listeners_discover=False,
                           listeners=(("h1", hang), ("h2", hang), ("h3", hang)))
               for i in range(3)]
    probes: Dict[str, int] = {}
    skipped: list = []
    rounds: list = []
    lock = threading.Lock()

    def on_result(r) -> None:  # type: ignore[no-untyped-def]
        with lock:
            probes[r.target] = probes.get(r.target, 0) + 1

    prober = Prober()
    dues: list = []
    sched = ProbeScheduler(prober, on_result, lambda name, reason: skipped.append(name), check_listeners=ListenerChecker(prober).run,
                           on_listener_round=rounds.append, on_listener_due=lambda name, due: dues.append(due))
    sched.start(targets)
    try:
        from support import wait_for

        # each listener round takes 2.7 s of a 1 s interval: its runs are
        # skipped, while every target keeps its probe every second
        wait_for(lambda: len(rounds) >= 3 and all(probes.get(t.name, 0) >= 4 for t in targets), timeout=30)
    finally:
        sched.shutdown(wait=True)
    assert skipped == []  # probes were never skipped; listener skips are not probe skips
    # the checker is told when each round is due: at start, then after each round
    assert len(dues) >= 3 + len(rounds) and all(abs(d - time.time()) < 60 for d in dues)
    assert all(x.reason == "connect_timeout" for r in rounds for x in r.results)


# ---------------------------------------------------------------- fcmon check


def test_check_judges_listener_certificates_with_perfdata_and_json(
        test_pki: PKI, certs: Dict[str, Tuple[Path, Path]], tmp_path: Path) -> None:
    import json
    import subprocess

    from support import fcmon_command, target_section
    from test_check import parse_perfdata

    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file,
                  listeners=[spec("mqtts8883", "mqtts", certs["soon"]),
                             spec("wss9002", "wss", certs["good"])]) as server:
        config = tmp_path / "config.ini"
        config.write_text("[fcmon]\ntimeout = 3\n" + target_section(test_pki, server))

        def check(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(fcmon_command("check", "-c", str(config), *args),
                                  capture_output=True, text=True, timeout=60)

        proc = check()  # the 5-day listener certificate is inside the default 7 critical days
        assert proc.returncode == 2, proc.stdout + proc.stderr
        first = proc.stdout.splitlines()[0]
        port = server.listener("mqtts8883").port
        assert first.startswith(f"CRITICAL - prod: listener mqtts8883 (port {port}) server certificate "), first
        perf = parse_perfdata(first)
        assert perf["prod_listener_mqtts8883_up"]["value"] == "1"
        assert perf["prod_listener_wss9002_up"]["value"] == "1"
        soon = perf["prod_listener_mqtts8883_server_days"]  # by role, not serial
        assert 4.9 < float(soon["value"]) <= 5.0 and (soon["warn"], soon["crit"]) == ("30:", "7:")
        assert check("--crit-days", "3").returncode == 1  # then a warning

        doc = json.loads(check("--format", "json").stdout)
        (t,) = doc["targets"]
        assert t["listener_discovery"] is True
        listed = {x["name"]: x for x in t["listeners"]}
        assert set(listed) == {"mqtts8883", "wss9002"}
        assert listed["mqtts8883"]["port"] == port and listed["mqtts8883"]["state"] == "up"
        assert 4.9 < listed["mqtts8883"]["certificates"][0]["days_left"] <= 5.0

        server.set_listener_mode("wss9002", "reset")
        proc = check("--crit-days", "3")
        assert proc.returncode == 2 and "listener wss9002" in proc.stdout and "tls_handshake" in proc.stdout
        text = check("--format", "prometheus").stdout
        assert sample(text, "fcmon_listener_up", target="prod", listener="wss9002") == 0
        assert sample(text, "fcmon_listeners", target="prod") == 2
        assert server.open_sessions() == 0


# ---------------------------------------------------------------- status page


def test_status_page_and_json_have_a_row_per_listener() -> None:
    from fcmon.export.status import StatusBoard
    from fcmon.web.statuspage import render_html, render_json
    from test_metrics import NOW, listener_round, target

    board = StatusBoard("test", clock=lambda: NOW)
    board.set_targets([target("a"), target("b")])
    board.record_listeners(listener_round("a"))
    page = render_html(board.snapshot()).decode()
    assert page.count('<tr class="listener') == 2
    assert '<tr class="listener up" data-target="a" data-listener="mqtts8883">' in page
    assert 'data-listener="w&quot;ss"' in page and "tls_verify" in page  # escaped
    assert 'data-level="critical"' in page and "expired 2 days ago" in page
    doc = __import__("json").loads(render_json(board.snapshot()))
    a, b = doc["targets"]
    assert a["listener_discovery"] is True and b["listeners"] == []
    assert [(x["name"], x["state"], x["failure"] and x["failure"]["reason"]) for x in a["listeners"]] == [
        ("mqtts8883", "up", None), ('w"ss', "down", "tls_verify")]
    assert a["listeners"][0]["certificates"][0]["level"] == "critical"
    assert [e["text"] for e in doc["events"]] == ['listener w"ss (port 9002) down: tls_verify: expired']
    board.record_listeners(listener_round("a"))  # still down: no second event
    assert len(board.snapshot().events) == 1


# ---------------------------------------------------------------- emulator CLI


@pytest.mark.slow
def test_emulator_cli_runs_listeners_switchable_over_the_control_endpoint(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    import requests

    from fcmon.config import TargetConfig

    proc = subprocess.Popen(
        [sys.executable, "-m", "fcmon.emulator", "--listen", "127.0.0.1:0", "--pki-dir", str(tmp_path),
         "--listener", "mqtts8883:mqtts:days=5", "--listener", "other:https:other-ca",
         "--listener", "wss12:wss:client-certs,tls1.2", "--listener", "off:mqtts:disabled",
         "--listener", "mqtt1883:mqtt"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(6)]
        url = re.search(r"listening on (https://\S+)", banner[0]).group(1)  # type: ignore[union-attr]
        ports = {m.group(1): int(m.group(2)) for m in (re.search(r"listener (\S+) \(\w+\) on port (\d+)", line)
                                                       for line in banner) if m}
        assert set(ports) == {"mqtts8883", "other", "wss12", "off", "mqtt1883"}, banner
        target = TargetConfig("cli", url, "ADMIN", "ADMIN", tmp_path / "ca.crt", tmp_path / "client.crt",
                              tmp_path / "client.key", timeout=2.0)
        checker = ListenerChecker(Prober())
        first = by_name(checker.run(target))  # type: ignore[arg-type]
        assert set(first) == {"mqtts8883", "other", "wss12"}
        assert first["mqtts8883"].up and 4.9 < days(first["mqtts8883"]) <= 5  # type: ignore[attr-defined]
        assert first["other"].reason == "tls_verify" and first["wss12"].up  # type: ignore[attr-defined]
        http = requests.Session()
        http.trust_env = False
        http.verify = str(tmp_path / "ca.crt")
        http.cert = (str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        base = url[: -len("/api")]
        with http:
            r = http.post(f"{base}/_emulator/listener", json={"name": "mqtts8883", "mode": "hang"}, timeout=10)
            assert r.status_code == 200
            assert {x["serviceName"]: x["mode"] for x in r.json()["listeners"]}["mqtts8883"] == "hang"
            bad = http.post(f"{base}/_emulator/listener", json={"name": "mqtts8883", "mode": "sleep"}, timeout=10)
            assert bad.status_code == 400
        second = by_name(checker.run(target))  # type: ignore[arg-type]
        assert second["mqtts8883"].reason == "connect_timeout"  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        reap(proc)


def test_a_due_discovery_rides_on_a_successful_probe(test_pki: PKI, emu: Emulator) -> None:
    target = make_target(test_pki, emu, timeout=1.0, interval=10.0, listener_interval=600.0)
    prober = Prober()
    checker = ListenerChecker(prober)
    prober.after_probe = checker.piggyback
    checker.expect("prod", time.time() + 5.0)  # the scheduler: the next round is due in 5 s

    def asked() -> int:
        return sum(1 for r in emu.requests_seen() if isinstance(r, dict) and r.get("action") == "listServices")

    before = asked()
    result = prober.probe(target)
    assert result.up and asked() == before + 1
    # not one of the probe's calls or steps
    assert [c.action for c in result.calls] == ["createSession", "listDatabases", "deleteSession"]
    r = checker.run(target)
    assert r is not None and r.discovery is True and asked() == before + 1  # the round asked nobody
    assert "mqtts8883" in by_name(r)
    assert prober.probe(target).up and asked() == before + 1  # asked once for that round
    checker.expect("prod", time.time() + 30.0)  # the next round: too far away for this probe
    assert prober.probe(target).up and asked() == before + 1
    assert emu.open_sessions() == 0
