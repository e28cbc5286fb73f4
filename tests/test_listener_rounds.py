"""Listener rounds are bounded: a cap on listeners per target, a deadline per
round (what it leaves is checked first next round), one round per target at
a time, ASCII ports, and SIGTERM within timeout + 5 s whatever the rounds
are doing. Hung ports are real: sockets that listen and never accept (the
kernel completes the TCP handshake into the backlog; the TLS ClientHello is
never answered)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, List

import pytest

from fcmon import pki
from fcmon.emulator import Emulator, ListenerSpec
from fcmon.probe.listeners import ListenerChecker, parse_listeners, round_budget
from fcmon.probe.run import Prober

from support import PKI, FcmonProcess, hung_ports, make_target, sample, scrape, wait_for, write_config


def test_ports_are_ascii_decimal_only() -> None:
    def ports(*values: object) -> List[int]:
        body = {"errorCode": 0, "result": {"listeners": [
            {"serviceName": f"s{i}", "enabled": True, "protocol": "mqtts", "port": v} for i, v in enumerate(values)]}}
        return [x.port for x in parse_listeners(body, 443)]

    # "²".isdigit() and "٣".isdigit() are True, int("²") raises: never a port
    assert ports("²", "٣", "8883²", "+8883", "-1", "0x22b3", "", "99999", "65536", "0") == []
    assert ports("8883", " 9002 ", 1883, "00443") == [8883, 9002, 1883]  # 443 is the endpoint's own port


@pytest.fixture
def crowded(test_pki: PKI) -> Iterator[Emulator]:
    """A server whose listServices names 1,000 ports that never handshake."""
    with hung_ports(1000) as ports, Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                                             client_ca_file=test_pki.ca_file) as emu:
        emu.name_services(ports)
        yield emu


def test_a_round_checks_at_most_max_listeners_and_ends_at_its_deadline(test_pki: PKI, crowded: Emulator) -> None:
    timeout = 0.5
    target = make_target(test_pki, crowded, timeout=timeout, listener_interval=60.0, max_listeners=8)
    checker = ListenerChecker(Prober())
    seen = set()
    for _ in range(3):
        t0 = time.monotonic()
        round_ = checker.run(target)
        took = time.monotonic() - t0
        assert round_ is not None
        assert took <= round_budget(target) + 1.0, took
        assert round_.over_cap == 1000 - 8
        assert 0 < round_.not_reached < 8
        assert all(r.reason == "connect_timeout" for r in round_.results)
        seen |= {r.listener.port for r in round_.results}
    # what a round's deadline left is checked first in the next: all 8 in turn
    assert len(seen) == 8


@pytest.mark.slow
def test_hung_listeners_of_one_server_do_not_stop_the_others_rounds_and_sigterm_is_in_time(
        tmp_path: Path, test_pki: PKI, crowded: Emulator) -> None:
    """fcmon run with a server naming 1,000 hung ports and three targets on
    another whose listener's certificate expires in 5 days: their rounds
    keep coming every listener_interval, the crowded one is capped and
    counted, and SIGTERM in the middle of its rounds ends fcmon within
    timeout + 5 s."""
    soon = pki.make_server(test_pki.ca, days=5)
    files = soon.write(tmp_path, "soon")
    cert, key = files.cert, files.key
    interval, timeout, listener_interval = 2.0, 1.0, 3.0
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key, client_ca_file=test_pki.ca_file,
                  listeners=[ListenerSpec("mqtts8883", "mqtts", cert, key)]) as good:

        def section(name: str, emu: Emulator) -> str:
            return "\n".join([
                f"[target:{name}]", f"endpoint = {emu.url}", "username = ADMIN", "password = ADMIN",
                f"ca_file = {test_pki.ca_file}", f"client_cert_file = {test_pki.client.cert}",
                f"client_key_file = {test_pki.client.key}", f"listener_interval = {listener_interval:g}", ""])

        config = write_config(tmp_path / "config.ini", "\n".join(
            ["[fcmon]", "listen = 127.0.0.1:0", f"interval = {interval:g}", f"timeout = {timeout:g}", ""]
            + [section("crowded", crowded)] + [section(f"good{i}", good) for i in range(3)]))
        with FcmonProcess("run", "-c", str(config)) as fcmon:
            url = fcmon.metrics_url()
            # the window starts once every good target's first round has
            # reached its listener (polled; it used to be a 2 s sleep)
            wait_for(lambda: good.listener("mqtts8883").connections >= 3, timeout=20)
            before = good.listener("mqtts8883").connections
            time.sleep(4 * listener_interval)
            after = good.listener("mqtts8883").connections
            text = scrape(url)
            t0 = time.monotonic()
            code = fcmon.stop()
            took = time.monotonic() - t0
    # three targets, a round each every listener_interval: at least three rounds each in the window
    assert after - before >= 3 * 3, (before, after)
    for i in range(3):
        days = sample(text, "fcmon_listener_cert_expiry_days", target=f"good{i}", listener="mqtts8883")
        assert days is not None and 4 < days < 5.1, days
        assert sample(text, "fcmon_listener_up", target=f"good{i}", listener="mqtts8883") == 1
    assert sample(text, "fcmon_listeners_not_checked", target="crowded", reason="over_cap") == 1000 - 32
    assert sample(text, "fcmon_listeners", target="crowded") is not None
    assert code == 0
    assert took <= timeout + 5.0, took
    log = fcmon.text()
    assert log.count("beyond max_listeners = 32 not checked") == 1, log[-2000:]
    assert log.count("target crowded: listeners: listServices named") == 1, log[-2000:]
    assert "listener check of crowded skipped" not in log  # a round ends before the next is due


def test_max_listeners_is_a_validated_config_key(tmp_path: Path, test_pki: PKI, crowded: Emulator) -> None:
    from fcmon.config import ConfigError, load_config

    base = f"[fcmon]\n[defaults]\nmax_listeners = 5\n[target:a]\nendpoint = {crowded.url}\n"
    config = load_config(write_config(tmp_path / "a.ini", base + "[target:b]\nendpoint = " + crowded.url
                                      + "\nmax_listeners = 40\n"), {})
    assert [t.max_listeners for t in config.targets] == [5, 40]
    assert load_config(write_config(tmp_path / "d.ini", f"[target:a]\nendpoint = {crowded.url}\n"),
                       {}).targets[0].max_listeners == 32
    for bad, says in (("0", "max_listeners"), ("many", "max_listeners")):
        with pytest.raises(ConfigError) as err:
            load_config(write_config(tmp_path / "b.ini", base.replace("= 5", f"= {bad}")), {})
        assert says in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path / "c.ini", base.replace("max_listeners", "max_listener")), {})
    assert "max_listeners" in str(err.value)  # did you mean
