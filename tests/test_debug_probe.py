"""The debug probe (/probe?target=NAME&debug=true) over real HTTP, `check
--verbose`, and the `log_level = debug` line per probe: real TLS against the
emulator; never the password, never the authToken."""

from __future__ import annotations

import logging
import re
import subprocess
from typing import Iterator, Tuple

import pytest
import requests

from fcmon.probe import debuglog
from fcmon import pki
from fcmon.config import load_config
from fcmon.service.daemon import Daemon
from fcmon.emulator import Emulator, Fault
from fcmon.probe.run import Prober

from support import PKI, fcmon_command, free_port, make_target, sample

PASSWORD = "Zq9-debug-probe-Secret"
VERSION = "FairCom EDGE Server 4.1.2.133 (debug test)"
HOST = "db-debug.example"
# every log line: wall time, offset from the probe's start, what happened
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \+\d+\.\d{6}s \S")


@pytest.fixture
def emu(test_pki: PKI) -> Iterator[Emulator]:
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, users={"MONITOR": PASSWORD},
                  server_version=VERSION, hostname=HOST) as e:
        yield e


def _config(test_pki: PKI, emu: Emulator, tmp_path, extra: str = ""):  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(f"""\
[fcmon]
listen = 127.0.0.1:0
schedule = false
# every call probes: these tests follow one probe after another
probe_reuse_window = 0
timeout = 3
{extra}
[target:prod]
endpoint = {emu.url}
username = MONITOR
password = {PASSWORD}
ca_file = {test_pki.ca_file}
client_cert_file = {test_pki.client.cert}
client_key_file = {test_pki.client.key}
""")
    return config


@pytest.fixture
def daemon(test_pki: PKI, emu: Emulator, tmp_path) -> Iterator[Tuple[Daemon, str]]:  # type: ignore[no-untyped-def]
    d = Daemon(load_config(_config(test_pki, emu, tmp_path), {}), {})
    d.web.start()
    try:
        yield d, f"http://127.0.0.1:{d.web.port}"
    finally:
        d.web.stop()


def _get(url: str) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.get(url, timeout=20)


def _tokens(emu: Emulator) -> set:
    return {r["authToken"] for r in emu.requests_seen() if isinstance(r.get("authToken"), str)}


def _split(text: str) -> Tuple[list, str]:
    log, sep, metrics = text.partition("\n# Metrics produced by this probe\n")
    assert sep, text
    return log.splitlines(), metrics


def test_debug_probe_of_a_healthy_target(daemon, emu: Emulator, test_pki: PKI) -> None:  # type: ignore[no-untyped-def]
    _, base = daemon
    r = _get(f"{base}/probe?target=prod&debug=true")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    lines, metrics = _split(r.text)
    assert lines and all(LINE.match(line) for line in lines), lines
    log = "\n".join(lines)
    for expected in (
        f"connect: connected to 127.0.0.1:{emu.port}",
        "TLS: version TLSv1.3, cipher TLS_",
        "server certificate: subject CN=localhost,O=fcmon test PKI; issuer CN=fcmon test CA",
        "client certificate (client_cert_file, presented when the server asks for one): subject CN=ADMIN",
        "CA certificate (ca_file): subject CN=fcmon test CA",
        '"username":"MONITOR","password":"<redacted>"',
        "createSession: HTTP 200, errorCode 0 (success), ",
        f'server: serverVersion "{VERSION}", hostname "{HOST}", hostUuid "',
        '{"api":"db","action":"listDatabases","authToken":"<redacted>"}',
        "listDatabases: HTTP 200, errorCode 0 (success), 2 databases (ctreeSQL, faircom)",
        '{"api":"admin","action":"deleteSession","authToken":"<redacted>"}',
        "deleteSession: HTTP 200, errorCode 0 (success)",
        "probe ended: up in ",
    ):
        assert expected in log, expected
    assert re.search(r"server certificate: .*; 36\d days left", log)  # whole days, rounded down
    assert re.search(r"createSession: HTTP 200, .*, \d+\.\d{6} s on the wire", log)
    # then the series /probe returns for the same probe
    assert sample(metrics, "fcmon_up", target="prod") == 1
    assert sample(metrics, "fcmon_server_info", target="prod", version=VERSION, hostname=HOST) == 1
    assert sample(metrics, "fcmon_probes_total", target="prod") == 1
    tokens = _tokens(emu)
    assert len(tokens) == 1 and emu.open_sessions() == 0
    assert PASSWORD not in r.text and not any(t in r.text for t in tokens)


def test_debug_probe_of_an_api_error(daemon, emu: Emulator) -> None:  # type: ignore[no-untyped-def]
    _, base = daemon
    emu.set_fault("listDatabases", Fault(error_code=12031, http_status=400))
    r = _get(f"{base}/probe?target=prod&debug=true")
    assert r.status_code == 200
    lines, metrics = _split(r.text)
    log = "\n".join(lines)
    assert ('listDatabases: HTTP 400, errorCode 12031 (authToken matches no session), '
            'errorMessage "emulator: injected errorCode 12031 for listDatabases"') in log
    assert "deleteSession: HTTP 200, errorCode 0 (success)" in log  # the delete still ran
    assert ("probe ended: FAILED at list_databases: api_error (listDatabases: errorCode 12031 "
            "(authToken matches no session): emulator: injected errorCode 12031 for listDatabases)") in log
    assert sample(metrics, "fcmon_up", target="prod") == 0
    tokens = _tokens(emu)
    assert tokens and PASSWORD not in r.text and not any(t in r.text for t in tokens)


