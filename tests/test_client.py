"""The mechanisms of the probe's HTTP client: requests' adapter without a Session or PoolManager,
request plans made once per target, step times taken on the wire inside
the connection, one write per request, one TLS connection per probe, and
bodies read (and capped) by the connection itself.

These assert behaviour, not speed: timings belong in bench/.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import replace
from typing import Iterator, List

import pytest
import requests

from fcmon.probe import client as fc
from fcmon.probe.client import ApiClient, ProbeError, RequestPlan
from fcmon.config import TargetConfig
from fcmon.emulator import Emulator, Fault
from fcmon.probe.census import session_description
from fcmon.probe.run import Prober

from support import PKI, make_target

# What a probe without an instance id names its sessions.
SESSION_DESCRIPTION = session_description(None)


def _client(prober: Prober, target: TargetConfig) -> ApiClient:
    return ApiClient(prober.plan(target), prober.contexts.get(target))


def test_probe_builds_no_pool_manager_and_reads_no_environment(test_pki: PKI, emulator: Emulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """requests.Session() mounts two adapters with a PoolManager each; a probe
    sends through its own adapter and builds none. No Session: no proxy from
    the environment either."""
    built: List[object] = []
    real = requests.adapters.PoolManager

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(requests.adapters, "PoolManager", Counting)
    assert requests.Session().adapters  # the counter works: a plain Session builds them
    built.clear()
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    prober = Prober()
    target = make_target(test_pki, emulator)
    assert prober.probe(target).failure is None
    client = _client(prober, target)
    assert built == []
    assert isinstance(client.adapter, requests.adapters.HTTPAdapter)
    assert client.adapter.poolmanager is None
    client.close()


def test_request_plan_is_made_once_per_target(test_pki: PKI, emulator: Emulator) -> None:
    prober = Prober()
    target = make_target(test_pki, emulator)
    plan = prober.plan(target)
    for _ in range(3):
        assert prober.probe(target).failure is None
    assert prober.plan(target) is plan
    # An equal config (a reload that changed nothing) keeps it.
    assert prober.plan(replace(target)) is plan
    # A changed target gets a new one.
    changed = replace(target, password="other")
    assert prober.plan(changed) is not plan
    # A removed target's plan goes with it.
    prober.retain([])
    assert prober.plan(target) is not plan


def test_plan_bodies_are_the_json_the_api_expects(test_pki: PKI, emulator: Emulator) -> None:
    import json

    target = make_target(test_pki, emulator, password="pw\"with'quotes", session_idle_timeout=42)
    plan = RequestPlan(target, SESSION_DESCRIPTION)
    assert json.loads(plan.create_session()) == {
        "api": "admin", "action": "createSession",
        "params": {"description": SESSION_DESCRIPTION, "idleConnectionTimeoutSeconds": 42,
                   "username": "ADMIN", "password": "pw\"with'quotes"}}
    token = 'tok"en\\1'
    for body, expected in ((plan.list_databases(token), {"api": "db", "action": "listDatabases", "authToken": token}),
                           (plan.delete_session(token), {"api": "admin", "action": "deleteSession", "authToken": token})):
        assert json.loads(body) == expected
        assert body == json.dumps(expected, separators=(",", ":")).encode()
    # The plan holds the password; its repr does not.
    assert "pw" not in repr(plan) and "quotes" not in repr(plan)


def test_one_tls_connection_carries_every_call(test_pki: PKI, emulator: Emulator) -> None:
    """TLS 1.3 session tickets make a fresh connection readable; it must still be reused."""
    prober = Prober()
    target = make_target(test_pki, emulator)
    client = _client(prober, target)
    try:
        peer = client.connect(5)
        assert peer.tls_version == "TLSv1.3"
        created = client.call(client.plan.create_session(), 5)
        token = created.body["result"]["authToken"]
        assert client.call(client.plan.list_databases(token), 5).error_code == 0
        assert client.call(client.plan.delete_session(token), 5).error_code == 0
        assert client.connects == 1
    finally:
        client.close()
    assert emulator.open_sessions() == 0


def test_each_request_is_written_at_once(test_pki: PKI, emulator: Emulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """urllib3 writes headers and body separately; the probe's connection sends them as one."""
    writes: List[bytes] = []
    real_send = http.client.HTTPConnection.send

    def counting_send(self, data):  # type: ignore[no-untyped-def]
        writes.append(bytes(data))
        return real_send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", counting_send)
    prober = Prober()
    target = make_target(test_pki, emulator)
    client = _client(prober, target)
    try:
        client.connect(5)
        created = client.call(client.plan.create_session(), 5)
        client.call(client.plan.delete_session(created.body["result"]["authToken"]), 5)
    finally:
        client.close()
    assert len(writes) == 2  # one per request
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api HTTP/1.1\r\n")
    assert body == client.plan.create_session()
    assert emulator.open_sessions() == 0


