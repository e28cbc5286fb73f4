"""The HTTP/1.1 front door: a bounded server for fcmon's WSGI app.

The endpoint is reachable by whoever can reach the port, so what a client
can make fcmon spend is bounded:

- one event loop thread owns every connection: accepting, the TLS handshake
  (per connection, non-blocking, with a timeout: never in the accept path),
  reading the request head and writing the answer. An idle or slow client
  costs a descriptor and a few KB, not a thread;
- open connections are capped (`max_connections`, below the descriptor
  limit minus a reserve for fcmon's own probes), one client address (an
  IPv6 /64) holds at most `max_per_client`, and the last 1/HELD_BACK_SHARE
  of the cap is held back for addresses holding fewer than NEWCOMER, so a
  new scraper gets in when one address holds the rest; beyond, a
  connection is closed at once and counted with its reason;
- the request head must be complete `REQUEST_DEADLINE` seconds after the
  connection (or a keep-alive request's first byte): a deadline for the
  whole head, not per byte. Request line at most `MAX_REQUEST_LINE` bytes
  (414), headers `MAX_HEADER_BYTES` / `MAX_HEADERS` (431); only GET and
  HEAD (405); the answer must be written within `WRITE_DEADLINE`;
- only complete requests reach the app, in lanes: each lane a small pool of
  threads that retire when idle, with a bounded queue (beyond it 503 with
  Retry-After, counted). The caller names which paths go to which lane
  (fcmon: scrapes and health checks, pages, `/probe`), so that a slow or
  crowded lane never delays another: pages never hold up a scrape;
- queued work for a client that has gone (connection lost, or its side
  closed before the answer started) is dropped before it runs, counted;
- when accept() fails for lack of descriptors, accepting pauses briefly
  instead of spinning;
- client misbehaviour is never a traceback or a log line per connection: a
  debug line at most, rate-limited;
- after a burst, freed heap goes back to the system (`malloc_trim`, glibc).

Why not wsgiref or a production WSGI server: wsgiref is a thread per
connection with a per-read timeout, and cheroot handshakes TLS in its
accept thread (an idle client stalls everyone); waitress has no TLS.
asyncio keeps slow clients off threads, with no dependency; TLS is fcmon's
own small-buffer layer over it (fcmon/web/httptls.py: asyncio's gives every
connection a 256 KiB buffer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import errno
import functools
import gc
import io
import logging
import re
import resource
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import unquote

from .httptls import HandshakeGate, TLSLayer

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
# The whole request head, from the connection's start (or from the first
# byte of a later request on a keep-alive connection).
REQUEST_DEADLINE = 5.0
# A keep-alive connection may wait this long for its next request.
IDLE_TIMEOUT = 30.0
# Writing one whole answer (17 MB of /metrics for 3,000 targets, or 0.7 MB gzipped).
WRITE_DEADLINE = 30.0
# After refusing a request (414, 431, 400), what the client still sends is
# read and dropped this long, so that the answer is not lost to a reset.
LINGER = 1.0
MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 100
# Listen backlog: a burst of connects waits in the kernel's queue instead of
# on SYN retransmits (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
# Open connections at most, whatever the descriptor limit.
MAX_CONNECTIONS = 4096
MIN_CONNECTIONS = 8
# Connections one client address may hold ([web] max_connections_per_client).
MAX_PER_CLIENT = 1024
# The last 1/HELD_BACK_SHARE of the cap is held back for addresses holding
# fewer than NEWCOMER connections: Prometheus still gets in when one
# address (or a few) holds the rest.
HELD_BACK_SHARE = 8
NEWCOMER = 4
# Why a connection was closed at once (fcmon_http_connections_rejected_total{reason}).
REJECT_REASONS = ("full", "per_client", "held_back")
# Descriptors fcmon needs beyond its probes: listener, event loop, logs,
# certificate and /proc reads, the notify socket.
BASE_FD_RESERVE = 64
# After a refused accept (out of descriptors), accepting resumes after this.
ACCEPT_PAUSE = 0.5
# Threads running the app (complete requests only), and requests waiting
# for one, in the default lane; the caller sets its own lanes.
APP_THREADS = 8
APP_QUEUE = 64
THREAD_IDLE = 10.0
# Seconds a 503 for a full lane asks the client to wait.
RETRY_AFTER = 5
# A connection's unsent bytes before its writer waits (drain), and the
# slices an answer is written in: what a slow reader holds is bounded.
WRITE_HIGH_WATER = 64 * 1024
# The kernel's send buffer for a connection answered from a `yields` lane:
# the kernel grows loopback buffers to 4 MB per connection, and a poller
# reading from that much kept using the CPU while its answer was paused for
# a scrape; it also bounds the kernel memory thousands of pollers hold.
YIELDING_SNDBUF = 256 * 1024
WRITE_SLICE = 64 * 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            505: "HTTP Version Not Supported"}


@dataclass(frozen=True)
class Lane:
    """Where a request's app work runs: `threads` at most (started on
    demand, ended when idle), and `queue` requests at most waiting for one;
    beyond, the request is answered 503 at once. `writers`: answers of this
    lane being written at once at most (None: no cap); the others wait
    their turn (FIFO, within WRITE_DEADLINE) holding no copy of their
    answer, so what the lane's answers hold in transport buffers is at most
    `writers` x (WRITE_SLICE + WRITE_HIGH_WATER), however many clients."""

    name: str
    threads: int = APP_THREADS
    queue: int = APP_QUEUE
    writers: Optional[int] = None
    # `first`: while a request of such a lane is being answered (from its
    # dispatch to its last byte), answers of `yields` lanes wait before each
    # slice they write: the event loop and the CPU go to the first.
    first: bool = False
    yields: bool = False


DEFAULT_LANE = Lane("app")


class Full(Exception):
    """A lane's queue is full."""


