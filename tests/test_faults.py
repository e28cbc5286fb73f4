"""The fault matrix: every fault the emulator can inject, one row each.

For every row the probe ends with the right stage and reason within
timeout + 1 s, raises nothing, leaks no secret into logs or results, and
leaves 0 open sessions whenever the server could accept a deleteSession.
Where it could not, the session was created with a short idle timeout and
dies on the server by itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from typing import Optional

import pytest

from fcmon import pki
from fcmon.emulator import Emulator, Fault
from fcmon.probe.run import Prober

from support import PKI, make_target, wait_for

SECRET = "Zq9-very-secret-password"
TIMEOUT = 1.0
# Long enough that no session left behind expires before it is counted.
LEAK_IDLE = 300


@dataclass(frozen=True)
class Row:
    name: str
    action: str
    fault: Fault
    stage: Optional[str]  # None: the probe succeeds
    reason: Optional[str]
    # sessions the emulator still has right after the probe
    open_after: int = 0
    # fcmon knows it left a session behind
    leaked: bool = False


MATRIX = [
    Row("create: delay within timeout", "createSession", Fault(delay=0.2), None, None),
    # createSession was sent and no usable answer came back: the server may
    # have created a session whose token fcmon never got (the drip, the
    # malformed answers below did). fcmon cannot rule it out and counts a
    # leak; the short idle timeout bounds the cost.
    Row("create: hang", "createSession", Fault(hang=True), "create_session", "timeout", leaked=True),
    Row("create: drip", "createSession", Fault(drip=True), "create_session", "timeout", open_after=1,
        leaked=True),
    Row("create: reset", "createSession", Fault(reset=True), "create_session", "bad_response", leaked=True),
    Row("create: HTTP 500 HTML", "createSession", Fault(http500_html=True), "create_session", "http_status",
        leaked=True),
    Row("create: malformed JSON", "createSession", Fault(malformed_json=True), "create_session",
        "bad_response", open_after=1, leaked=True),
    Row("create: JSON not an object", "createSession", Fault(non_object_json=True), "create_session",
        "bad_response", open_after=1, leaked=True),
    Row("create: oversized", "createSession", Fault(oversized=2_000_000), "create_session",
        "bad_response", open_after=1, leaked=True),
    Row("create: errorCode, HTTP 200", "createSession", Fault(error_code=451), "create_session", "api_error"),
    Row("create: errorCode, HTTP 401", "createSession", Fault(error_code=451, http_status=401),
        "create_session", "api_error"),
    Row("create: no authToken", "createSession", Fault(missing_auth_token=True), "create_session",
        "bad_response", open_after=1, leaked=True),
    Row("create: session limit", "createSession", Fault(limit_reached=True), "create_session", "api_error"),
    Row("list: delay within timeout", "listDatabases", Fault(delay=0.2), None, None),
    Row("list: delay past timeout", "listDatabases", Fault(delay=TIMEOUT + 0.3), "list_databases", "timeout"),
    Row("list: hang", "listDatabases", Fault(hang=True), "list_databases", "timeout"),
    Row("list: drip", "listDatabases", Fault(drip=True), "list_databases", "timeout"),
    Row("list: reset", "listDatabases", Fault(reset=True), "list_databases", "bad_response"),
    Row("list: HTTP 500 HTML", "listDatabases", Fault(http500_html=True), "list_databases", "http_status"),
    Row("list: malformed JSON", "listDatabases", Fault(malformed_json=True), "list_databases", "bad_response"),
    Row("list: JSON not an object", "listDatabases", Fault(non_object_json=True), "list_databases",
        "bad_response"),
    Row("list: oversized", "listDatabases", Fault(oversized=2_000_000), "list_databases", "bad_response"),
    Row("list: errorCode, HTTP 200", "listDatabases", Fault(error_code=12031), "list_databases", "api_error"),
    Row("list: errorCode, HTTP 400", "listDatabases", Fault(error_code=12031, http_status=400),
        "list_databases", "api_error"),
    Row("delete: hang", "deleteSession", Fault(hang=True), "delete_session", "timeout",
        open_after=1, leaked=True),
    Row("delete: reset", "deleteSession", Fault(reset=True), "delete_session", "bad_response",
        open_after=1, leaked=True),
    Row("delete: HTTP 500 HTML", "deleteSession", Fault(http500_html=True), "delete_session", "http_status",
        open_after=1, leaked=True),
    Row("delete: errorCode", "deleteSession", Fault(error_code=99), "delete_session", "api_error",
        open_after=1, leaked=True),
    # The server deleted the session but the answer never arrived: fcmon
    # counts a leak it cannot rule out.
    Row("delete: drip", "deleteSession", Fault(drip=True), "delete_session", "timeout", leaked=True),
]


def _no_secrets(text: str, secrets: list) -> None:
    for s in secrets:
        assert s not in text


@pytest.mark.parametrize("row", MATRIX, ids=[r.name for r in MATRIX])
def test_fault_matrix(row: Row, test_pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, users={"ADMIN": SECRET}) as emu:
        emu.set_fault(row.action, row.fault)
        target = make_target(test_pki, emu, password=SECRET, timeout=TIMEOUT, interval=10.0,
                             session_idle_timeout=LEAK_IDLE, max_response_bytes=1_048_576)
        result = Prober().probe(target)
        open_after = emu.open_sessions()
        tokens = [r["authToken"] for r in emu.requests_seen() if isinstance(r.get("authToken"), str)]

    got = (result.failure.stage, result.failure.reason) if result.failure else (None, None)
    assert got == (row.stage, row.reason), result.failure
    if result.failure:
        assert "internal error" not in result.failure.message
    assert result.duration < TIMEOUT + 1.0
    assert open_after == row.open_after
    assert result.session_leaked == row.leaked
    _no_secrets(caplog.text + repr(result), [SECRET] + tokens)


def test_session_left_behind_dies_on_the_server(test_pki: PKI) -> None:
    """The short idle timeout sent with createSession bounds the cost of a leak."""
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as emu:
        emu.set_fault("deleteSession", Fault(error_code=99))
        result = Prober().probe(make_target(test_pki, emu, session_idle_timeout=2, timeout=TIMEOUT))
        assert result.session_leaked
        assert emu.open_sessions() == 1
        wait_for(lambda: emu.open_sessions() == 0, timeout=10)


def _tls_probe(test_pki: PKI, server_files, target_overrides=None, tls_max=None):  # type: ignore[no-untyped-def]
    with Emulator(cert_file=server_files.cert, key_file=server_files.key,
                  client_ca_file=test_pki.ca_file, tls_max_version=tls_max) as emu:
        before = len(emu.requests_seen())
        result = Prober().probe(make_target(test_pki, emu, timeout=TIMEOUT, **(target_overrides or {})))
        sent = emu.requests_seen()[before:]
        assert emu.open_sessions() == 0
    return result, sent


NOW = dt.datetime.now(dt.timezone.utc)
SERVER_CERT_FAULTS = {
    "expired": dict(days=3, not_before=NOW - dt.timedelta(days=10)),
    "not yet valid": dict(days=30, not_before=NOW + dt.timedelta(days=2)),
    "wrong host": dict(hosts=("db.example.com",), common_name="db.example.com"),
}


@pytest.mark.parametrize("kind", sorted(SERVER_CERT_FAULTS) + ["unknown CA"])
def test_bad_server_certificate_is_tls_verify_and_reported(kind: str, test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if kind == "unknown CA":
        issued = pki.make_server(pki.make_ca("rogue CA"))
    else:
        issued = pki.make_server(test_pki.ca, **SERVER_CERT_FAULTS[kind])  # type: ignore[arg-type]
    files = issued.write(tmp_path, "bad-server")
    result, sent = _tls_probe(test_pki, files)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "tls_verify")
    assert result.duration < TIMEOUT + 1.0
    # Fetched over the separate reporting-only handshake: no request, no
    # credentials went over it.
    assert sent == []
    server = [c for c in result.certs if c.role == "server"]
    assert len(server) == 1
    assert server[0].serial == format(issued.cert.serial_number, "x")
    assert server[0].not_after == pytest.approx(issued.cert.not_valid_after_utc.timestamp())
    if kind == "expired":
        assert server[0].not_after < NOW.timestamp()


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, None], ids=["TLS 1.2", "TLS 1.3"])
def test_client_certificate_from_unknown_ca(tls_max, test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rogue = pki.make_client(pki.make_ca("rogue CA")).write(tmp_path, "rogue-client")
    result, sent = _tls_probe(test_pki, test_pki.server,
                              {"client_cert_file": rogue.cert, "client_key_file": rogue.key}, tls_max)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "client_cert_rejected")
    assert result.duration < TIMEOUT + 1.0
    assert sent == []


def test_matrix_covers_every_reason_but_network_ones() -> None:
    from fcmon.probe.result import REASONS, STAGES

    assert {r.stage for r in MATRIX if r.stage} == set(STAGES) - {"connect"}
    covered = {r.reason for r in MATRIX} | {"tls_verify", "client_cert_rejected"}
    # dns, connect_refused: tests/test_probe.py; connect_timeout and
    # tls_handshake below; internal (fcmon's own failures): tests/test_chaos.py.
    assert set(REASONS) - covered == {"dns", "connect_refused", "connect_timeout", "tls_handshake", "internal"}


def test_silent_listener_is_connect_timeout() -> None:
    """A TCP listener that never completes the TLS handshake."""
    import socket
    import time

    from fcmon.config import TargetConfig

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        target = TargetConfig(name="silent", endpoint=f"https://localhost:{port}/api", timeout=TIMEOUT,
                              interval=10.0)
        started = time.monotonic()
        result = Prober().probe(target)
        assert time.monotonic() - started < TIMEOUT + 1.0
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "connect_timeout")


def test_plain_http_server_on_https_endpoint_is_tls_handshake() -> None:
    """Something that is not TLS answers on the port."""
    import socket
    import threading

    from fcmon.config import TargetConfig

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = Prober().probe(TargetConfig(name="plain", endpoint=f"https://localhost:{port}/api",
                                             timeout=TIMEOUT, interval=10.0))
    finally:
        thread.join(5)
        listener.close()
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "tls_handshake")
