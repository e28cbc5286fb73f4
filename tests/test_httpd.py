"""The front door (fcmon/web/httpd.py) against hostile callers, in process and
fast: methods, sizes, the whole-request deadline, the connection cap, and
threads back to their baseline. Process-level attacks are in
test_hostile_callers.py."""

from __future__ import annotations

import http.client
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List, Optional

import pytest
from prometheus_client import CollectorRegistry

import fcmon.web.httpd as httpd
from fcmon.config import WebConfig
from fcmon.web.app import App, WebServer

from support import connect_from, wait_for

BODY = b"fcmon_up 1.0\n" * 1000


def _probe(name: str) -> Optional[CollectorRegistry]:
    if name != "slow":
        return None
    time.sleep(0.5)
    return CollectorRegistry()


@pytest.fixture
def rejected() -> List[str]:
    return []


@pytest.fixture
def server(rejected: List[str]) -> Iterator[WebServer]:
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, WebConfig())
    web = WebServer(app, "127.0.0.1", 0, None, max_connections=20, on_rejected=lambda reason: rejected.append(reason))
    web.start()
    yield web
    web.stop()


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _get(port: int, method: str = "GET", path: str = "/metrics") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


@pytest.mark.parametrize("method", ["POST", "DELETE", "TRACE", "PUT", "OPTIONS"])
def test_methods_other_than_get_and_head_are_405(server: WebServer, method: str) -> None:
    r = _get(server.port, method)
    assert r.status == 405
    assert r.getheader("Allow") == "GET, HEAD"
    assert b"fcmon_up" not in r.body  # type: ignore[attr-defined]


def test_head_has_the_length_but_no_body(server: WebServer) -> None:
    head = _raw(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(BODY)}".encode() in head
    assert head.endswith(b"\r\n\r\n")  # nothing after the head
    r = _get(server.port, "GET")
    assert r.status == 200 and r.body == BODY  # type: ignore[attr-defined]


