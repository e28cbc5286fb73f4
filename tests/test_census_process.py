"""`fcmon run` as a process against the account's sessions: a kill -9 in the
middle of a probe leaves one orphan, which the restarted fcmon deletes
within one interval and which another fcmon instance sharing the account
never touches; 45 sessions of another client show as 46 during a probe,
and FcmonAccountSessionsHigh fires in a real Prometheus."""

from __future__ import annotations

import copy
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import requests

from fcmon.probe.census import description_instance
from fcmon.emulator import Emulator, Fault

from support import PKI, FcmonProcess, require_tool, sample, scrape, target_section, wait_for
from test_prometheus_e2e import (
    Prometheus,
    example_jobs,
    firing,
    host_port,
    prometheus_config,
    rules_with_short_for,
)

pytestmark = pytest.mark.slow

INTERVAL = 3.0
TIMEOUT = 1.5
# timeout + delete grace + timestamp margin (fcmon/probe/run.py)
LONGEST_PROBE = TIMEOUT + 0.9 + 2.0


def head(instance: Optional[str] = None, interval: float = INTERVAL) -> str:
    text = f"[fcmon]\nlisten = 127.0.0.1:0\ninterval = {interval}\ntimeout = {TIMEOUT}\nlog_level = debug\n"
    return text + (f"instance_id = {instance}\n" if instance else "")


def instances(emu: Emulator) -> List[Optional[str]]:
    return sorted((description_instance(s.description) or "") for s in emu.store.sessions())


@pytest.fixture
def emu(test_pki: PKI) -> Any:
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file) as e:
        yield e


def test_kill_9_orphan_is_reaped_after_restart_and_never_by_another_instance(
        test_pki: PKI, emu: Emulator, tmp_path: Path) -> None:
    first = tmp_path / "first.ini"
    first.write_text(head() + target_section(test_pki, emu))
    emu.set_fault("listDatabases", Fault(delay=30.0, count=1))
    with FcmonProcess("run", "-c", str(first)) as fc:
        fc.metrics_url()
        wait_for(lambda: emu.open_sessions() == 1 and emu.faults.snapshot() == {}, timeout=20)
        fc.proc.kill()  # SIGKILL while listDatabases is delayed: no finally runs
        fc.proc.wait(10)
    orphaned = instances(emu)
    assert len(orphaned) == 1 and orphaned[0], orphaned  # one session, named with the first's instance id
    mine = orphaned[0]

    # A second fcmon sharing the account, with its own id, probes long
    # enough for the orphan to be older than any probe: it never deletes it.
    second = tmp_path / "second.ini"
    second.write_text(head("second-fcmon", interval=2.0) + target_section(test_pki, emu))
    with FcmonProcess("run", "-c", str(second)) as other:
        url = other.metrics_url()
        started = time.monotonic()

        def seen_old_orphan() -> Optional[str]:
            text = scrape(url)
            probes = sample(text, "fcmon_probes_total", target="prod") or 0
            return text if time.monotonic() - started > LONGEST_PROBE + 1.5 and probes >= 3 else None

        text = wait_for(seen_old_orphan, timeout=30, interval=0.2)
        assert sample(text, "fcmon_sessions_reaped_total", target="prod") == 0
        assert sample(text, "fcmon_account_sessions_fcmon", target="prod") == 2  # the orphan and its own
        assert other.stop() == 0
    assert instances(emu) == [mine]

    # The first fcmon again, same config: the orphan is gone within one interval.
    restarted = time.monotonic()
    with FcmonProcess("run", "-c", str(first)) as fc:
        url = fc.metrics_url()
        wait_for(lambda: emu.open_sessions() == 0, timeout=INTERVAL + TIMEOUT + 10, interval=0.05)
        took = time.monotonic() - restarted
        text = wait_for(lambda: (lambda t: t if sample(t, "fcmon_sessions_reaped_total", target="prod") else None)(
            scrape(url)), timeout=10)
        assert sample(text, "fcmon_sessions_reaped_total", target="prod") == 1
        # the first probe (within one interval of the start) deletes it; the
        # rest is the interpreter's start on a loaded machine
        assert took <= INTERVAL + TIMEOUT + 10, took
        fc.wait_for_line(r"prod: deleted 1 orphaned session\(s\) of this fcmon instance")
        assert fc.stop() == 0
    print(f"orphan gone {took:.2f} s after the restart, process start included (interval {INTERVAL:g} s)")
    assert emu.open_sessions() == 0


def _open(test_pki: PKI, emu: Emulator, n: int) -> None:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(test_pki.ca_file)
    s.cert = (str(test_pki.client.cert), str(test_pki.client.key))
    body = {"api": "admin", "action": "createSession",
            "params": {"username": "ADMIN", "password": "ADMIN", "description": "a leaky application"}}
    with s:
        for _ in range(n):
            assert s.post(emu.url, json=body, timeout=10).json()["errorCode"] == 0


def test_45_other_sessions_show_as_46_and_the_alert_fires(test_pki: PKI, emu: Emulator, tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    _open(test_pki, emu, 45)
    config = tmp_path / "fcmon.ini"
    config.write_text(head() + target_section(test_pki, emu))
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        text = wait_for(lambda: (lambda t: t if sample(t, "fcmon_account_sessions", target="prod") else None)(
            scrape(url)), timeout=20)
        assert sample(text, "fcmon_account_sessions", target="prod") == 46  # 45 + the probe's own
        assert sample(text, "fcmon_account_sessions_limit", target="prod") == 50
        assert sample(text, "fcmon_account_sessions_fcmon", target="prod") == 1
        assert sample(text, "fcmon_sessions_reaped_total", target="prod") == 0
        assert sample(text, "fcmon_up", target="prod") == 1
        job = copy.deepcopy(example_jobs()["fcmon"])
        job["static_configs"] = [{"targets": [host_port(url)]}]
        job["scrape_interval"] = "1s"
        rules = rules_with_short_for(tmp_path)
        with Prometheus(binary, tmp_path / "prom", prometheus_config([job], [str(rules)])) as prom:
            prom.wait_ready()

            def high() -> Optional[List[Dict[str, Any]]]:
                alerts = [a for a in firing(prom) if a["labels"]["alertname"] == "FcmonAccountSessionsHigh"]
                return alerts or None

            (alert,) = wait_for(high, timeout=60, interval=0.5)
            assert alert["labels"]["target"] == "prod" and alert["labels"]["severity"] == "warning"
            assert alert["annotations"]["summary"] == "prod: account holds 92% of its session limit"
            assert alert["annotations"]["runbook_url"].endswith("#fcmonaccountsessionshigh")
        assert fc.stop(signal.SIGTERM) == 0
    assert emu.open_sessions() == 45  # the application's sessions are not fcmon's to delete
