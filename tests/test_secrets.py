"""No password and no authToken in any log line, metric, debug probe,
`check` (also --verbose) or `validate` output, at log_level = debug,
through the faults."""

from __future__ import annotations

import subprocess

import pytest

from fcmon.emulator import Emulator, Fault

from support import PKI, FcmonProcess, fcmon_command, scrape, wait_for

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
                for name in ("file", "env", "inline"):
                    debug = scrape(url.replace("/metrics", f"/probe?target={name}&debug=true"))
                    assert "<redacted>" in debug and "probe ended:" in debug
                    outputs.append(debug)
            emu.clear_faults()
            emu.set_fault("listDatabases", Fault(error_code=12031))
            for fmt in ("text", "json", "prometheus"):
                proc = subprocess.run(fcmon_command("check", "-c", str(config), "--format", fmt, "--verbose"),
                                      capture_output=True, text=True, timeout=60, env={**_env(), **env})
                assert "errorCode 12031 (authToken matches no session)" in proc.stderr
                outputs += [proc.stdout, proc.stderr]
            proc = subprocess.run(fcmon_command("validate", "-c", str(config)), capture_output=True,
                                  text=True, timeout=60, env={**_env(), **env})
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
            assert fc.stop() == 0
        tokens = {r["authToken"] for r in emu.requests_seen() if isinstance(r.get("authToken"), str)}
    text = fc.text() + "\n".join(outputs)
    assert len(tokens) > 10
    assert "probe failed" in fc.text()  # the faults were seen and logged
    assert "DEBUG fcmon.daemon: target inline: probe failed at " in fc.text()  # the per-probe debug line
    assert SECRET not in text
    leaked = [t for t in tokens if t in text]
    assert leaked == []


def _env() -> dict:
    import os

    return dict(os.environ)
