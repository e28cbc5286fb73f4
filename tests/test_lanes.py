"""Who waits behind whom in the front door (fcmon/web/httpd.py's lanes), and the
shared page renderings (fcmon/web/pages.py).

The server is the real one over loopback; the app behind it holds its page
requests on an event, standing in for a slow page render, so that what is
shown is the dispatch: scrapes answer while pages are held, a full lane
answers 503 with Retry-After and counts it, and queued work for a client
that has gone is not run. fcmon's own lanes against `fcmon run` as a
process are in test_web_isolation.py."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List

import pytest

from fcmon.web import httpd, app as web
from fcmon.web.pages import Pages

from support import wait_for


class HeldPages:
    """A WSGI app: /metrics answers at once; any other path waits for
    `release` (a page render that takes long), and records its path."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: List[str] = []
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path != "/metrics":
            with self._lock:
                self.ran.append(path + "?" + environ["QUERY_STRING"])
                self.waiting += 1
            self.release.wait(30)
            with self._lock:
                self.waiting -= 1
        body = b"ok\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def held() -> Iterator[Any]:
    app = HeldPages()
    shed: List[str] = []
    dropped: List[str] = []
    server = httpd.Server(app, "127.0.0.1", 0, lanes={"/metrics": httpd.Lane("scrape", threads=2, queue=4)},
                          default_lane=httpd.Lane("page", threads=1, queue=2),
                          on_shed=shed.append, on_dropped=dropped.append)
    server.start()
    try:
        yield server, app, shed, dropped
    finally:
        app.release.set()
        server.stop()


def _send(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _answer(s: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"ok\n"):  # the whole answer (the connection stays open)
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def test_scrapes_answer_while_pages_are_held_and_a_full_lane_is_503(held: Any) -> None:
    server, app, shed, _ = held
    running = _send(server.port, "/?n=0")
    wait_for(lambda: app.waiting == 1)  # the page lane's one thread is held
    queued = [_send(server.port, f"/?n={i}") for i in (1, 2)]
    wait_for(lambda: sum(1 for c in server._conns if c.busy) == 3)
    # The page lane is full: the next page request is refused at once...
    refused = _get(server.port, "/?n=3")
    assert refused.status == 503
    assert refused.getheader("Retry-After") == str(httpd.RETRY_AFTER)
    assert shed == ["page"]
    # ...and scrapes do not wait behind pages.
    for _ in range(5):
        assert _get(server.port, "/metrics").status == 200
    assert app.ran == ["/?n=0"]
    app.release.set()
    for s in [running, *queued]:
        assert _answer(s).startswith(b"HTTP/1.1 200 OK")
    assert sorted(app.ran) == ["/?n=0", "/?n=1", "/?n=2"]  # the refused one never ran


@pytest.mark.parametrize("how", ["reset", "close"])
def test_work_for_a_client_that_has_gone_is_not_run(held: Any, how: str) -> None:
    server, app, _, dropped = held
    running = _send(server.port, "/?n=0")
    wait_for(lambda: app.waiting == 1)
    gone = _send(server.port, "/?n=gone")
    wait_for(lambda: sum(1 for c in server._conns if c.busy) == 2)
    conn = next(c for c in server._conns if c.busy and c.addr[1] == gone.getsockname()[1])
    if how == "reset":
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()  # "close": FIN, what a client that gives up sends
    wait_for(lambda: not conn.wanted())
    app.release.set()
    assert _answer(running).startswith(b"HTTP/1.1 200 OK")
    wait_for(lambda: dropped == ["page"])
    assert app.ran == ["/?n=0"]
    assert _get(server.port, "/?n=after").status == 200  # the lane goes on


def test_fcmon_routes_scrapes_and_health_away_from_pages() -> None:
    assert {p for p, lane in web.LANES.items() if lane is web.SCRAPE_LANE} == {"/metrics", "/-/healthy", "/-/ready"}
    assert web.LANES["/probe"] is web.PROBE_LANE
    names = {web.SCRAPE_LANE.name, web.PROBE_LANE.name, web.PAGE_LANE.name}
    assert len(names) == 3  # one pool each: none waits behind another


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pages(clock: Clock, changes: List[int], renders: List[int], compressions: List[int],
           reloads: List[int]) -> Pages:
    def status() -> Any:
        return changes[0]

    def render(snapshot: Any) -> bytes:
        renders.append(snapshot)
        return f"page {snapshot}".encode()

    def compress(body: bytes) -> bytes:
        compressions.append(1)
        return b"gz:" + body

    return Pages(status, {"html": render}, compress, changes=lambda: changes[0], reloads=lambda: reloads[0],
                 period=5.0, max_age=30.0, clock=clock)


def test_a_page_is_rendered_once_per_period_and_only_after_a_change() -> None:
    """At most one render per period, only after a change (or max_age);
    a reload at once."""
    clock, changes, renders, compressions, reloads = Clock(), [1], [], [], [0]
    pages = _pages(clock, changes, renders, compressions, reloads)
    first = pages.get("html")
    assert (first.plain, first.gzip) == (b"page 1", b"gz:page 1")
    changes[0] = 2
    clock.now += 4.9
    assert pages.get("html") is first  # changed, but within the period
    clock.now += 0.2
    second = pages.get("html")
    assert second.plain == b"page 2"
    clock.now += 10
    assert pages.get("html") is second  # period over, but nothing changed
    clock.now += 20
    third = pages.get("html")
    assert third is not second and third.plain == b"page 2"  # max_age: rebuilt anyway (times on it move)
    changes[0], reloads[0] = 3, 1
    clock.now += 0.1
    assert pages.get("html").plain == b"page 3"  # a reload shows at once, within the period
    assert len(renders) == 4 and len(compressions) == 4  # gzip once per rendering, not per caller


def test_concurrent_callers_share_one_render() -> None:
    gate = threading.Event()
    renders: List[int] = []

    def render(snapshot: Any) -> bytes:
        renders.append(1)
        gate.wait(10)
        return b"page"

    pages = Pages(lambda: None, {"html": render}, lambda b: b, period=5.0)  # type: ignore[arg-type,return-value]
    got: List[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(pages.get("html").plain)) for _ in range(20)]
    for t in threads:
        t.start()
    wait_for(lambda: len(renders) == 1)
    gate.set()
    for t in threads:
        t.join(10)
    assert got == [b"page"] * 20 and len(renders) == 1


