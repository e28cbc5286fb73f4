"""The FairCom JSON DB API emulator: API behaviour, TLS, faults, control, CLI.

Real TLS over loopback with client certificates required, as fcmon sees a
FairCom server. Timing assertions use generous bounds: the suite must pass
on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

from fcmon import pki
from fcmon.emulator import (
    ERR_BAD_CREDENTIALS,
    ERR_INVALID_JSON,
    ERR_INVALID_PARAMETER,
    ERR_MISSING_ACTION,
    ERR_SESSION_LIMIT,
    ERR_UNKNOWN_ACTION,
    ERR_UNKNOWN_TOKEN,
    ERR_UNKNOWN_USER,
    Emulator,
    Fault,
    SessionStore,
)
from fcmon.emulator.faults import FaultTable
from support import reap

CREATE = {"api": "admin", "action": "createSession", "params": {"username": "ADMIN", "password": "ADMIN"}}


@dataclass(frozen=True)
class PKI:
    ca_file: Path
    server: pki.Files
    client: pki.Files  # CN=ADMIN, maps to the ADMIN account
    stranger: pki.Files  # CN=nobody, trusted CA but no such account
    foreign: pki.Files  # CN=ADMIN from a CA the emulator does not trust


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("emulator-pki")
    demo = pki.write_demo_pki(directory)  # its client is CN=ADMIN
    ca = demo.ca
    return PKI(
        ca_file=demo.ca_file,
        server=demo.server,
        client=demo.client,
        stranger=pki.make_client(ca, common_name="nobody").write(directory, "stranger"),
        foreign=pki.make_client(pki.make_ca("untrusted CA")).write(directory, "foreign"),
    )


def _emulator(certs: PKI, **kwargs: Any) -> Emulator:
    return Emulator(certs.server.cert, certs.server.key, client_ca_file=certs.ca_file, **kwargs)


@pytest.fixture
def emu(certs: PKI) -> Iterator[Emulator]:
    with _emulator(certs) as emulator:
        yield emulator


def _session(certs: PKI, client: Optional[pki.Files] = None, cert: bool = True) -> requests.Session:
    session = requests.Session()
    # This machine sets REQUESTS_CA_BUNDLE, which would override verify=.
    session.trust_env = False
    session.verify = str(certs.ca_file)
    if cert:
        files = client or certs.client
        session.cert = (str(files.cert), str(files.key))
    return session


@pytest.fixture
def http(certs: PKI) -> Iterator[requests.Session]:
    session = _session(certs)
    yield session
    session.close()


def call(http: requests.Session, emu: Emulator, body: Any, timeout: float = 10) -> Dict[str, Any]:
    response = http.post(emu.url, json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    data = response.json()
    assert isinstance(data["result"], dict)
    assert isinstance(data["errorCode"], int)
    assert isinstance(data["errorMessage"], str)
    return data


def create(http: requests.Session, emu: Emulator, **params: Any) -> str:
    body = {"api": "admin", "action": "createSession", "params": {"username": "ADMIN", "password": "ADMIN", **params}}
    data = call(http, emu, body)
    assert data["errorCode"] == 0, data
    return data["result"]["authToken"]


def list_databases(http: requests.Session, emu: Emulator, token: str, **kwargs: Any) -> Dict[str, Any]:
    return call(http, emu, {"api": "db", "action": "listDatabases", "authToken": token}, **kwargs)


# -- API behaviour ----------------------------------------------------------


def test_round_trip_leaves_no_session(emu: Emulator, http: requests.Session) -> None:
    body = {
        "api": "admin",
        "action": "createSession",
        "params": {"username": "admin", "password": "ADMIN", "description": "fcmon health check"},
        "requestId": "r-1",
    }
    created = call(http, emu, body)
    assert created["errorCode"] == 0 and created["errorMessage"] == ""
    assert created["requestId"] == "r-1"
    result = created["result"]
    token = result["authToken"]
    assert token and created["authToken"] == token  # both places, as newer servers do
    assert result["username"] == "ADMIN"  # user names are case-insensitive
    assert result["description"] == "fcmon health check"
    assert result["idleConnectionTimeoutSeconds"] == 3600
    assert result["idleCursorTimeoutSeconds"] == 600
    for key in ("defaultApi", "defaultDatabaseName", "sessionStartTimestamp", "serverVersion", "hostname"):
        assert result[key], key
    assert emu.open_sessions() == 1

    listed = list_databases(http, emu, token)
    assert listed["errorCode"] == 0
    assert listed["result"]["dataFormat"] == "objects"
    assert [f["name"] for f in listed["result"]["fields"]] == ["databaseName", "path", "uid"]
    assert [row["databaseName"] for row in listed["result"]["data"]] == ["ctreeSQL", "faircom"]
    assert all(isinstance(row["uid"], int) and row["path"] for row in listed["result"]["data"])

    deleted = call(http, emu, {"api": "admin", "action": "deleteSession", "authToken": token})
    assert deleted["errorCode"] == 0 and "debugInfo" not in deleted
    assert emu.open_sessions() == 0
    assert emu.sessions_created() == 1
    assert [r["action"] for r in emu.requests_seen()] == ["createSession", "listDatabases", "deleteSession"]
    assert emu.requests_seen()[0]["params"]["description"] == "fcmon health check"


def test_list_databases_params(emu: Emulator, http: requests.Session) -> None:
    token = create(http, emu)
    body = {"api": "db", "action": "listDatabases", "authToken": token, "params": {"partialDatabaseName": "fair"}}
    assert [r["databaseName"] for r in call(http, emu, body)["result"]["data"]] == ["faircom"]
    body["params"] = {"maxRecords": 1}
    assert [r["databaseName"] for r in call(http, emu, body)["result"]["data"]] == ["ctreeSQL"]
    body["params"] = {"skipRecords": "x"}
    assert call(http, emu, body)["errorCode"] == ERR_INVALID_PARAMETER


def test_bad_credentials(emu: Emulator, http: requests.Session) -> None:
    bad = {"api": "admin", "action": "createSession", "params": {"username": "ADMIN", "password": "wrong"}}
    data = call(http, emu, bad)
    assert data["errorCode"] == ERR_BAD_CREDENTIALS
    assert data["errorMessage"]
    assert "authToken" not in data and "authToken" not in data["result"]
    unknown = {"api": "admin", "action": "createSession", "params": {"username": "ghost", "password": "x"}}
    assert call(http, emu, unknown)["errorCode"] == ERR_UNKNOWN_USER
    assert emu.open_sessions() == 0 and emu.sessions_created() == 0


def test_unknown_token_on_list_databases(emu: Emulator, http: requests.Session) -> None:
    assert list_databases(http, emu, "no-such-token")["errorCode"] == ERR_UNKNOWN_TOKEN
    missing = call(http, emu, {"api": "db", "action": "listDatabases"})
    assert missing["errorCode"] == ERR_UNKNOWN_TOKEN
    token = create(http, emu)
    call(http, emu, {"api": "admin", "action": "deleteSession", "authToken": token})
    assert list_databases(http, emu, token)["errorCode"] == ERR_UNKNOWN_TOKEN


def test_delete_unknown_token_is_success_with_warning(emu: Emulator, http: requests.Session) -> None:
    data = call(http, emu, {"api": "admin", "action": "deleteSession", "authToken": "nope"})
    assert data["errorCode"] == 0
    warnings = data["debugInfo"]["warnings"]
    assert warnings[0]["code"] == ERR_UNKNOWN_TOKEN and warnings[0]["message"]


def test_ping_session(emu: Emulator, http: requests.Session) -> None:
    assert call(http, emu, {"api": "admin", "action": "pingSession"})["errorCode"] == 0
    bad = call(http, emu, {"api": "admin", "action": "pingSession", "authToken": "nope"})
    assert bad["errorCode"] == ERR_UNKNOWN_TOKEN
    token = create(http, emu)
    assert call(http, emu, {"api": "admin", "action": "pingSession", "authToken": token})["errorCode"] == 0


def test_malformed_requests(emu: Emulator, http: requests.Session) -> None:
    unknown = call(http, emu, {"api": "admin", "action": "closeSession", "authToken": "x", "requestId": 5})
    assert unknown["errorCode"] == ERR_UNKNOWN_ACTION and unknown["requestId"] == 5
    assert call(http, emu, {"api": "admin"})["errorCode"] == ERR_MISSING_ACTION
    assert call(http, emu, [1, 2])["errorCode"] == ERR_INVALID_JSON
    response = http.post(
        emu.url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["errorCode"] == ERR_INVALID_JSON and response.json()["errorMessage"]
    token = create(http, emu)
    wrong_api = call(http, emu, {"api": "admin", "action": "listDatabases", "authToken": token})
    assert wrong_api["errorCode"] == ERR_UNKNOWN_ACTION
    # Without "api" the session's default api ("db") applies.
    assert call(http, emu, {"action": "listDatabases", "authToken": token})["errorCode"] == 0


def test_idle_expiry(emu: Emulator, http: requests.Session) -> None:
    token = create(http, emu, idleConnectionTimeoutSeconds=0.3)
    assert emu.open_sessions() == 1
    time.sleep(0.8)
    assert emu.open_sessions() == 0
    assert list_databases(http, emu, token)["errorCode"] == ERR_UNKNOWN_TOKEN
    bad = call(http, emu, {**CREATE, "params": {**CREATE["params"], "idleConnectionTimeoutSeconds": "x"}})
    assert bad["errorCode"] == ERR_INVALID_PARAMETER


def test_session_limits(certs: PKI) -> None:
    with _emulator(
        certs, users={"ADMIN": "ADMIN", "OTHER": "pw"}, max_sessions=3, max_sessions_per_user=2
    ) as emu, _session(certs) as http:
        create(http, emu)
        create(http, emu)
        refused = call(http, emu, CREATE)
        assert refused["errorCode"] == ERR_SESSION_LIMIT and "per user" in refused["errorMessage"]
        other = {"api": "admin", "action": "createSession", "params": {"username": "OTHER", "password": "pw"}}
        assert call(http, emu, other)["errorCode"] == 0
        total = call(http, emu, other)
        assert total["errorCode"] == ERR_SESSION_LIMIT
        assert emu.open_sessions() == 3 and emu.sessions_created() == 3


def test_certificate_mapped_login(emu: Emulator, certs: PKI) -> None:
    with _session(certs) as http:
        data = call(http, emu, {"api": "admin", "action": "createSession"})
        assert data["errorCode"] == 0 and data["result"]["username"] == "ADMIN"
        assert "params" not in emu.requests_seen()[-1]
    with _session(certs, certs.stranger) as http:
        refused = call(http, emu, {"api": "admin", "action": "createSession", "params": {}})
        assert refused["errorCode"] == ERR_UNKNOWN_USER
        # A certificate does not replace a wrong password.
        bad = call(http, emu, {**CREATE, "params": {"username": "ADMIN", "password": "no"}})
        assert bad["errorCode"] == ERR_BAD_CREDENTIALS
    assert emu.open_sessions() == 1


@pytest.mark.parametrize("who", ["none", "foreign"])
def test_client_without_trusted_certificate_is_rejected(emu: Emulator, certs: PKI, who: str) -> None:
    session = _session(certs, certs.foreign, cert=(who == "foreign"))
    with session, pytest.raises(requests.exceptions.ConnectionError):
        session.post(emu.url, json=CREATE, timeout=10)
    assert emu.sessions_created() == 0
    assert emu.requests_seen() == []


def test_tls12_only_listener(certs: PKI) -> None:
    with _emulator(certs, tls_max_version=ssl.TLSVersion.TLSv1_2) as emu:
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        context.load_cert_chain(str(certs.client.cert), str(certs.client.key))
        with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == "TLSv1.2"
        # With TLS 1.2 a missing client certificate fails in the handshake itself.
        no_cert = ssl.create_default_context(cafile=str(certs.ca_file))
        with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                no_cert.wrap_socket(raw, server_hostname="localhost")


def test_keep_alive_and_content_length(emu: Emulator, certs: PKI) -> None:
    import http.client

    context = ssl.create_default_context(cafile=str(certs.ca_file))
    context.load_cert_chain(str(certs.client.cert), str(certs.client.key))
    conn = http.client.HTTPSConnection("localhost", emu.port, context=context, timeout=10)
    try:
        conn.connect()
        first_socket = conn.sock
        for _ in range(3):
            conn.request("POST", "/api", body=json.dumps({"action": "pingSession"}),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.getheader("Content-Length") is not None
            assert json.loads(response.read())["errorCode"] == 0
            assert conn.sock is first_socket  # same connection reused
    finally:
        conn.close()


def test_plain_http_listener(certs: PKI) -> None:
    with Emulator(None, allow_http=True) as emu:
        assert emu.url.startswith("http://localhost:")
        session = requests.Session()
        session.trust_env = False
        with session:
            assert session.post(emu.url, json=CREATE, timeout=10).json()["errorCode"] == 0
    with pytest.raises(ValueError):
        Emulator(None)


def test_idle_tcp_client_does_not_block_others(emu: Emulator, http: requests.Session) -> None:
    # Connected but never starts the TLS handshake.
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10):
        started = time.monotonic()
        token = create(http, emu)
        assert list_databases(http, emu, token, timeout=5)["errorCode"] == 0
        assert time.monotonic() - started < 5
        # Nor does it hold up stop(), though its handshake timeout is 10 s.
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 2.5
        assert emu.live_connections() == 0


# -- faults, observed from the client side --------------------------------


def test_fault_delay(emu: Emulator, http: requests.Session) -> None:
    token = create(http, emu)
    emu.set_fault("listDatabases", Fault(delay=0.5))
    started = time.monotonic()
    assert list_databases(http, emu, token)["errorCode"] == 0
    assert time.monotonic() - started >= 0.45


def test_fault_hang_and_prompt_stop(certs: PKI) -> None:
    emu = _emulator(certs).start()
    http = _session(certs)
    try:
        emu.set_fault("createSession", Fault(hang=True))
        with pytest.raises(requests.exceptions.ReadTimeout):
            http.post(emu.url, json=CREATE, timeout=(5, 0.5))
        # The client gave up and closed: the hung handler notices and leaves.
        deadline = time.monotonic() + 5
        while emu.live_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert emu.live_connections() == 0
        # A client still waiting when the emulator stops: stop() must not wait for it.
        outcome: List[BaseException] = []

        def waiting_client() -> None:
            try:
                _session(certs).post(emu.url, json=CREATE, timeout=30)
            except BaseException as exc:  # noqa: BLE001 (recorded for the assertion)
                outcome.append(exc)

        thread = threading.Thread(target=waiting_client, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while len(emu.requests_seen()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(emu.requests_seen()) == 2
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 2.5
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert outcome and isinstance(outcome[0], requests.exceptions.ConnectionError)
        assert emu.open_sessions() == 0  # a hung request never reached the API logic
    finally:
        emu.stop()
        http.close()


def test_fault_drip(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(drip=True, drip_interval=0.3))
    started = time.monotonic()
    response = http.post(emu.url, json=CREATE, timeout=10, stream=True)
    assert response.status_code == 200  # headers arrive at once
    assert int(response.headers["Content-Length"]) > 100
    assert response.raw.read(3) == b'{"r'
    assert time.monotonic() - started >= 0.6  # a byte at a time
    response.close()
    # The delivery is spoilt, not the request: the session exists.
    assert emu.open_sessions() == 1
    assert Fault(drip=True).drip_interval == 1.0


def test_stop_with_drip_in_progress(certs: PKI) -> None:
    emu = _emulator(certs).start()
    with _session(certs) as http:
        emu.set_fault("*", Fault(drip=True))
        response = http.post(emu.url, json={"action": "pingSession"}, timeout=10, stream=True)
        started = time.monotonic()
        emu.stop()
        assert time.monotonic() - started < 2.5
        expected = int(response.headers["Content-Length"])
        started = time.monotonic()
        try:
            body: Optional[bytes] = response.raw.read(expected)
        except Exception:  # noqa: BLE001 (urllib3 reports the cut body its own way)
            body = None
        assert body is None or len(body) < expected
        assert time.monotonic() - started < 5


def test_fault_reset(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(reset=True))
    with pytest.raises(requests.exceptions.ConnectionError):
        http.post(emu.url, json=CREATE, timeout=10)
    assert emu.open_sessions() == 0


def test_fault_http500_html(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(http500_html=True))
    response = http.post(emu.url, json=CREATE, timeout=10)
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.lstrip().lower().startswith("<!doctype html")
    assert emu.open_sessions() == 0


def test_fault_malformed_json(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(malformed_json=True))
    response = http.post(emu.url, json=CREATE, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        response.json()


def test_fault_non_object_json(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("listDatabases", Fault(non_object_json=True))
    token = create(http, emu)
    response = http.post(emu.url, json={"api": "db", "action": "listDatabases", "authToken": token}, timeout=10)
    assert response.status_code == 200
    assert not isinstance(response.json(), dict)


def test_fault_oversized(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("listDatabases", Fault(oversized=200_000))
    token = create(http, emu)
    response = http.post(emu.url, json={"api": "db", "action": "listDatabases", "authToken": token}, timeout=10)
    assert len(response.content) >= 200_000
    assert int(response.headers["Content-Length"]) == len(response.content)
    data = response.json()
    assert data["errorCode"] == 0 and data["result"]["data"]


def test_fault_error_code_with_http_status(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("listDatabases", Fault(error_code=12345, http_status=400))
    token = create(http, emu)
    response = http.post(
        emu.url, json={"api": "db", "action": "listDatabases", "authToken": token, "requestId": 9}, timeout=10
    )
    assert response.status_code == 400
    data = response.json()
    assert data["errorCode"] == 12345 and data["errorMessage"] and data["requestId"] == 9


def test_fault_error_message(emu: Emulator, http: requests.Session) -> None:
    hostile = "<script>alert(1)</script>"
    emu.set_fault("createSession", Fault.from_dict({"error_code": 12031, "error_message": hostile}))
    data = call(http, emu, CREATE)
    assert (data["errorCode"], data["errorMessage"]) == (12031, hostile)
    with pytest.raises(ValueError, match="error_message must be a string"):
        Fault.from_dict({"error_code": 1, "error_message": 5})


def test_fault_missing_auth_token(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(missing_auth_token=True))
    data = call(http, emu, CREATE)
    assert data["errorCode"] == 0
    assert "authToken" not in data and "authToken" not in data["result"]
    assert emu.open_sessions() == 1  # created, but the client cannot delete it


def test_fault_limit_reached(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(limit_reached=True))
    assert call(http, emu, CREATE)["errorCode"] == ERR_SESSION_LIMIT
    assert emu.open_sessions() == 0


def test_fault_count_wildcard_and_clear(emu: Emulator, http: requests.Session) -> None:
    emu.set_fault("createSession", Fault(error_code=77, count=2))
    assert [call(http, emu, CREATE)["errorCode"] for _ in range(3)] == [77, 77, 0]
    emu.set_fault("*", Fault(error_code=1))
    emu.set_fault("pingSession", Fault(error_code=2))
    assert call(http, emu, {"action": "pingSession"})["errorCode"] == 2  # specific beats "*"
    assert call(http, emu, {"action": "deleteSession"})["errorCode"] == 1
    emu.clear_faults()
    assert call(http, emu, {"action": "pingSession"})["errorCode"] == 0


# -- control endpoint and CLI ---------------------------------------------


def test_control_endpoint(emu: Emulator, http: requests.Session) -> None:
    base = emu.url[: -len("/api")]
    token = create(http, emu)
    fault = {"action": "listDatabases", "fault": {"error_code": 42, "count": 1}}
    answer = http.post(f"{base}/_emulator/fault", json=fault, timeout=10)
    assert answer.status_code == 200 and answer.json()["faults"]["listDatabases"]["error_code"] == 42
    assert list_databases(http, emu, token)["errorCode"] == 42
    assert list_databases(http, emu, token)["errorCode"] == 0  # count used up

    http.post(f"{base}/_emulator/fault", json={"action": "*", "fault": {"delay": 0.2}}, timeout=10)
    assert http.get(f"{base}/_emulator/fault", timeout=10).json()["faults"] == {"*": {"delay": 0.2}}
    http.post(f"{base}/_emulator/fault", json={"action": "*", "fault": {}}, timeout=10)  # empty clears
    assert http.get(f"{base}/_emulator/fault", timeout=10).json()["faults"] == {}

    bad = http.post(f"{base}/_emulator/fault", json={"action": "x", "fault": {"dleay": 1}}, timeout=10)
    assert bad.status_code == 400 and "dleay" in bad.json()["error"]
    for path in ("fault", "listener"):
        not_json = http.post(f"{base}/_emulator/{path}", data=b"{nope", timeout=10)
        assert not_json.status_code == 400 and not_json.json()["error"]
        not_object = http.post(f"{base}/_emulator/{path}", json=["x"], timeout=10)
        assert not_object.status_code == 400 and not_object.json()["error"] == "body must be a JSON object"
    assert http.get(f"{base}/_emulator/sessions", timeout=10).json() == {"open": 1, "created": 1,
                                                                           "open_by_user": {"ADMIN": 1}}
    # Control traffic is not API traffic.
    assert all(r.get("action") in ("createSession", "listDatabases") for r in emu.requests_seen())


def test_cli_subprocess(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fcmon.emulator", "--listen", "127.0.0.1:0", "--pki-dir", str(tmp_path),
         "--user", "ADMIN:ADMIN", "--database", "onlyone", "--max-sessions-per-user", "5",
         "--token-at", "result", "--bare-errors", "--faircom-messages"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (https://\S+)", first)
        assert match, first + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        url = match.group(1)
        session = requests.Session()
        session.trust_env = False
        session.verify = str(tmp_path / "ca.crt")
        session.cert = (str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        with session:
            created = session.post(url, json=CREATE, timeout=10).json()
            token = created["result"]["authToken"]
            assert "authToken" not in created  # --token-at result
            listed = session.post(url, json={"api": "db", "action": "listDatabases", "authToken": token}, timeout=10)
            gone = session.post(url, json={"api": "db", "action": "listDatabases", "authToken": "nope"},
                                timeout=10).json()
            # --bare-errors, --faircom-messages
            assert gone["authToken"] == "nope" and "result" not in gone and gone["errorCode"] == 12031
            assert gone["errorMessage"].startswith("'authToken' does not match any existing session.")
            assert [r["databaseName"] for r in listed.json()["result"]["data"]] == ["onlyone"]
            base = url[: -len("/api")]
            set_fault = {"action": "deleteSession", "fault": {"error_code": 99}}
            assert session.post(f"{base}/_emulator/fault", json=set_fault, timeout=10).status_code == 200
            refused = session.post(url, json={"action": "deleteSession", "authToken": token}, timeout=10)
            assert refused.json()["errorCode"] == 99
            assert session.get(f"{base}/_emulator/sessions", timeout=10).json() == {
                "open": 1, "created": 1, "open_by_user": {"ADMIN": 1}}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        reap(proc)


def test_cli_sigterm_right_after_the_banner_is_a_clean_stop(certs: PKI) -> None:
    """A caller may signal as soon as it has read the URL: the handlers are
    in place before the banner (a SIGTERM between the two used to kill the
    process, exit -15: 3 in 20 when signalled at once, and test_cli_subprocess
    once under load). Three at once, each signalled on its first line."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fcmon.emulator", "--listen", "127.0.0.1:0", "--cert", str(certs.server.cert),
         "--key", str(certs.server.key), "--client-ca", str(certs.ca_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert "listening on https://" in proc.stdout.readline()
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=10) for proc in procs] == [0] * 3
    finally:
        for proc in procs:
            reap(proc)