def test_step_time_is_taken_on_the_wire(test_pki: PKI, emulator: Emulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The server's delay is in the step; requests' own work before the first
    byte and after the last one is not."""
    slow = 0.25
    real_prepare = RequestPlan.prepare
    real_build = fc._ProbeAdapter.build_response

    def slow_prepare(self, body):  # type: ignore[no-untyped-def]
        time.sleep(slow)  # before the request's first byte
        return real_prepare(self, body)

    def slow_build(self, req, resp):  # type: ignore[no-untyped-def]
        time.sleep(slow)  # after the response's last byte
        return real_build(self, req, resp)

    monkeypatch.setattr(RequestPlan, "prepare", slow_prepare)
    monkeypatch.setattr(fc._ProbeAdapter, "build_response", slow_build)
    delay = 0.3
    emulator.set_fault("listDatabases", Fault(delay=delay))
    result = Prober().probe(make_target(test_pki, emulator, timeout=10.0))
    assert result.failure is None, result.failure
    steps = dict(result.steps)
    # Wall time around the call would be at least delay + 2 * slow.
    assert delay <= steps["list_databases"] < delay + slow
    assert steps["create_session"] < slow and steps["delete_session"] < slow
    listed = next(c for c in result.calls if c.action == "listDatabases")
    assert listed.duration == steps["list_databases"]
    # connect is the TCP connect and TLS handshake alone.
    assert steps["connect"] < slow


def test_failed_call_step_is_the_wall_time_until_the_failure(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(hang=True))
    target = make_target(test_pki, emulator, timeout=1.0)
    result = Prober().probe(target)
    assert result.failure is not None and result.failure.reason == "timeout"
    steps = dict(result.steps)
    assert steps["list_databases"] >= 0.5  # from the call's start to the deadline


# ---------------------------------------------------------------- bodies read by the connection


class _OneShotServer:
    """Plain HTTP on loopback answering every request with the same raw bytes."""

    def __init__(self, response: bytes, close_after: bool = False):
        self.response = response
        self.close_after = close_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                    head, sep, rest = buf.partition(b"\r\n\r\n")
                    if not sep:
                        continue
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        continue
                    buf = rest[length:]
                    conn.sendall(self.response)
                    if self.close_after:
                        break

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[list]:
    servers: list = []
    yield servers
    for s in servers:
        s.close()


def _plain_client(port: int, cap: int = 1000) -> ApiClient:
    target = TargetConfig(name="plain", endpoint=f"http://127.0.0.1:{port}/api", allow_insecure_http=True,
                          max_response_bytes=cap)
    return ApiClient(RequestPlan(target, SESSION_DESCRIPTION), None)


def _chunked(body: bytes, piece: int = 7) -> bytes:
    out = b""
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
def test_connection_reads_every_framing(framing: str, raw_server: list) -> None:
    body = b'{"errorCode":0,"result":{"data":[]}}'
    if framing == "content-length":
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    elif framing == "chunked":
        resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body)
    else:
        resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    server = _OneShotServer(resp, close_after=framing == "close")
    raw_server.append(server)
    client = _plain_client(server.port)
    try:
        for _ in range(2):  # the second call reuses the connection, or reconnects after a close
            answer = client.call(b"{}", 5)
            assert answer.error_code == 0 and answer.body["result"] == {"data": []}
            assert client.last_wire is not None and client.last_wire >= 0
        assert client.connects == (2 if framing == "close" else 1)
    finally:
        client.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
def test_connection_caps_the_body(framing: str, raw_server: list) -> None:
    body = b'{"errorCode":0,"pad":"' + b"x" * 5000 + b'"}'
    if framing == "content-length":
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    elif framing == "chunked":
        resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, 512)
    else:
        resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    server = _OneShotServer(resp, close_after=framing == "close")
    raw_server.append(server)
    client = _plain_client(server.port, cap=1000)
    try:
        with pytest.raises(ProbeError) as err:
            client.call(b"{}", 5)
        assert err.value.reason == "bad_response" and "cap of 1000" in err.value.message
        assert client.last_wire is None
    finally:
        client.close()


def test_body_shorter_than_its_content_length_is_bad_response(raw_server: list) -> None:
    server = _OneShotServer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"errorCode\":0}", close_after=True)
    raw_server.append(server)
    client = _plain_client(server.port)
    try:
        with pytest.raises(ProbeError) as err:
            client.call(b"{}", 5)
        assert err.value.reason == "bad_response"
    finally:
        client.close()


def test_redirect_is_not_followed(raw_server: list) -> None:
    server = _OneShotServer(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n")
    raw_server.append(server)
    client = _plain_client(server.port)
    try:
        with pytest.raises(ProbeError) as err:
            client.call(b"{}", 5)
        assert err.value.reason == "http_status" and "302" in err.value.message
        assert client.connects == 1
    finally:
        client.close()


def test_rejected_client_certificate_seen_before_the_first_request(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """TLS 1.3: the server's alert can arrive before createSession is written.
    The pool then reconnects, the write may fail, and the alert must still be
    read and named, not reported as a bad response."""
    from fcmon import pki

    rogue = pki.make_client(pki.make_ca("rogue CA")).write(tmp_path, "rogue-client")
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as emu:
        prober = Prober()
        client = _client(prober, make_target(test_pki, emu, client_cert_file=rogue.cert, client_key_file=rogue.key))
        try:
            assert client.connect(5).tls_version == "TLSv1.3"
            time.sleep(0.3)  # the alert is in
            with pytest.raises(ProbeError) as err:
                client.call(client.plan.create_session(), 5)
        finally:
            client.close()
        assert emu.sessions_created() == 0
    assert err.value.reason == "client_cert_rejected"