def test_answers_take_turns_first_come_first_served() -> None:
    """A lane's `writers`: at most that many answers written at once, the
    others in arrival order, or given up after their deadline."""
    import asyncio

    async def scenario() -> List[str]:
        turns = httpd._Turns(2)
        order: List[str] = []

        async def writer(name: str, hold: float, timeout: float = 5.0) -> None:
            if not await turns.take(timeout):
                order.append(f"{name}: no turn")
                return
            order.append(name)
            await asyncio.sleep(hold)
            turns.give()

        tasks = [asyncio.ensure_future(writer("a", 0.2)), asyncio.ensure_future(writer("b", 0.2))]
        await asyncio.sleep(0.01)
        tasks += [asyncio.ensure_future(writer(n, 0.01)) for n in ("c", "d", "e")]
        tasks.append(asyncio.ensure_future(writer("late", 0, timeout=0.05)))
        await asyncio.gather(*tasks)
        assert turns.free == 2
        return order

    assert asyncio.run(scenario()) == ["a", "b", "late: no turn", "c", "d", "e"]


def test_page_answers_pause_while_a_scrape_is_answered() -> None:
    """Scrapes first: while a request of a `first` lane is being answered,
    answers of a `yields` lane write nothing more; they go on after it."""
    scrape_held = threading.Event()
    scraping = threading.Event()
    page = b"x" * (4 * httpd.WRITE_SLICE)

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/metrics":
            scraping.set()
            scrape_held.wait(30)
            body = b"ok\n"
        else:
            body = page
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    server = httpd.Server(app, "127.0.0.1", 0, lanes={"/metrics": httpd.Lane("scrape", first=True)},
                          default_lane=httpd.Lane("page", yields=True))
    server.start()
    try:
        assert len(_get(server.port, "/").body) == len(page)  # nothing held: at once
        scrape = _send(server.port, "/metrics")
        assert scraping.wait(10)
        reader = _send(server.port, "/")
        reader.settimeout(1.0)
        got = b""
        try:
            while True:
                chunk = reader.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
        assert len(got) < len(page)  # the page waits while the scrape is answered
        scrape_held.set()
        assert _answer(scrape).startswith(b"HTTP/1.1 200 OK")
        reader.settimeout(30)
        while not got.endswith(page[-10:]) or len(got.partition(b"\r\n\r\n")[2]) < len(page):
            chunk = reader.recv(65536)
            assert chunk, "closed before the page was complete"
            got += chunk
        reader.close()
    finally:
        scrape_held.set()
        server.stop()


def test_page_answers_get_a_small_kernel_send_buffer() -> None:
    """A `yields` lane's connection has its kernel send buffer set to
    YIELDING_SNDBUF (not autotuned to megabytes); a `first` lane's keeps the
    kernel's."""
    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    server = httpd.Server(app, "127.0.0.1", 0, lanes={"/metrics": httpd.Lane("scrape", first=True)},
                          default_lane=httpd.Lane("page", yields=True))
    server.start()
    try:
        sizes = {}
        clients = []
        for path in ("/metrics", "/"):
            s = _send(server.port, path)
            got = b""
            while not got.endswith(b"ok\n"):  # answered; the connection stays open
                got += s.recv(65536)
            clients.append(s)
        for conn in list(server._conns):
            sock = conn.transport.get_extra_info("socket")
            sizes[conn.small_sndbuf] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        for s in clients:
            s.close()
        assert set(sizes) == {True, False}
        # Linux doubles the value set (bookkeeping); autotuning is off once it is set.
        assert sizes[True] <= 2 * httpd.YIELDING_SNDBUF
    finally:
        server.stop()
