"""No password and no authToken in any log line, metric, debug probe,
`check` (also --verbose) or `validate` output, at log_level = debug,
through the faults."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import pytest

from fcmon.emulator import Emulator, Fault

from support import PKI, FcmonProcess, fcmon_command, reap, scrape, wait_for

pytestmark = pytest.mark.slow

SECRET = "Qx7-unmistakable-Secret"
FAULTS = [
    ("listDatabases", Fault(hang=True)),
    ("listDatabases", Fault(malformed_json=True)),
    ("listDatabases", Fault(error_code=12031, http_status=400)),
    ("createSession", Fault(missing_auth_token=True)),
    ("createSession", Fault(error_code=451)),
    ("deleteSession", Fault(reset=True)),
    ("createSession", Fault(http500_html=True)),
]


def test_secrets_never_leave(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pw").write_text(SECRET + "\n")
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, users={"ADMIN": SECRET}) as emu:
        sections = ""
        for name, source in (("file", "password_file = pw"), ("env", "password_env = FCMON_TEST_PW"),
                             ("inline", f"password = {SECRET}")):
            sections += f"""
[target:{name}]
endpoint = {emu.url}
username = ADMIN
{source}
ca_file = {test_pki.ca_file}
client_cert_file = {test_pki.client.cert}
client_key_file = {test_pki.client.key}
"""
        config = tmp_path / "config.ini"
        config.write_text("[fcmon]\nlisten = 127.0.0.1:0\ninterval = 1\ntimeout = 0.8\nlog_level = debug\n"
                          + sections)
        env = {"FCMON_TEST_PW": SECRET}
        outputs = []
        with FcmonProcess("run", "-c", str(config), env=env) as fc:
            url = fc.metrics_url()
            for action, fault in FAULTS:
                emu.clear_faults()
                emu.set_fault(action, fault)
                before = len(emu.requests_seen())
                # at least two probes of every target under this fault
                wait_for(lambda n=before + 6: len(emu.requests_seen()) >= n, timeout=20)
                outputs.append(scrape(url))
                # the three targets' debug probes at once (each up to its
                # timeout under a hang; one at a time is per target)
                with ThreadPoolExecutor(3) as pool:
                    debugs = list(pool.map(scrape, [url.replace("/metrics", f"/probe?target={name}&debug=true")
                                                    for name in ("file", "env", "inline")]))
                for debug in debugs:
                    assert "<redacted>" in debug and "probe ended:" in debug
                    outputs.append(debug)
            emu.clear_faults()
            emu.set_fault("listDatabases", Fault(error_code=12031))
            *checks, validate = _run_all([fcmon_command("check", "-c", str(config), "--format", fmt, "--verbose")
                                          for fmt in ("text", "json", "prometheus")]
                                         + [fcmon_command("validate", "-c", str(config))], env)
            for proc in checks:
                assert "errorCode 12031 (authToken matches no session)" in proc.stderr
                outputs += [proc.stdout, proc.stderr]
            assert validate.returncode == 0, validate.stderr
            outputs += [validate.stdout, validate.stderr]
            assert fc.stop() == 0
        tokens = {r["authToken"] for r in emu.requests_seen() if isinstance(r.get("authToken"), str)}
    text = fc.text() + "\n".join(outputs)
    assert len(tokens) > 10
    assert "probe failed" in fc.text()  # the faults were seen and logged
    assert "DEBUG fcmon.service.daemon: target inline: probe failed at " in fc.text()  # the per-probe debug line
    assert SECRET not in text
    leaked = [t for t in tokens if t in text]
    assert leaked == []


def _env() -> dict:
    import os

    return dict(os.environ)


def _run_all(commands: List[List[str]], env: Optional[Dict[str, str]] = None) -> List[subprocess.CompletedProcess]:
    """Each command to completion, all at once (each is an interpreter's
    start, most of its time: in a row they took 2 s each on a loaded machine)."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**_env(), **(env or {})}) for c in commands]
    done = []
    try:
        for command, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    finally:
        for proc in procs:
            reap(proc)
    return done


def test_census_tokens_never_leave(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The tokens a census sees (other applications', this instance's
    orphans being reaped, fcmon's own) reach no log line, metric, page or
    check output, whatever describeSessions answers."""
    import time

    import requests

    from fcmon.probe.census import session_description

    offset = [0.0]
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, wall_clock=lambda: time.time() + offset[0]) as emu:
        http = requests.Session()
        http.trust_env = False
        http.verify = str(test_pki.ca_file)
        http.cert = (str(test_pki.client.cert), str(test_pki.client.key))

        def open_session(description: str) -> str:
            body = {"api": "admin", "action": "createSession",
                    "params": {"username": "ADMIN", "password": "ADMIN", "description": description}}
            return str(http.post(emu.url, json=body, timeout=10).json()["result"]["authToken"])

        offset[0] = -600.0
        orphans = [open_session(session_description("secrets-test")) for _ in range(2)]
        offset[0] = 0.0
        others = [open_session("an application " + str(i)) for i in range(3)]
        config = tmp_path / "config.ini"
        config.write_text(f"""[fcmon]
listen = 127.0.0.1:0
interval = 1
timeout = 0.8
log_level = debug
instance_id = secrets-test

[target:prod]
endpoint = {emu.url}
username = ADMIN
password = ADMIN
ca_file = {test_pki.ca_file}
client_cert_file = {test_pki.client.cert}
client_key_file = {test_pki.client.key}
""")
        outputs = []
        with FcmonProcess("run", "-c", str(config)) as fc:
            url = fc.metrics_url()
            wait_for(lambda: all(t not in {s.token for s in emu.store.sessions()} for t in orphans), timeout=20)
            for fault in (Fault(bare_errors=True, faircom_messages=True, error_code=12031),
                          Fault(malformed_json=True), Fault(hang=True), Fault()):
                emu.set_fault("describeSessions", fault)
                before = len(emu.requests_seen())
                wait_for(lambda n=before + 6: len(emu.requests_seen()) >= n, timeout=20)
                base = url.rsplit("/", 1)[0]
                outputs += [scrape(url), scrape(base + "/"), scrape(base + "/api/v1/status"),
                            scrape(base + "/probe?target=prod&debug=true")]
            emu.clear_faults()
            for proc in _run_all([fcmon_command("check", "-c", str(config), "--format", fmt, "--verbose")
                                  for fmt in ("text", "json", "prometheus")]):
                outputs += [proc.stdout, proc.stderr]
            assert fc.stop() == 0
        tokens = {r["authToken"] for r in emu.requests_seen() if isinstance(r.get("authToken"), str)}
        http.close()
    text = fc.text() + "\n".join(outputs)
    assert "deleted 2 orphaned session(s) of this fcmon instance" in fc.text()
    assert "session census not available" in fc.text()
    assert "fcmon_account_sessions{" in "\n".join(outputs)
    assert len(tokens) > 10
    for token in tokens | set(orphans) | set(others):
        assert token not in text