def test_debug_probe_of_a_refused_login_and_unknown_target(daemon, emu: Emulator) -> None:  # type: ignore[no-untyped-def]
    _, base = daemon
    emu.set_fault("createSession", Fault(error_code=451))
    text = _get(f"{base}/probe?target=prod&debug=true").text
    log = "\n".join(_split(text)[0])
    assert "createSession: HTTP 200, errorCode 451 (invalid password), errorMessage" in log
    assert "server: serverVersion" not in log and "deleteSession" not in log  # no session, no delete
    assert PASSWORD not in text
    assert _get(f"{base}/probe?target=nope&debug=true").status_code == 404
    missing = _get(f"{base}/probe?debug=true")  # no target: the parameter is named
    assert missing.status_code == 400 and "'target' parameter" in missing.text
    # without debug, /probe is unchanged: the exposition alone
    plain = _get(f"{base}/probe?target=prod")
    assert plain.status_code == 200 and plain.text.startswith("# HELP")


def test_log_level_debug_logs_one_line_per_probe(daemon, emu: Emulator, caplog) -> None:  # type: ignore[no-untyped-def]
    d, _ = daemon
    with caplog.at_level(logging.DEBUG, logger="fcmon.service.daemon"):
        d.probe_now("prod")
        emu.set_fault("listDatabases", Fault(error_code=12031))
        d.probe_now("prod")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "target prod: probe" in
             r.getMessage()]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"target prod: probe up in \d+\.\d{6}s, 2 databases \(connect \d+\.\d{6}s, "
                        r"create_session \S+s, list_databases \S+s, delete_session \S+s\)", lines[0]), lines[0]
    assert re.fullmatch(r"target prod: probe failed at list_databases: api_error in \S+s \(connect .*\); "
                        r"errorCode listDatabases 12031 \(authToken matches no session\)", lines[1]), lines[1]


def test_check_verbose_prints_the_log_to_stderr(test_pki: PKI, emu: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = _config(test_pki, emu, tmp_path)
    quiet = subprocess.run(fcmon_command("check", "-c", str(config)), capture_output=True, text=True, timeout=60)
    loud = subprocess.run(fcmon_command("check", "-c", str(config), "--verbose"), capture_output=True,
                          text=True, timeout=60)
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert quiet.stderr == ""
    # stdout is the plugin line either way (timings differ)
    strip = re.compile(r"\d+\.\d+")
    assert strip.sub("N", loud.stdout) == strip.sub("N", quiet.stdout)
    assert loud.stdout.startswith("OK - prod: up")
    lines = loud.stderr.splitlines()
    assert lines and all(LINE.match(line) for line in lines), loud.stderr
    assert "listDatabases: HTTP 200, errorCode 0 (success), 2 databases" in loud.stderr
    assert '"password":"<redacted>"' in loud.stderr
    tokens = _tokens(emu)
    assert len(tokens) == 2
    for text in (loud.stdout, loud.stderr):
        assert PASSWORD not in text and not any(t in text for t in tokens)


def test_log_of_a_certificate_that_fails_verification_and_of_a_refused_connect(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    wrong = pki.make_server(test_pki.ca, hosts=("db.example.com",), common_name="db.example.com")
    files = wrong.write(tmp_path, "wrong-host")
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        target = make_target(test_pki, emu, password=PASSWORD)
        log = debuglog.render(Prober().probe(target), target)
    assert "connect: failed after " in log and ": tls_verify (server certificate not trusted: " in log
    assert "read by a second, unverified handshake, for reporting only" in log
    assert "server certificate: subject CN=db.example.com,O=fcmon test PKI; issuer CN=fcmon test CA" in log
    assert "createSession" not in log  # nothing was sent
    assert "probe ended: FAILED at connect: tls_verify" in log

    refused = make_target(test_pki, emu, endpoint=f"https://localhost:{free_port()}/api")
    log = debuglog.render(Prober().probe(refused), refused)
    assert "connect: failed after " in log and "connect_refused (connection refused)" in log
    assert "server certificate" not in log and "TLS: version" not in log
    assert "client certificate (client_cert_file" in log  # what would have been presented


def test_a_server_that_echoes_the_password_is_redacted(test_pki: PKI, emu: Emulator) -> None:
    emu.api.server_version = f"FairCom echo {PASSWORD}"
    target = make_target(test_pki, emu, username="MONITOR", password=PASSWORD)
    result = Prober().probe(target)
    assert result.up and result.server is not None
    assert result.server.version == "FairCom echo <redacted>"
    assert PASSWORD not in debuglog.render(result, target)


def test_log_says_when_the_delete_needed_a_new_connection(test_pki: PKI, emu: Emulator) -> None:
    emu.set_fault("listDatabases", Fault(malformed_json=True))
    target = make_target(test_pki, emu, username="MONITOR", password=PASSWORD)
    result = Prober().probe(target)
    log = debuglog.render(result, target)
    assert "listDatabases: HTTP 200, no errorCode, errorMessage \"response body is not JSON\"" in log
    assert "deleteSession: over a new connection (the first one was cut or is in an unknown state)" in log
    assert "deleteSession: HTTP 200, errorCode 0 (success)" in log
    assert emu.open_sessions() == 0 and not result.session_leaked
