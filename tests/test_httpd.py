"""The front door (fcmon/httpd.py) against hostile callers, in process and
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

import fcmon.httpd as httpd
from fcmon.config import WebConfig
from fcmon.web import App, WebServer

from support import wait_for

BODY = b"fcmon_up 1.0\n" * 1000


def _probe(name: str) -> Optional[CollectorRegistry]:
    if name != "slow":
        return None
    time.sleep(0.5)
    return CollectorRegistry()


@pytest.fixture
def rejected() -> List[int]:
    return []


@pytest.fixture
def server(rejected: List[int]) -> Iterator[WebServer]:
    app = App(lambda: BODY, lambda: True, lambda: True, _probe, WebConfig())
    web = WebServer(app, "127.0.0.1", 0, None, max_connections=20, on_rejected=lambda: rejected.append(1))
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
    head = _raw(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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


def test_long_request_line_is_414(server: WebServer) -> None:
    answer = _raw(server.port, b"GET /metrics?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
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
    answer = _raw(server.port, b"\r\nGET /metrics HTTP/1.0\r\nHost: x\r\nX-Tab:\tv\t\r\n"
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


def test_connections_beyond_the_cap_are_closed_and_counted(server: WebServer, rejected: List[int]) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    try:
        wait_for(lambda: server._server.open == 20)
        # Closed at once, with a FIN or a reset; on a loaded machine the
        # reset can arrive before connect() returns.
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
                extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                assert extra.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        wait_for(lambda: len(rejected) == 1)
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: server._server.open == 0)
    assert _get(server.port).status == 200


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
        with caplog.at_level(logging.WARNING, logger="fcmon.httpd"):
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
