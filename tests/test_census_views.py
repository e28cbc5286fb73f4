"""The session census where people see it: the status page, /api/v1/status
and `fcmon check` (headroom judged at 80 % / 95 %, perfdata)."""

from __future__ import annotations

import json
import subprocess
from typing import Iterator, List

import pytest
import requests

from fcmon.web import statuspage
from fcmon.commands.check import OK, WARNING, CRITICAL, judge, render_text
from fcmon.config import TargetConfig
from fcmon.emulator import Emulator
from fcmon.probe.result import Failure, ProbeResult, SessionCensus
from fcmon.export.status import StatusBoard

from support import PKI, fcmon_command, target_section

NOW = 1_800_000_000.0


def result(census: object = None, unavailable: object = None, failed: bool = False) -> ProbeResult:
    return ProbeResult("prod", NOW - 1, NOW, 0.05, Failure("connect", "timeout", "x") if failed else None,
                       databases=2, census=census, census_unavailable=unavailable)  # type: ignore[arg-type]


def test_board_keeps_the_last_census_through_a_failed_probe_and_counts_reaped() -> None:
    board = StatusBoard("9.9.9", clock=lambda: NOW)
    board.set_targets([TargetConfig(name="prod", endpoint="https://db1:8443/api")])
    board.record(result(SessionCensus(46, 2, 50, 30.0, reaped=1)))
    board.record(result(failed=True))  # createSession refused: no census, keep the last
    board.record(result(SessionCensus(45, 1, 50, 31.0, reaped=2)))
    snap = board.snapshot()
    data = json.loads(statuspage.render_json(snap))["targets"][0]
    assert data["account_sessions"] == {"sessions": 45, "limit": 50, "fcmon": 1,
                                        "oldest_idle_seconds": 31.0, "reaped_total": 3}
    page = statuspage.render_html(snap).decode()
    assert 'class="account-sessions high"' in page and "sessions 45 of 50" in page and "3 reaped" in page
    board.record(result(unavailable="describeSessions answered errorCode 14701"))
    snap = board.snapshot()
    assert json.loads(statuspage.render_json(snap))["targets"][0]["account_sessions"] is None
    assert "sessions 45 of 50" not in statuspage.render_html(snap).decode()


@pytest.mark.parametrize("sessions, status", [(40, OK), (41, WARNING), (47, WARNING), (48, CRITICAL)])
def test_check_judges_the_accounts_headroom(sessions: int, status: int) -> None:
    verdict = judge(result(SessionCensus(sessions, 1, 50)), 30, 7, NOW)
    assert verdict.status == status, verdict.why
    if status != OK:
        assert f"account has {sessions} of 50 sessions" in verdict.why
    # configurable
    assert judge(result(SessionCensus(sessions, 1, 50)), 30, 7, NOW, sessions_warn=99,
                 sessions_crit=99.5).status == OK
    # a failed probe stays CRITICAL whatever the census says
    assert judge(result(SessionCensus(sessions, 1, 50), failed=True), 30, 7, NOW).status == CRITICAL


def test_check_perfdata_has_the_census() -> None:
    text = render_text([judge(result(SessionCensus(46, 2, 50, reaped=1)), 30, 7, NOW)], now=NOW)
    assert "'prod_account_sessions'=46;40;47.5;0;50" in text
    assert "'prod_account_sessions_fcmon'=2;;;0;50" in text
    assert "'prod_sessions_reaped'=1c" in text
    assert "account_sessions" not in render_text([judge(result(), 30, 7, NOW)], now=NOW)


@pytest.fixture
def crowded(test_pki: PKI) -> Iterator[Emulator]:
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file) as emu:
        yield emu


def _open(test_pki: PKI, emu: Emulator, n: int) -> List[str]:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(test_pki.ca_file)
    s.cert = (str(test_pki.client.cert), str(test_pki.client.key))
    body = {"api": "admin", "action": "createSession", "params": {"username": "ADMIN", "password": "ADMIN"}}
    with s:
        return [s.post(emu.url, json=body, timeout=10).json()["result"]["authToken"] for _ in range(n)]


def test_check_process_warns_with_45_other_sessions(test_pki: PKI, crowded: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _open(test_pki, crowded, 45)
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\ninterval = 60\ntimeout = 3\n" + target_section(test_pki, crowded))
    proc = subprocess.run(fcmon_command("check", "-c", str(config)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == WARNING, proc.stdout + proc.stderr
    assert proc.stdout.startswith("WARNING - prod: account has 46 of 50 sessions (92%")
    assert "'prod_account_sessions'=46;40;47.5;0;50" in proc.stdout
    proc = subprocess.run(fcmon_command("check", "-c", str(config), "--sessions-crit", "90", "--format", "json"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == CRITICAL, proc.stdout + proc.stderr
    census = json.loads(proc.stdout)["targets"][0]["account_sessions"]
    assert (census["sessions"], census["limit"], census["fcmon"]) == (46, 50, 1)
    bad = subprocess.run(fcmon_command("check", "-c", str(config), "--sessions-warn", "96"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and "--sessions-warn" in bad.stdout
    assert crowded.open_sessions() == 45


def test_debug_log_says_what_the_census_saw_and_the_description(test_pki: PKI, crowded: Emulator) -> None:
    from fcmon.probe import debuglog
    from fcmon.probe.run import Prober
    from support import make_target

    _open(test_pki, crowded, 2)
    target = make_target(test_pki, crowded)
    result = Prober(instance_id="dbg-1").probe(target)
    text = debuglog.render(result, target, "dbg-1")
    assert "session census (describeSessions): 3 of 50 sessions of the account, 1 fcmon's" in text
    assert '"description":"fcmon health check, instance dbg-1"' in text
    for s in crowded.store.sessions():
        assert s.token not in text
    crowded.set_fault("describeSessions", __import__("fcmon.emulator", fromlist=["Fault"]).Fault(error_code=14701))
    text = debuglog.render(Prober(instance_id="dbg-1").probe(target), target, "dbg-1")
    assert "session census: not available: describeSessions answered errorCode 14701" in text