# -- pure logic, no sockets -------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_store_expiry_and_touch() -> None:
    clock = FakeClock()
    store = SessionStore(clock, max_sessions=10, max_sessions_per_user=10)
    kept = store.create("ADMIN", idle_timeout=60)
    dropped = store.create("ADMIN", idle_timeout=60)
    clock.now += 45
    assert store.touch(kept.token) is not None  # activity restarts the idle timer
    clock.now += 45
    assert store.touch(dropped.token) is None
    assert store.touch(kept.token) is not None
    assert store.open_count() == 1 and store.created_count() == 2
    assert store.delete(kept.token) is not None and store.delete(kept.token) is None


def test_store_expired_sessions_free_the_limit() -> None:
    clock = FakeClock()
    store = SessionStore(clock, max_sessions=10, max_sessions_per_user=2)
    store.create("ADMIN", idle_timeout=5)
    store.create("ADMIN", idle_timeout=5)
    with pytest.raises(Exception, match="per user"):
        store.create("ADMIN")
    clock.now += 6
    store.create("ADMIN")
    assert store.open_count() == 1


def test_fault_from_dict_validation() -> None:
    assert Fault.from_dict({"delay": 1, "hang": True, "count": 2}) == Fault(delay=1.0, hang=True, count=2)
    assert Fault.from_dict({}).is_noop() and Fault.from_dict(None).is_noop()
    for bad in ({"hang": 1}, {"delay": "1"}, {"nope": 1}, {"count": 0}, {"http_status": 99}, {"delay": -1}):
        with pytest.raises(ValueError):
            Fault.from_dict(bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fault().delay = 1  # type: ignore[misc]  # frozen


def test_fault_table_counts() -> None:
    table = FaultTable()
    table.set("createSession", Fault(reset=True, count=1))
    assert table.take("listDatabases") is None
    assert table.take("createSession") == Fault(reset=True, count=1)
    assert table.take("createSession") is None
    table.set("*", Fault(delay=1))
    assert table.take(None) == Fault(delay=1)  # unparseable requests match "*" only
    table.set("*", Fault())
    assert table.snapshot() == {}


def test_handler_disables_nagle() -> None:
    # docs/design-notes.md#nagle-in-test-servers: otherwise ~40 ms per response.
    from fcmon.emulator.server import _Handler

    assert _Handler.disable_nagle_algorithm is True
