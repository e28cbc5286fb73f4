"""One JSON schema for `/api/v1/status` and `fcmon check --format json`.

`SPEC` below is the schema 1 document, field by field; the same checker
runs on both outputs (the API from the status board, `check` as a process
against the emulator), the same result rendered both ways gives the same
target object, and every field is named in the README's "JSON schema"
section (documented once).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any, Dict, List, Set

from fcmon.commands import check
from fcmon.probe import levels
from fcmon import runbook
from fcmon.web import statuspage
from fcmon.emulator import Emulator
from fcmon.probe.listeners import Listener, ListenerResult, ListenerRound
from fcmon.probe.result import CallResult, CertInfo, Failure, ProbeResult, ServerInfo
from fcmon.export.status import StatusBoard

from support import PKI, ROOT, fcmon_command, free_port, target_section
from test_status import DAY, HOSTILE, Clock, target

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))


def one_of(*words: str) -> Set[str]:
    return set(words)


CERT = {"role": one_of("server", "chain", "client", "ca"), "subject": str, "issuer": OPT_STR, "serial": str,
        "not_after": NUM, "days_left": NUM, "level": one_of("ok", "warning", "critical", "expired"),
        "alert": OPT_STR, "runbook": OPT_STR}
FAILURE = {"stage": OPT_STR, "reason": str, "message": str, "first_check": OPT_STR, "runbook": str}
SERVER = {"version": OPT_STR, "hostname": OPT_STR, "uuid": OPT_STR}
PROBE = {
    "ended": NUM, "age_seconds": NUM, "duration_seconds": NUM, "failure": (FAILURE, None),
    "steps": [{"step": str, "seconds": NUM}],
    "calls": [{"action": str, "seconds": NUM, "http_status": OPT_INT, "error_code": OPT_INT,
               "error_message": OPT_STR, "error_meaning": OPT_STR}],
    "databases": OPT_INT, "database_names": [str],
    "tls": ({"version": str, "cipher": OPT_STR}, None), "server": (SERVER, None), "peer_address": OPT_STR,
    "certificates": [CERT], "session_leaked": bool,
}
LISTENER = {"name": str, "port": int, "protocol": str, "state": one_of("up", "down"), "failure": (FAILURE, None),
            "checked": NUM, "age_seconds": NUM, "duration_seconds": NUM, "tls_version": OPT_STR,
            "certificates": [CERT]}
CENSUS = {"sessions": int, "limit": int, "fcmon": int, "oldest_idle_seconds": OPT_NUM, "reaped_total": int}
TARGET = {
    "name": str, "endpoint": str, "state": one_of("up", "down", "not_probed"),
    "level": one_of("ok", "warning", "critical", "unknown"), "summary": str,
    "since": OPT_NUM, "debug_probe": OPT_STR, "server": (SERVER, None), "server_seen": OPT_NUM,
    "last_probe": (PROBE, None), "listener_discovery": (bool, None), "listener_discovery_message": OPT_STR,
    "listeners": [LISTENER], "account_sessions": (CENSUS, None),
}
SUMMARY = {"targets": int, "up": int, "down": int, "not_probed": int,
           "levels": {"critical": int, "warning": int, "unknown": int, "ok": int},
           "certificates": {"expired": int, "critical": int, "warning": int},
           "listeners_down": int, "sessions_leaked": int}
# What both documents have.
SHARED = {"schema": one_of(1), "now": NUM, "cert_thresholds_days": {"warning": NUM, "critical": NUM},
          "summary": SUMMARY, "targets": [TARGET]}
API = {**SHARED,
       "summary": {**SUMMARY, "reload_successful": bool},
       "fcmon": {"version": str, "started": NUM, "uptime_seconds": NUM},
       "reload": {"successful": bool, "last_attempt": OPT_NUM, "last_success": NUM, "error": OPT_STR,
                  "runbook": OPT_STR},
       "events": [{"time": NUM, "target": str, "kind": one_of("up", "down", "failure", "added", "removed"),
                   "text": str}]}
CHECK = {**SHARED, "status": one_of("OK", "WARNING", "CRITICAL", "UNKNOWN"), "exit_code": one_of(0, 1, 2, 3)}
CHECK_UNKNOWN = {**CHECK, "message": str, "problems": [str]}


def conforms(value: Any, spec: Any, path: str = "$") -> None:
    """Fails naming the path of the first field that is missing, extra or of another type."""
    if isinstance(spec, tuple) and any(isinstance(s, (dict, list)) or s is None for s in spec):
        if value is None and None in spec:
            return
        (inner,) = [s for s in spec if s is not None]
        return conforms(value, inner, path)
    if isinstance(spec, dict):
        assert isinstance(value, dict), f"{path}: {value!r} is not an object"
        assert set(value) == set(spec), f"{path}: keys {sorted(set(value) ^ set(spec))} differ from the schema"
        for key, sub in spec.items():
            conforms(value[key], sub, f"{path}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{path}: {value!r} is not a list"
        for i, item in enumerate(value):
            conforms(item, spec[0], f"{path}[{i}]")
    elif isinstance(spec, set):
        assert value in spec and not isinstance(value, bool), f"{path}: {value!r} not one of {sorted(map(str, spec))}"
    elif spec is bool:
        assert isinstance(value, bool), f"{path}: {value!r} is not true or false"
    else:
        assert isinstance(value, spec) and not isinstance(value, bool), f"{path}: {value!r} is not {spec}"


def fields(spec: Any) -> Set[str]:
    out: Set[str] = set()
    if isinstance(spec, tuple):
        for s in spec:
            out |= fields(s)
    elif isinstance(spec, list):
        out |= fields(spec[0])
    elif isinstance(spec, dict):
        for key, sub in spec.items():
            out.add(key)
            out |= fields(sub)
    return out


# -- the same data, both ways


def _listener_round(name: str, now: float) -> ListenerRound:
    ok = ListenerResult(Listener("mqtts8883", 8883, "mqtts"), now - 10, 0.01, None, "",
                        (CertInfo("server", "CN=db1", "aa", now + 3 * DAY),), "TLSv1.3")
    bad = ListenerResult(Listener("wss9002", 9002, "mqttwss"), now - 10, 0.02, "connect_refused",
                         "connection refused")
    return ListenerRound(name, True, "", (ok, bad), now - 10)


def _results(now: float) -> List[ProbeResult]:
    certs = (CertInfo("server", f"CN={HOSTILE}", "aa", now - 3.5 * DAY, issuer="CN=CA"),
             CertInfo("client", "CN=ADMIN", "bb", now + 7 * DAY),
             CertInfo("ca", "CN=CA", "cc", now + 20 * DAY))
    down = ProbeResult("down", now - 31, now - 30, 0.05, Failure("list_databases", "api_error", f"errorCode 12031: {HOSTILE}"),
                       steps=(("connect", 0.003), ("create_session", 0.004)),
                       calls=(CallResult("createSession", 0.004, 0, 200),
                              CallResult("listDatabases", 0.002, 12031, 200, HOSTILE)),
                       certs=certs, tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384",
                       server=ServerInfo("FairCom DB 13", "db1", "u-1"), peer_address="127.0.0.1:1",
                       session_leaked=True)
    up = ProbeResult("up", now - 6, now - 5, 0.05, None, steps=(("connect", 0.003),), databases=2,
                     database_names=("a", "b"), certs=(CertInfo("server", "CN=ok", "dd", now + 400 * DAY),),
                     tls_version="TLSv1.3")
    return [down, up]


def api_document() -> Dict[str, Any]:
    clock = Clock()
    board = StatusBoard("9.9.9", clock=clock)
    board.set_targets([target("up"), target("down"), target("fresh")])
    for r in _results(clock.now):
        board.record(r)
    board.record_listeners(_listener_round("up", clock.now))
    board.record_reload(False, "[fcmon] timout: unknown key")
    return json.loads(statuspage.render_json(board.snapshot()))


def check_document() -> Dict[str, Any]:
    now = Clock().now
    rounds = {"up": _listener_round("up", now)}
    verdicts = [check.judge(r, 30, 7, now, rounds.get(r.target)) for r in _results(now)]
    endpoints = {"up": target("up").endpoint, "down": target("down").endpoint}
    return json.loads(check.render_json(verdicts, now, 30, 7, endpoints))


def test_the_api_document_is_schema_1() -> None:
    doc = api_document()
    conforms(doc, API)
    assert [t["name"] for t in doc["targets"]] == ["down", "up", "fresh"]  # worst first
    assert doc["summary"] == {"targets": 3, "up": 1, "down": 1, "not_probed": 1,
                              "levels": {"critical": 2, "warning": 0, "unknown": 1, "ok": 0},
                              "certificates": {"expired": 1, "critical": 1, "warning": 2},
                              "listeners_down": 1, "sessions_leaked": 1, "reload_successful": False}
    assert doc["reload"]["runbook"] == runbook.alert_url("FcmonConfigReloadFailed")


def test_the_check_document_is_schema_1() -> None:
    doc = check_document()
    conforms(doc, CHECK)
    assert (doc["status"], doc["exit_code"]) == ("CRITICAL", 2)
    assert [t["name"] for t in doc["targets"]] == ["down", "up"]


def test_check_and_the_api_describe_a_target_identically() -> None:
    api = {t["name"]: t for t in api_document()["targets"]}
    chk = {t["name"]: t for t in check_document()["targets"]}
    for name in ("up", "down"):
        a, c = dict(api[name]), dict(chk[name])
        # only what check cannot know: it keeps no history and serves no page
        assert (c["since"], c["debug_probe"]) == (None, None)
        assert a["debug_probe"] == f"/probe?target={name}&debug=true" and a["since"] is not None
        for t in (a, c):
            del t["since"], t["debug_probe"]
        assert a == c, name


def test_check_as_a_process_speaks_schema_1(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\ntimeout = 3\n" + target_section(test_pki, emulator, "good")
                      + target_section(test_pki, emulator, "gone").replace(emulator.url,
                                                                           f"https://localhost:{free_port()}/api"))
    proc = subprocess.run(fcmon_command("check", "-c", str(config), "--format", "json"),
                          capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    conforms(doc, CHECK)
    assert [(t["name"], t["state"]) for t in doc["targets"]] == [("gone", "down"), ("good", "up")]
    assert doc["targets"][0]["last_probe"]["failure"]["first_check"] == runbook.FIRST_CHECK["connect_refused"]
    unknown = subprocess.run(fcmon_command("check", "-c", str(config), "--target", "nope", "--format", "json"),
                             capture_output=True, text=True, timeout=60)
    conforms(json.loads(unknown.stdout), CHECK_UNKNOWN)


def test_every_field_is_documented_once_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### JSON schema", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    missing = (fields(API) | fields(CHECK_UNKNOWN)) - named
    assert not missing, f"not in README's JSON schema: {sorted(missing)}"
    assert readme.count("\n### JSON schema") == 1
    assert '"schema": 1' in section


def test_thresholds_follow_check_options() -> None:
    now = Clock().now
    r = ProbeResult("t", now - 1, now, 0.01, None, certs=(CertInfo("server", "CN=x", "aa", now + 10 * DAY),))
    doc = json.loads(check.render_json([check.judge(r, 12, 11, now)], now, 12, 11))
    assert doc["cert_thresholds_days"] == {"warning": 12, "critical": 11}
    assert doc["targets"][0]["last_probe"]["certificates"][0]["level"] == "critical"
    assert levels.cert_level(10.0, levels.Thresholds(12, 11)) == "critical"