class Gone(Exception):
    """The client left before its work started: the work was not run."""


class _Turns:
    """At most `n` holders at once, the others served first come, first
    served; lives on the event loop (no lock)."""

    def __init__(self, n: int):
        self.free = n
        self._waiters: Deque["asyncio.Future[bool]"] = deque()

    async def take(self, timeout: float) -> bool:
        """True once a turn is held (call `give()` after); False after `timeout`."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        loop = asyncio.get_running_loop()
        turn: "asyncio.Future[bool]" = loop.create_future()
        self._waiters.append(turn)
        timer = loop.call_later(max(0.001, timeout), lambda: turn.done() or turn.set_result(False))
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.give()  # handed a turn, then cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def give(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(True)
                return
        self.free += 1


def descriptor_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def client_key(host: str) -> str:
    """What one client is, for the per-client limit: an IPv4 address (also
    when mapped into IPv6), or an IPv6 /64 (one host's share of a LAN: a
    single machine can hold a whole /64)."""
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return host
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + b"\0" * 8) + "/64"


def held_back(cap: int) -> int:
    """Slots of the cap only addresses holding fewer than NEWCOMER connections may take."""
    return max(1, cap // HELD_BACK_SHARE)


def connection_cap(reserve: int, limit: Optional[int] = None) -> int:
    """Connections the endpoint may hold open: the descriptor limit minus
    `reserve` (fcmon's probes and its own files), within
    [MIN_CONNECTIONS, MAX_CONNECTIONS]."""
    limit = descriptor_limit() if limit is None else limit
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, limit - reserve))


class _Quiet:
    """A debug line at most every `every` seconds, with a count of the rest."""

    def __init__(self, every: float = 10.0):
        self._every = every
        self._last = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def debug(self, message: str, *args: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def log(self, level: int, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._every:
                self._skipped += 1
                return
            self._last, skipped, self._skipped = now, self._skipped, 0
        if skipped:
            message += f" (and {skipped} more like it)"
        log.log(level, message, *args)


class ElasticPool(concurrent.futures.Executor):
    """Up to `max_workers` threads, started on demand, ended after `idle`
    seconds without work: after a burst the thread count returns to its
    baseline (ThreadPoolExecutor never ends its threads). `queue`: work
    items waiting for a thread at most (`submit_bounded` raises `Full`
    beyond); work whose `wanted()` is false when its turn comes is not run
    (its future raises `Gone`)."""

    def __init__(self, max_workers: int, name: str, idle: Optional[float] = None,
                 queue: Optional[int] = None):
        self._max = max_workers
        self._queue = queue
        self._name = name
        self._idle_timeout = THREAD_IDLE if idle is None else idle
        self._cond = threading.Condition()
        self._work: Deque[Tuple[concurrent.futures.Future, Callable[[], Any],
                                Optional[Callable[[], bool]]]] = deque()
        self._idle = 0
        self.threads = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return self._submit(functools.partial(fn, *args, **kwargs), None, bounded=False)

    def submit_bounded(self, fn: Callable[[], Any], wanted: Callable[[], bool]) -> concurrent.futures.Future:
        """`fn` queued unless the queue is full (`Full`); skipped if
        `wanted()` is false when a thread takes it."""
        return self._submit(fn, wanted, bounded=True)

    def _submit(self, fn: Callable[[], Any], wanted: Optional[Callable[[], bool]],
                bounded: bool) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("pool shut down")
            if bounded and self._queue is not None and len(self._work) - self._idle >= self._queue:
                raise Full()
            self._work.append((future, fn, wanted))
            if self._idle >= len(self._work):
                self._cond.notify()
            elif self.threads < self._max:
                self.threads += 1
                threading.Thread(target=self._worker, name=f"{self._name}-{self.threads}", daemon=True).start()
        return future

    def _worker(self) -> None:
        with self._cond:
            while True:
                while not self._work:
                    if self._shutdown:
                        self.threads -= 1
                        return
                    self._idle += 1
                    woken = self._cond.wait(self._idle_timeout)
                    self._idle -= 1
                    if not woken and not self._work:
                        self.threads -= 1
                        return
                future, fn, wanted = self._work.popleft()
                self._cond.release()
                try:
                    # A future cancelled meanwhile (its coroutine was, at
                    # SIGTERM) takes no result: setting one would raise here
                    # and end this thread uncounted.
                    if not future.set_running_or_notify_cancel():
                        pass
                    elif wanted is not None and not wanted():
                        future.set_exception(Gone())
                    else:
                        try:
                            future.set_result(fn())
                        except BaseException as exc:  # handed to the waiting coroutine
                            future.set_exception(exc)
                finally:
                    self._cond.acquire()

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()


class _Trim:
    """Hands freed heap back to the system after a burst (glibc keeps it:
    a process that held 139 MB for 300 slow readers went back to 57 MB).
    A no-op where there is no malloc_trim."""

    def __init__(self) -> None:
        self._fn: Optional[Callable[[int], int]] = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                self._fn = libc.malloc_trim
                self._fn.argtypes = [ctypes.c_size_t]
                self._fn.restype = ctypes.c_int
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                self._fn = None

    def __call__(self) -> None:
        before = _rss()
        # Connections cut mid-read leave exception/traceback cycles that
        # only the cyclic collector frees; free them first.
        gc.collect()
        if self._fn is not None:
            self._fn(0)
        log.debug("after a burst of connections: RSS %.1f MB -> %.1f MB", before / 2**20, _rss() / 2**20)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


class _Reply(Exception):
    """Answer this status and close the connection."""

    def __init__(self, status: int, extra: Tuple[Tuple[str, str], ...] = ()):
        super().__init__(status)
        self.status = status
        self.extra = extra


class Server:
    """Serves `app` on (host, port) once `start()` is called; binds at once."""

    def __init__(self, app: WsgiApp, host: str, port: int, ssl_context: Optional[ssl.SSLContext] = None,
                 max_connections: int = MAX_CONNECTIONS,
                 on_rejected: Callable[[str], None] = lambda reason: None,
                 max_per_client: int = MAX_PER_CLIENT,
                 admit: Callable[[str], Optional[float]] = lambda key: 0.0,
                 lanes: Optional[Dict[str, Lane]] = None,
                 default_lane: Lane = DEFAULT_LANE,
                 on_shed: Callable[[str], None] = lambda lane: None,
                 on_dropped: Callable[[str], None] = lambda lane: None):
        """`lanes`: path -> lane (any other path goes to `default_lane`);
        `on_shed(lane)` counts a request answered 503 because its lane's
        queue was full, `on_dropped(lane)` one not run because its client
        had gone."""
        self.app = app
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.on_rejected = on_rejected
        # Seconds a request from a client_key waits before the app sees it
        # (spent here, on the loop), or None: answer 429 (fcmon/web/authguard.py).
        self.admit = admit
        self.on_shed = on_shed
        self.on_dropped = on_dropped
        self._routes = dict(lanes or {})
        self._default_lane = default_lane
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Not socket.create_server: it rewrites the error's strerror.
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(BACKLOG)
        except BaseException:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self.open = 0  # connections open now (read in tests and the bench)
        self.rejected = 0
        self._per_client: Dict[str, int] = {}  # client_key -> connections open
        self._handshakes = HandshakeGate()  # TLS handshakes in progress, shared fairly
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._conns: Set["_Conn"] = set()
        self._pools: Dict[str, ElasticPool] = {}
        self._turns: Dict[str, _Turns] = {}
        self._first_in_progress = 0  # requests of `first` lanes being answered (on the loop)
        self._first_done: Optional[asyncio.Event] = None  # set while none is
        for lane in [default_lane, *self._routes.values()]:
            if lane.name not in self._pools:
                self._pools[lane.name] = ElasticPool(lane.threads, f"fcmon-web-{lane.name}", queue=lane.queue)
                if lane.writers is not None:
                    self._turns[lane.name] = _Turns(lane.writers)
        self._quiet = _Quiet()
        self._out_of_files = _Quiet(60.0)
        self._shed_quiet = _Quiet(60.0)
        self._trim = _Trim()
        self._served_since_trim = 0
        self._trim_due: Optional[asyncio.TimerHandle] = None
        self._started = threading.Event()
        self._stopping = False

    # -- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fcmon-web", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        loop.add_reader(self._listener.fileno(), self._accept)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            self._listener.close()
            return

        def halt() -> None:
            self._stopping = True
            loop.remove_reader(self._listener.fileno())
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self._conns):
                conn.abort()
            loop.call_later(0.2, loop.stop)

        loop.call_soon_threadsafe(halt)
        self._thread.join(10)
        self._listener.close()
        for pool in self._pools.values():
            pool.shutdown()

    @property
    def threads(self) -> int:
        return sum(pool.threads for pool in self._pools.values())

    def lane_of(self, path: str) -> Lane:
        return self._routes.get(path, self._default_lane)

    # -- accepting

    def _accept(self) -> None:
        assert self._loop is not None
        for _ in range(BACKLOG):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the listener stays readable,
                    # so pause instead of spinning on it.
                    self._out_of_files.log(logging.WARNING, "cannot accept connections: %s; pausing %.1f s",
                                           exc.strerror, ACCEPT_PAUSE)
                    self._loop.remove_reader(self._listener.fileno())
                    self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                    return
                continue  # ECONNABORTED and friends: that client is gone
            key = client_key(str(addr[0]))
            reason = self._refusal(key)
            if reason is not None:
                self.rejected += 1
                try:
                    # RST: nothing of it lingers in TIME_WAIT on our side
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                sock.close()
                self._quiet.debug("connection from %s closed at once (%s): %d open, %d from it",
                                  addr[0], reason, self.open, self._per_client.get(key, 0))
                try:
                    self.on_rejected(reason)
                except Exception:
                    log.exception("counting a refused connection failed")
                continue
            self._per_client[key] = self._per_client.get(key, 0) + 1
            self.open += 1
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(self, addr, key, self._loop.time())
            self._conns.add(conn)
            self._spawn(self._start(conn, sock))

    def _refusal(self, key: str) -> Optional[str]:
        """Why a new connection from `key` may not open (a REJECT_REASONS
        entry), or None: the cap, the address's own limit, and the slots
        held back for addresses that hold few."""
        cap = self.max_connections
        holds = self._per_client.get(key, 0)
        if self.open >= cap:
            return "full"
        if holds >= self.max_per_client:
            return "per_client"
        if self.open >= cap - held_back(cap) and holds >= NEWCOMER:
            return "held_back"
        return None

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self) -> None:
        assert self._loop is not None
        if not self._stopping:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or isinstance(exc, (OSError, EOFError, asyncio.CancelledError)):
            # what a client that vanishes mid-TLS looks like to asyncio
            self._quiet.debug("connection error: %s", context.get("message") or exc)
        else:
            log.error("web server: %s", context.get("message"), exc_info=exc)

    # -- one connection

    async def _start(self, conn: "_Conn", sock: socket.socket) -> None:
        """Hand the socket to the loop: to `conn` directly, or through a
        TLS layer that handshakes (under HANDSHAKE_TIMEOUT, with small
        buffers: fcmon/web/httptls.py) before `conn` sees the connection."""
        loop = asyncio.get_running_loop()
        ctx = self.ssl_context
        protocol: asyncio.Protocol = conn
        if ctx is not None:
            def failed(exc: BaseException) -> None:
                self._quiet.debug("TLS handshake with %s failed: %r", conn.addr[0], exc)

            protocol = conn.lower = TLSLayer(ctx, conn, HANDSHAKE_TIMEOUT, failed, self._handshakes, conn.key)
        try:
            await loop.connect_accepted_socket(lambda: protocol, sock)
        except asyncio.CancelledError:
            conn.release()
            raise
        except OSError as exc:
            self._quiet.debug("connection from %s failed: %r", conn.addr[0], exc)
            sock.close()
            conn.release()

    def _released(self, conn: "_Conn") -> None:
        self.open -= 1
        left = self._per_client.get(conn.key, 0) - 1
        if left > 0:
            self._per_client[conn.key] = left
        else:
            self._per_client.pop(conn.key, None)
        self._conns.discard(conn)
        self._served_since_trim += 1
        self._maybe_trim()

    async def _answer(self, conn: "_Conn", head: Tuple[str, str, str, List[Tuple[str, str]]]) -> None:
        """Answer one request, then wait for the next (keep-alive) or close."""
        keep = False
        try:
            keep = await self._respond(head, conn)
        except asyncio.CancelledError:
            raise
        except (OSError, ssl.SSLError, EOFError) as exc:
            self._quiet.debug("connection from %s ended: %r", conn.addr[0], exc)
        except Exception:
            log.exception("serving %s failed", conn.addr[0])
        finally:
            conn.done(keep)

    async def _refuse(self, conn: "_Conn", reply: _Reply) -> None:
        status = f"{reply.status} {_REASONS[reply.status]}"
        self._quiet.debug("refused a request: %s", status)
        body = (status + "\n").encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   *reply.extra]
        # Write the answer, then read (and drop) what the client still sends
        # for a moment before closing: closing with unread data resets the
        # connection, and the client might lose the answer.
        conn.discard = True
        try:
            conn.transport.write(_head(status, headers, keep=False) + body)
            await conn.drain(WRITE_DEADLINE)
            if conn.transport.can_write_eof():
                conn.transport.write_eof()
            await asyncio.sleep(LINGER)
        except OSError:
            pass
        finally:
            conn.done(False)

    def _shed(self, lane: Lane) -> None:
        self._shed_quiet.log(logging.WARNING, "%s requests: queue full (%d waiting), answered 503",
                             lane.name, lane.queue)
        try:
            self.on_shed(lane.name)
        except Exception:
            log.exception("counting a shed request failed")

    async def _respond(self, head: Tuple[str, str, str, List[Tuple[str, str]]], conn: "_Conn") -> bool:
        """Answer one request; whether the connection may carry another."""
        method, target, version, headers = head
        fields: Dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            fields[key] = fields[key] + "," + value if key in fields else value
        tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        keep = version == "HTTP/1.1" and "close" not in tokens
        if fields.get("content-length", "0").strip() != "0" or "transfer-encoding" in fields:
            keep = False  # a body fcmon does not read: no second request after it
        if method not in ("GET", "HEAD"):
            return await _closing_answer(conn, "405 Method Not Allowed", b"only GET and HEAD\n",
                                         ("Allow", "GET, HEAD"))
        wait = self.admit(conn.key)
        if wait is None:
            return await _closing_answer(conn, "429 Too Many Requests",
                                         b"too many failed authentications from this address, retry later\n",
                                         ("Retry-After", "10"))
        if wait > 0:
            await asyncio.sleep(wait)
            if conn.closed:
                return False
        environ = self._environ(method, target, version, fields, conn.addr)
        lane = self.lane_of(environ["PATH_INFO"])
        if lane.first:
            self._first_begins()
            try:
                return await self._dispatch(method, environ, conn, lane, keep)
            finally:
                self._first_ends()
        return await self._dispatch(method, environ, conn, lane, keep)

    def _first_begins(self) -> None:
        if self._first_done is None:
            self._first_done = asyncio.Event()
        self._first_in_progress += 1
        self._first_done.clear()

    def _first_ends(self) -> None:
        self._first_in_progress -= 1
        if self._first_in_progress == 0 and self._first_done is not None:
            self._first_done.set()

    async def _after_first(self, conn: "_Conn", timeout: float) -> None:
        """Wait (for a `yields` lane's answer) until no `first` request is
        being answered; cut the connection after `timeout`."""
        if self._first_in_progress == 0 or self._first_done is None:
            return
        try:
            await asyncio.wait_for(self._first_done.wait(), max(0.001, timeout))
        except asyncio.TimeoutError:
            conn.abort()
            raise ConnectionResetError("answer not written within its deadline") from None

    async def _drain(self, conn: "_Conn", lane: Lane, timeout: float) -> None:
        """`conn.drain`; a `first` answer waiting for its client to read does
        not hold the `yields` lanes meanwhile (a slow reader of /metrics
        must not stop the pages)."""
        if lane.first and conn.paused:
            self._first_ends()
            try:
                await conn.drain(timeout)
            finally:
                self._first_begins()
        else:
            await conn.drain(timeout)

    async def _dispatch(self, method: str, environ: Dict[str, Any], conn: "_Conn", lane: Lane,
                        keep: bool) -> bool:
        loop = asyncio.get_running_loop()
        transport = conn.transport
        pool = self._pools[lane.name]
        try:
            work = pool.submit_bounded(functools.partial(_call_app, self.app, environ), conn.wanted)
        except Full:
            self._shed(lane)
            return await _closing_answer(conn, "503 Service Unavailable", b"busy, retry later\n",
                                         ("Retry-After", str(RETRY_AFTER)))
        try:
            status, out_headers, result, it, first = await asyncio.wrap_future(work)
        except Gone:
            self._quiet.debug("a request from %s not run: the client had gone", conn.addr[0])
            try:
                self.on_dropped(lane.name)
            except Exception:
                log.exception("counting a dropped request failed")
            return False
        except Exception:
            log.exception("the web app failed on %s", environ["PATH_INFO"])
            return await _closing_answer(conn, "500 Internal Server Error", b"internal error\n")
        # The whole answer within WRITE_DEADLINE, or the connection is cut.
        deadline = loop.time() + WRITE_DEADLINE
        turns = self._turns.get(lane.name)
        if turns is not None and not await turns.take(WRITE_DEADLINE):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self._quiet.debug("an answer to %s not written: no turn within %.0f s", conn.addr[0], WRITE_DEADLINE)
            return False
        try:
            if not any(k.lower() == "content-length" for k, _ in out_headers):
                keep = False  # close-delimited
            if lane.yields and not conn.small_sndbuf:
                conn.small_sndbuf = True
                sock = transport.get_extra_info("socket")
                try:
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, YIELDING_SNDBUF)
                except OSError:
                    pass  # a hint: the answer goes out all the same
            transport.write(_head(status, out_headers, keep))
            if method == "HEAD":
                await conn.drain(deadline - loop.time())
                return keep
            # A list is already in memory; anything else (the /metrics body) is
            # made block by block in the pool, never on the loop.
            direct = isinstance(result, (list, tuple))
            block: Optional[bytes] = first
            while block is not None:
                # In slices: the transport copies what it cannot send at once,
                # and a slow reader must not make it hold a whole block.
                view = memoryview(block)
                for start in range(0, len(view), WRITE_SLICE):
                    if lane.yields:
                        await self._after_first(conn, deadline - loop.time())
                    transport.write(view[start:start + WRITE_SLICE])
                    await self._drain(conn, lane, deadline - loop.time())
                if direct:
                    block = next(it, None)
                else:
                    block = await loop.run_in_executor(pool, next, it, None)
            return keep
        finally:
            if turns is not None:
                turns.give()
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _environ(self, method: str, target: str, version: str, fields: Dict[str, str], addr: Any) -> Dict[str, Any]:
        path, _, query = target.partition("?")
        if "://" in path:  # absolute form: keep the path
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": str(self._listener.getsockname()[0]),
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": str(addr[0]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.ssl_context is not None else "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, value in fields.items():
            if key == "content-type":
                environ["CONTENT_TYPE"] = value
            elif key == "content-length":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + key.upper().replace("-", "_")] = value
        return environ

    # -- memory

    def _maybe_trim(self) -> None:
        """Once a burst is over (few connections left after many), return
        freed heap to the system, a second later and off the loop."""
        if self.open > 2 or self._served_since_trim < 50 or self._trim_due is not None:
            return
        assert self._loop is not None

        def trim() -> None:
            self._trim_due = None
            if self.open > 2:
                return
            self._served_since_trim = 0
            self._pools[self._default_lane.name].submit(self._trim)

        self._trim_due = self._loop.call_later(1.0, trim)


class _Conn(asyncio.Protocol):
    """One connection, driven by the loop's callbacks: while it sends its
    request head it costs no task and no coroutine, only this object, its
    transport and one timer (the whole-request deadline, or the keep-alive
    idle timeout) that aborts it. A complete head starts a task that
    answers it (`Server._answer`)."""

    def __init__(self, server: Server, addr: Any, key: str, accepted: float):
        self.server = server
        self.addr = addr
        self.key = key  # client_key(addr)
        self.transport: Any = None
        # The TLS layer below, while its handshake is in progress.
        self.lower: Optional[TLSLayer] = None
        self.buf = bytearray()
        self.busy = False  # a request is being answered
        self.discard = False  # after a refusal: drop what comes
        self.closed = False
        self.peer_eof = False  # the client closed its side
        self.small_sndbuf = False  # YIELDING_SNDBUF set
        self._released = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._request_started: Optional[float] = accepted
        self._drain: Optional["asyncio.Future[None]"] = None
        self.paused = False  # the transport's buffer is above its high-water mark

    # -- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self._arm()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self._disarm()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
        self._drain = None
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.server._released(self)

    def abort(self) -> None:
        transport = self.transport if self.transport is not None else self.lower
        if transport is not None:
            transport.abort()

    def done(self, keep: bool) -> None:
        """The answer is written: next request, or close."""
        self.busy = False
        if self.closed:
            return
        # A client that sent its FIN while its answer was being written
        # (before this callback ran, on a busy loop) sends nothing more:
        # kept alive, it would hold its slot until IDLE_TIMEOUT.
        if not keep or (self.peer_eof and not self.buf) or self.transport.is_closing():
            # Let the last answer's tail go out, but not for ever.
            self.transport.close()
            asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self.transport.abort)
            return
        self.transport.resume_reading()
        # Idle until a next request starts; one already here starts now.
        self._request_started = asyncio.get_running_loop().time() if self.buf else None
        self._arm()
        if self.buf:
            self._head()

    # -- timers

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        if self._request_started is None:
            self._timer = loop.call_later(IDLE_TIMEOUT, self.abort)
        else:
            self._timer = loop.call_at(self._request_started + REQUEST_DEADLINE, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self.server._quiet.debug("request head not complete within %.0f s: connection dropped", REQUEST_DEADLINE)
        self.abort()

    # -- reading

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self.buf += data
        if self.busy:
            if len(self.buf) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                self.transport.pause_reading()  # pipelined requests wait their turn
            return
        if self._request_started is None:  # the first bytes of a keep-alive request
            self._request_started = asyncio.get_running_loop().time()
            self._arm()
        self._head()

    def wanted(self) -> bool:
        """Whether work for this connection's request is still worth doing:
        not once the connection is lost, nor once the client has closed its
        side (what a client that gave up looks like; HTTP clients that want
        an answer do not half-close). Called from pool threads: reads only."""
        return not (self.closed or self.peer_eof)

    def eof_received(self) -> bool:
        self.peer_eof = True
        if not self.busy:
            self.abort()
            return False
        # Half-closed: the answer in progress may still go out (TLS cannot).
        return self.transport.get_extra_info("sslcontext") is None

    def _head(self) -> None:
        buf = self.buf
        while buf[:2] == b"\r\n":  # stray CRLFs before a request are allowed
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        line_end = buf.find(b"\r\n")
        try:
            if (line_end < 0 and len(buf) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
                raise _Reply(414)
            if end < 0 and len(buf) > MAX_REQUEST_LINE + MAX_HEADER_BYTES or end - line_end > MAX_HEADER_BYTES:
                raise _Reply(431)
            if _bare_lf(buf if end < 0 else buf[:end]):
                raise _Reply(400)
            if end < 0:
                return
            head = _parse(bytes(buf[:end]))
        except _Reply as reply:
            self._disarm()
            self.busy = True
            self.server._spawn(self.server._refuse(self, reply))
            return
        del buf[:end + 4]
        self._disarm()
        self.busy = True
        self.server._spawn(self.server._answer(self, head))

    # -- writing (flow control)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's buffer is low again; cut the
        connection when that takes longer than `timeout`."""
        if self.closed:
            raise ConnectionResetError("connection lost")
        if not self.paused:
            return
        loop = asyncio.get_running_loop()
        self._drain = loop.create_future()
        timer = loop.call_later(max(0.001, timeout), self.abort)
        try:
            await self._drain
        finally:
            timer.cancel()


def _call_app(app: WsgiApp, environ: Dict[str, Any]) -> Tuple[str, List[Tuple[str, str]], Any, Any, Optional[bytes]]:
    """Runs in a pool thread: the app up to its first block (WSGI lets it
    call start_response as late as that)."""
    started: List[Any] = []

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, list(headers)]

        def write(_: bytes) -> None:
            raise NotImplementedError("write() is not supported; return the body")
        return write

    result = app(environ, start_response)
    it = iter(result)
    first = next(it, None)
    if not started:
        raise RuntimeError("the app returned without start_response()")
    return started[0], started[1], result, it, first


# RFC 9110 5.6.2: a token (method, header name).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: no control characters but HTAB (RFC 9110 5.5).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")


def _parse(head: bytes) -> Tuple[str, str, str, List[Tuple[str, str]]]:
    """The request head (without its final CRLF CRLF) per RFC 9112: 400 for
    anything malformed, 505 for an HTTP version other than 1.0 and 1.1."""
    text = head.decode("iso-8859-1")  # latin-1 decodes any byte
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] or _BAD_TARGET.search(parts[1]):
        raise _Reply(400)
    method, target, version = parts
    if not _VERSION.fullmatch(version):
        raise _Reply(400)
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Reply(505)
    if len(lines) - 1 > MAX_HEADERS:
        raise _Reply(431)
    headers = []
    hosts = 0
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # No obs-fold, no space before the colon, no control characters.
        if not sep or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise _Reply(400)
        if name.lower() == "host":
            hosts += 1
        headers.append((name, value.strip(" \t")))
    if hosts > 1:  # RFC 9112 3.2
        raise _Reply(400)
    return method, target, version, headers


def _bare_lf(buf: bytearray) -> bool:
    """A LF not preceded by CR: RFC 9112 allows a server to refuse it, and a
    head that never has CRLF CRLF would otherwise wait for its deadline."""
    i = buf.find(b"\n")
    while i >= 0:
        if i == 0 or buf[i - 1] != 0x0D:
            return True
        i = buf.find(b"\n", i + 1)
    return False


async def _closing_answer(conn: "_Conn", status: str, body: bytes, *extra: Tuple[str, str]) -> bool:
    """A short plain-text answer after which the connection closes (False: no next request)."""
    conn.transport.write(_head(status, [("Content-Type", "text/plain; charset=utf-8"),
                                        ("Content-Length", str(len(body))), *extra], keep=False) + body)
    await conn.drain(WRITE_DEADLINE)
    return False


def _head(status: str, headers: List[Tuple[str, str]], keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")