def test_keep_alive_serves_several_requests(server: WebServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == BODY
    conn.close()


def test_a_client_that_half_closes_during_its_answer_frees_its_slot(server: WebServer) -> None:
    """The client's FIN arrived while its answer was being made: the
    connection used to stay as an idle keep-alive until IDLE_TIMEOUT (30 s),
    holding its slot (under a flood, a scraper's own old connections then
    made it a "heavy" address and it was refused). Answered or not (work
    for a client that has gone may be dropped), the slot is free at once."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(100)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 200 ")
        wait_for(lambda: server._server.open == 0, timeout=httpd.IDLE_TIMEOUT / 3)


def test_long_request_line_is_414(server: WebServer) -> None:
    answer = _raw(server.port, b"GET /metrics?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 ")


def test_fat_headers_are_431(server: WebServer) -> None:
    answer = _raw(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Fat: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    assert _raw(server.port, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_garbage_is_400(server: WebServer) -> None:
    assert _raw(server.port, b"\x16\x03\x01 hello\r\n\r\n").startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("request_head, status", [
    (b"GET /metrics HTTP/1.9\r\n\r\n", 505),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"GET /metrics HTTP/1.1\nHost: x\n\n", 400),  # bare LF: answered at once, not held
    (b"GET /metrics HTTP/1.1\r\nHost: x\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", 400),  # bare CR
    (b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nBad(name): x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX-A : x\r\n\r\n", 400),  # space before the colon
    (b"GET /metrics HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 400),  # obs-fold
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /met\x01rics HTTP/1.1\r\n\r\n", 400),
    (b"G(T /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics http/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.10\r\n\r\n", 400),
])
def test_malformed_heads_are_answered_at_once(server: WebServer, request_head: bytes, status: int) -> None:
    """RFC 9112: only HTTP/1.0 and 1.1 (505), token header names, no bare LF
    or CR, no control characters; the answer comes at once (the old parser
    held a bare-LF head until its deadline and dropped it unanswered)."""
    started = time.monotonic()
    answer = _raw(server.port, request_head)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:60]
    assert time.monotonic() - started < httpd.REQUEST_DEADLINE


def test_well_formed_heads_still_pass(server: WebServer) -> None:
    answer = _raw(server.port, b"\r\nGET /metrics HTTP/1.0\r\nHost: localhost:9731\r\nX-Tab:\tv\t\r\n"
                               b"Accept: */*\r\nX_Under.Score~: 1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_slow_headers_are_dropped_by_the_whole_request_deadline(
        server: WebServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpd, "REQUEST_DEADLINE", 1.0)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(10)]
    stop = threading.Event()
    dropped: List[int] = []

    def drip(i: int) -> None:
        s = socks[i]
        try:
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                if stop.is_set():
                    return
                s.sendall(bytes([byte]))  # one byte every 0.1 s: never idle for long
                time.sleep(0.1)
        except OSError:
            dropped.append(i)

    with ThreadPoolExecutor(10) as pool:
        for i in range(10):
            pool.submit(drip, i)
        # While they drip, a scrape is answered.
        assert _get(server.port).status == 200
        wait_for(lambda: len(dropped) == 10, timeout=30)
        stop.set()
    for s in socks:
        s.close()
    wait_for(lambda: server._server.open == 0)


def _closed_at_once(s: socket.socket) -> bool:
    """Closed by the server with a FIN or a reset (on a loaded machine the
    reset can arrive before connect() returns)."""
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        return s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _get_from(source: str, port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return s.recv(100)


def test_connections_beyond_the_cap_are_closed_and_counted(server: WebServer, rejected: List[str]) -> None:
    # 20 clients holding one each: the cap, not a client's share, is what is full.
    idle = [s for i in range(20) for s in connect_from(f"127.0.0.{10 + i}", server.port, 1)]
    try:
        wait_for(lambda: server._server.open == 20)
        extra = connect_from("127.0.0.1", server.port, 1)
        assert extra == [] or _closed_at_once(extra[0])
        for s in extra:
            s.close()
        wait_for(lambda: rejected == ["full"])
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: server._server.open == 0)
    assert _get(server.port).status == 200


def _server(max_connections: int, per_client: int, rejected: List[str]) -> WebServer:
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, WebConfig(max_connections_per_client=per_client))
    web = WebServer(app, "127.0.0.1", 0, None, max_connections=max_connections, on_rejected=rejected.append)
    web.start()
    return web


def test_one_address_holds_at_most_its_own_limit(rejected: List[str]) -> None:
    web = _server(20, 5, rejected)
    try:
        held = connect_from("127.0.0.2", web.port, 8)
        wait_for(lambda: len(rejected) == 3)
        assert rejected == ["per_client"] * 3
        assert web._server.open == 5
        # another address is answered
        assert _get_from("127.0.0.1", web.port).startswith(b"HTTP/1.1 200 ")
        for s in held:
            s.close()
    finally:
        web.stop()


def test_slots_held_back_answer_a_new_client_when_one_address_holds_the_rest(rejected: List[str]) -> None:
    """Cap 20, no per-address limit to speak of: 127.0.0.2 gets 18, the last
    2 are held back for addresses that hold fewer than 4 (the scraper)."""
    web = _server(20, 1000, rejected)
    try:
        held = connect_from("127.0.0.2", web.port, 25)
        wait_for(lambda: len(rejected) >= 7)
        assert set(rejected) == {"held_back"}
        assert web._server.open == 20 - httpd.held_back(20)
        for _ in range(3):
            assert _get_from("127.0.0.1", web.port).startswith(b"HTTP/1.1 200 ")
        # the attacker, reconnecting, still does not get them
        more = connect_from("127.0.0.2", web.port, 2)
        assert all(_closed_at_once(s) for s in more)
        for s in held + more:
            s.close()
        wait_for(lambda: web._server.open == 0)
    finally:
        web.stop()


def test_client_key_groups_ipv6_by_64() -> None:
    assert httpd.client_key("127.0.0.2") == "127.0.0.2"
    assert httpd.client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert httpd.client_key("2001:db8:1:2:aaaa::1") == httpd.client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert httpd.client_key("2001:db8:1:3::1") != httpd.client_key("2001:db8:1:2::1")
    assert httpd.client_key("::1") == "::/64"


def test_threads_return_to_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpd, "THREAD_IDLE", 0.5)
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, WebConfig())
    web = WebServer(app, "127.0.0.1", 0, None)
    web.start()
    try:
        baseline = threading.active_count()
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: _get(web.port, path="/probe?target=slow").status, range(20)))
        assert answers == [200] * 20
        assert web._server.threads > 1
        wait_for(lambda: web._server.threads == 0 and threading.active_count() <= baseline)
    finally:
        web.stop()


def _thread_cpu(stat: Any) -> float:
    """CPU seconds of a thread, from its /proc stat file (opened beforehand)."""
    stat.seek(0)
    fields = stat.read().decode().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_pauses_instead_of_spinning_when_out_of_descriptors(caplog: pytest.LogCaptureFixture) -> None:
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, WebConfig())
    web = WebServer(app, "127.0.0.1", 0, None, max_connections=100000)  # no cap: the limit is hit
    web.start()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", {web.port})) for _ in range(60)]
print("connected", flush=True)
time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    tid = web._server._thread.native_id  # type: ignore[union-attr]
    stat = open(f"/proc/self/task/{tid}/stat", "rb", buffering=0)  # before descriptors run out
    try:
        with caplog.at_level(logging.WARNING, logger="fcmon.web.httpd"):
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 10, hard))
            try:
                assert holder.stdout is not None and holder.stdout.readline().strip() == "connected"
                wait_for(lambda: "cannot accept connections" in caplog.text)
                cpu0, t0 = _thread_cpu(stat), time.monotonic()
                time.sleep(2.0)
                busy = (_thread_cpu(stat) - cpu0) / (time.monotonic() - t0)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # A spinning accept loop burns a whole core; a paused one next to nothing.
        assert busy < 0.5
        assert caplog.text.count("cannot accept connections") == 1  # rate-limited
        wait_for(lambda: web._server.open == 60)  # accepting resumed once descriptors were back
    finally:
        stat.close()
        holder.kill()
        holder.wait()
        web.stop()


@pytest.mark.parametrize("host, web, allowed", [
    (None, WebConfig(), True),
    ("127.0.0.1:9731", WebConfig(), True),
    ("[::1]:9731", WebConfig(), True),
    ("10.1.2.3", WebConfig(), True),
    ("localhost:9731", WebConfig(), True),
    ("app.localhost", WebConfig(), True),
    ("monitor-7", WebConfig(), True),  # the machine's own name
    ("monitor-7.example.com.", WebConfig(), False),  # not its name as `hostname` gives it
    ("evil.example.com", WebConfig(), False),  # DNS rebinding: the attacker's page's name
    ("evil.example.com", WebConfig(basic_auth_username="p", basic_auth_password="x"), True),
    ("fcmon.example.com:9731", WebConfig(allowed_hosts=("fcmon.example.com",)), True),
    ("a.example.com", WebConfig(allowed_hosts=("*.example.com",)), True),
    ("example.com", WebConfig(allowed_hosts=("*.example.com",)), False),
    ("evil.example.com", WebConfig(allowed_hosts=("fcmon.example.com",),
                                   basic_auth_username="p", basic_auth_password="x"), False),
    ("anything", WebConfig(allowed_hosts=("*",)), True),
])
def test_host_names_served(host: Optional[str], web: WebConfig, allowed: bool) -> None:
    from fcmon.web.app import host_allowed

    assert host_allowed(host, web, frozenset({"monitor-7"})) is allowed


def test_unknown_host_is_421(server: WebServer) -> None:
    answer = _raw(server.port, b"GET /api/v1/status HTTP/1.1\r\nHost: rebound.example.com:9731\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 421 ")
    assert _raw(server.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9731\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_tls_handshakes_in_progress_are_capped_and_a_new_client_gets_the_next_slot(
        test_pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL holds about 50 KB per handshake in progress: at most
    MAX_HANDSHAKES at once. 127.0.0.2 starts 10 handshakes and stalls
    (a ClientHello, then nothing) against 4 slots; the scraper from
    127.0.0.1 gets the first slot that frees, ahead of the 6 waiting."""
    import ssl

    from fcmon.web.app import server_ssl_context

    monkeypatch.setattr(httpd, "HANDSHAKE_TIMEOUT", 1.0)
    web_config = WebConfig(tls_cert_file=test_pki.server.cert, tls_key_file=test_pki.server.key)
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, web_config)
    web = WebServer(app, "127.0.0.1", 0, server_ssl_context(web_config))
    web._server._handshakes.limit = 4
    web.start()
    ctx = ssl.create_default_context(cafile=str(test_pki.ca_file))
    try:
        stalled = []
        for _ in range(10):
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
            with pytest.raises(ssl.SSLWantReadError):
                client.do_handshake()
            s = socket.create_connection(("127.0.0.1", web.port), timeout=10, source_address=("127.0.0.2", 0))
            s.sendall(outgoing.read())
            stalled.append(s)
        gate = web._server._handshakes
        wait_for(lambda: gate.busy == 4 and sum(len(q) for q in gate._waiting.values()) == 6)
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200 ")
        assert gate.busy <= 4
        for s in stalled:
            s.close()
        wait_for(lambda: gate.busy == 0 and not gate._waiting)
    finally:
        web.stop()


def test_pool_work_cancelled_while_queued_ends_no_thread() -> None:
    """Work whose future was cancelled while it waited (its coroutine was
    cancelled at SIGTERM) and whose client has gone: the worker used to set
    Gone on the cancelled future, raise InvalidStateError (a traceback in
    the log) and die without being counted, one thread fewer each time."""
    pool = httpd.ElasticPool(1, "test-pool", idle=5.0, queue=10)
    started, release = threading.Event(), threading.Event()
    errors: List[Any] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        busy = pool.submit_bounded(lambda: (started.set(), release.wait(10)), lambda: True)
        assert started.wait(10)
        queued = pool.submit_bounded(lambda: "ran", lambda: False)  # its client has gone
        assert queued.cancel()
        release.set()
        busy.result(10)
        after = pool.submit_bounded(lambda: "ran", lambda: True)
        assert after.result(10) == "ran"  # the one thread is still there
        assert pool.threads == 1
        assert errors == []
    finally:
        threading.excepthook = old_hook
        pool.shutdown()
