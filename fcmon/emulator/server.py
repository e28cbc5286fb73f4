"""The emulator's HTTP(S) server and the `Emulator` facade that tests drive.

Design points, each learnt the hard way (docs/design-notes.md#tls-handshake-in-the-accept-loop
and docs/design-notes.md#nagle-in-test-servers):

- The TLS handshake runs in the per-connection thread with its own timeout,
  never in the accept loop, so one idle TCP client cannot stall the others.
- `disable_nagle_algorithm`: otherwise Nagle plus delayed ACK adds ~40 ms to
  every response, and latency tests end up measuring the test server.
- Every response carries Content-Length, so HTTP/1.1 keep-alive works.
- Every blocking wait (delay, hang, drip) waits on one Event that `stop()`
  sets, and `stop()` shuts down every live socket, so stopping never waits
  for a client or a fault.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from .. import __version__
from ..probe.sockwait import wait_readable
from .faults import Fault, FaultTable
from .listeners import ExtraListener, ListenerSpec
from .state import JsonApi, SessionStore, Variants, parse_body
from .tlscontext import server_ssl_context

log = logging.getLogger(__name__)

DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"ADMIN": "ADMIN"})
DEFAULT_DATABASES: Tuple[str, ...] = ("ctreeSQL", "faircom")

API_PATH = "/api"
CONTROL_FAULT_PATH = "/_emulator/fault"
CONTROL_SESSIONS_PATH = "/_emulator/sessions"
CONTROL_LISTENER_PATH = "/_emulator/listener"

#: Request bodies above this are refused (413): the API's requests are tiny.
MAX_REQUEST_BODY = 1024 * 1024
#: Parsed requests kept for `requests_seen()`.
REQUESTS_KEPT = 1000

_JSON = "application/json"
_HTML_500 = (
    b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>\n"
    b"<body><h1>Internal Server Error</h1><p>The server encountered an internal error.</p>"
    b"</body></html>\n"
)


def _peer_common_name(sock: socket.socket) -> Optional[str]:
    # getpeercert() is only non-empty for a *verified* certificate, so an
    # unverified CN can never log anyone in.
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def _plain_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address as IPv4: one client, one per-IP count."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _hard_shutdown(sock: socket.socket) -> None:
    # The base-class shutdown: SSLSocket.shutdown() would drop its SSL object
    # under the feet of the thread that is reading from it.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: Tuple[str, int],
        owner: "Emulator",
        ssl_context: Optional[ssl.SSLContext],
        handshake_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.keepalive_timeout = keepalive_timeout
        self._conns_lock = threading.Lock()
        self._conns: Set[socket.socket] = set()
        self.peak_connections = 0  # most connections open at once since the last reset
        self._closing = False
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that
        # can take seconds on a badly configured machine; the name is unused.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    # -- connection tracking, so stop() can cut every connection ----------

    def _track(self, old: Optional[socket.socket], new: socket.socket) -> None:
        with self._conns_lock:
            if old is not None:
                self._conns.discard(old)
            self._conns.add(new)
            self.peak_connections = max(self.peak_connections, len(self._conns))
            closing = self._closing
        if closing:
            _hard_shutdown(new)

    def _untrack(self, *socks: socket.socket) -> None:
        with self._conns_lock:
            for sock in socks:
                self._conns.discard(sock)

    def close_all_connections(self, wait: float) -> None:
        with self._conns_lock:
            self._closing = True
            conns = list(self._conns)
        for sock in conns:
            _hard_shutdown(sock)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._conns_lock:
                if not self._conns:
                    return
            time.sleep(0.02)
        log.debug("emulator stop: %d connection(s) still winding down", len(self._conns))

    def live_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # -- per-connection work, in the connection's own thread --------------

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        self._track(None, request)
        try:
            if self.ssl_context is not None:
                request.settimeout(self.handshake_timeout)
                # wrap_socket() takes over the descriptor: track the wrapper
                # *before* the handshake so stop() can interrupt a stalled one.
                conn = self.ssl_context.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
                self._track(request, conn)
                try:
                    conn.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    # Expected whenever a client has no or a wrong certificate,
                    # or probes the port: not worth a traceback.
                    log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                    return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            self._untrack(request, conn)
            try:
                conn.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, TimeoutError)):
            log.debug("connection from %s ended: %r", client_address[0], exc)
        else:
            log.warning("error serving %s", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = f"fcmon-emulator/{__version__}"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        # Idle keep-alive connections give up after this; also bounds a client
        # that sends half a request.
        self.timeout = self.server.keepalive_timeout
        super().setup()
        self.peer_cn = _peer_common_name(self.request)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.client_address[0], format % args)

    # -- routing ----------------------------------------------------------

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == API_PATH:
            self._api()
        elif path.startswith("/_emulator/"):
            self._control("POST", path)
        else:
            self._drain_body()
            self._send_text(404, "not found\n")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_emulator/"):
            self._control("GET", path)
        elif path == API_PATH:
            self._send_text(405, "the JSON DB API takes POST requests\n", {"Allow": "POST"})
        else:
            self._send_text(404, "not found\n")

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_emulator/"):
            self._control("DELETE", path)
        else:
            self._drain_body()
            self._send_text(405, "method not allowed\n", {"Allow": "POST"})

    # -- plumbing ---------------------------------------------------------

    def _read_body(self) -> Optional[bytes]:
        """The request body, or None after an error reply / lost connection."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send_text(400, "bad Content-Length\n")
            return None
        if length > MAX_REQUEST_BODY:
            self.close_connection = True
            self._send_text(413, "request body too large\n")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> Optional[bytes]:
        chunks: List[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self._send_text(400, "bad chunked encoding\n")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_REQUEST_BODY:
                self.close_connection = True
                self._send_text(413, "request body too large\n")
                return None
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                self.close_connection = True
                return None
            chunks.append(chunk)
            self.rfile.readline(1024)

    def _drain_body(self) -> None:
        # Unread body bytes would be parsed as the next request on keep-alive.
        self._read_body()

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Optional[Mapping[str, str]] = None,
        drip_interval: Optional[float] = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if drip_interval is None:
            self.wfile.write(body)
            return
        stopping = self.server.owner.stopping
        for index in range(len(body)):
            if stopping.wait(drip_interval):
                self.close_connection = True
                return
            self.wfile.write(body[index : index + 1])

    def _send_text(self, status: int, text: str, headers: Optional[Mapping[str, str]] = None) -> None:
        self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8", headers)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), _JSON)

    def _peer_gone(self) -> bool:
        """True once the client has closed its side (best effort, never blocks)."""
        try:
            readable = wait_readable(self.connection, 0)
            if not readable:
                return False
            # Peek at the raw TCP stream, below TLS: b"" means FIN.
            return socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- the API ----------------------------------------------------------

    def _api(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        if raw is None:
            return
        parsed = parse_body(raw)
        if parsed.error is None:
            owner._record(parsed.value)
        fault = owner.faults.take(parsed.action)
        log.debug(
            "%s from %s%s%s",
            parsed.action or "(no action)",
            self.client_address[0],
            f" (certificate {self.peer_cn})" if self.peer_cn else "",
            f" with fault {json.dumps(fault.to_dict())}" if fault else "",
        )
        drip: Optional[float] = None
        if fault is not None:
            if fault.delay > 0 and owner.stopping.wait(fault.delay):
                self.close_connection = True
                return
            if fault.hang:
                self._hang()
                return
            if fault.reset:
                self._reset()
                return
            drip = fault.drip_interval if fault.drip else None
            if fault.http500_html:
                self._send(500, _HTML_500, "text/html; charset=utf-8", drip_interval=drip)
                return
        reply = owner.api.handle(parsed, self.peer_cn, fault, _plain_ip(self.client_address[0]))
        self._send(reply.http_status, _render(reply.body, fault), _JSON, drip_interval=drip)

    def _hang(self) -> None:
        self.close_connection = True
        stopping = self.server.owner.stopping
        # Keep the request unanswered until stop(); leave early only when the
        # client has given up, so a soak test does not pile up threads.
        while not stopping.wait(0.25):
            if self._peer_gone():
                return

    def _reset(self) -> None:
        self.close_connection = True
        try:
            # Linger 0: close() then sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The real close happens when rfile releases the socket in finish().
        self.connection.close()

    # -- the control endpoint ----------------------------------------------

    def _control(self, method: str, path: str) -> None:
        owner = self.server.owner
        if not _is_loopback(self.client_address[0]):
            self._drain_body()
            self._send_json(403, {"error": "the control endpoint answers loopback clients only"})
            return
        if path == CONTROL_SESSIONS_PATH and method == "GET":
            self._send_json(200, {"open": owner.open_sessions(), "created": owner.sessions_created(),
                                  "open_by_user": owner.open_sessions_by_user()})
            return
        if path == CONTROL_LISTENER_PATH:
            self._control_listener(method)
            return
        if path != CONTROL_FAULT_PATH:
            self._drain_body()
            self._send_json(404, {"error": f"unknown control path {path}"})
            return
        if method == "GET":
            self._send_json(200, {"faults": owner.faults.snapshot()})
            return
        if method == "DELETE":
            self._drain_body()
            owner.clear_faults()
            self._send_json(200, {"faults": owner.faults.snapshot()})
            return
        request = self._control_request()
        if request is None:
            return
        try:
            action = request.get("action")
            if not isinstance(action, str) or not action:
                raise ValueError("\"action\" must be an action name or \"*\"")
            fault = Fault.from_dict(request.get("fault"))
        except (ValueError, TypeError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        owner.set_fault(action, fault)
        self._send_json(200, {"faults": owner.faults.snapshot()})

    def _control_request(self) -> Optional[Dict[str, Any]]:
        """A control request's JSON object, or None once a 400 was sent."""
        raw = self._read_body()
        if raw is None:
            return None
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._send_json(400, {"error": str(exc)})
            return None
        if not isinstance(request, dict):
            self._send_json(400, {"error": "body must be a JSON object"})
            return None
        return request

    def _control_listener(self, method: str) -> None:
        """GET: the extra listeners; POST {"name": ..., "mode": ...}: switch one."""
        owner = self.server.owner
        if method == "POST":
            request = self._control_request()
            if request is None:
                return
            try:
                owner.set_listener_mode(str(request.get("name")), str(request.get("mode")))
            except (ValueError, KeyError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
        else:
            self._drain_body()
        self._send_json(200, {"listeners": [
            dict(x.service(), mode=x.mode, connections=x.connections) for x in owner.listeners()]})


def _render(body: Dict[str, Any], fault: Optional[Fault]) -> bytes:
    data = json.dumps(body).encode("utf-8")
    if fault is None:
        return data
    if fault.oversized > len(data):
        # The extra key adds a few bytes on top, so the result is >= oversized.
        padded = dict(body)
        padded["padding"] = "x" * (fault.oversized - len(data))
        data = json.dumps(padded).encode("utf-8")
    if fault.non_object_json:
        data = b"[" + data + b"]"
    if fault.malformed_json:
        # Cut mid-object: never valid JSON, still looks like JSON to a sniffer.
        data = data[: max(1, len(data) // 2)]
    return data


class Emulator:
    """A FairCom JSON DB API server on loopback, with fault injection.

    `client_ca_file` makes client certificates mandatory. `cert_file=None`
    with `allow_http=True` gives a plain-HTTP listener. The control endpoint
    (`POST/GET/DELETE /_emulator/fault`, `GET /_emulator/sessions`) answers
    loopback clients only, on the same listener and TLS settings.
    """

    def __init__(
        self,
        cert_file: Optional[Path],
        key_file: Optional[Path] = None,
        client_ca_file: Optional[Path] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Mapping[str, str] = DEFAULT_USERS,
        databases: Sequence[str] = DEFAULT_DATABASES,
        max_sessions: int = 1024,
        max_sessions_per_user: int = 50,
        tls_max_version: Optional[ssl.TLSVersion] = None,
        allow_http: bool = False,
        *,
        max_sessions_per_ip: int = 50,
        admins: Sequence[str] = ("ADMIN",),
        variants: Variants = Variants(),
        listeners: Sequence[ListenerSpec] = (),
        list_services: bool = True,
        handshake_timeout: float = 10.0,
        keepalive_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        server_version: Optional[str] = None,
        hostname: Optional[str] = None,
        host_uuid: Optional[str] = None,
    ) -> None:
        if cert_file is None and not allow_http:
            raise ValueError("cert_file is required unless allow_http=True")
        if cert_file is None and client_ca_file is not None:
            raise ValueError("client_ca_file needs TLS (cert_file)")
        self.host = host
        self._requested_port = port
        self._ssl_context = (
            server_ssl_context(cert_file, key_file, client_ca_file, tls_max_version)
            if cert_file is not None
            else None
        )
        self.client_certs_required = client_ca_file is not None
        # wall_clock: the server's clock for its timestamps (a test makes a
        # session look old by creating it with a clock set back)
        self.store = SessionStore(clock, wall_clock, max_sessions, max_sessions_per_user, max_sessions_per_ip)
        # createSession's serverVersion / hostname / hostUuid (defaults: the
        # emulator's own version, this machine's name, a random UUID);
        # settable later through self.api.
        self.api = JsonApi(self.store, users, databases, hostname, server_version, host_uuid,
                           services=self._services if list_services else None, admins=admins,
                           variants=variants)
        self._listener_specs = tuple(listeners)
        self._listeners: Dict[str, ExtraListener] = {}
        # services listServices names besides its own listeners (name_services)
        self._named: List[Dict[str, Any]] = []
        self.faults = FaultTable()
        self.stopping = threading.Event()
        self._handshake_timeout = handshake_timeout
        self._keepalive_timeout = keepalive_timeout
        self._requests: Deque[Any] = deque(maxlen=REQUESTS_KEPT)
        self._requests_lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "Emulator":
        if self._server is not None or self._stopped:
            raise RuntimeError("an Emulator starts once")
        self._server = _Server(
            (self.host, self._requested_port),
            self,
            self._ssl_context,
            self._handshake_timeout,
            self._keepalive_timeout,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fcmon-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            for spec in self._listener_specs:
                self._listeners[spec.name] = ExtraListener(spec, self.host, self._handshake_timeout,
                                                           self._keepalive_timeout)
        except BaseException:
            self.stop()
            raise
        log.info("emulator listening on %s", self.url)
        for x in self._listeners.values():
            log.info("emulator listener %s (%s) on port %d, %s", x.spec.name, x.spec.protocol, x.port, x.mode)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; hung handlers are released."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        for x in self._listeners.values():
            x.stop()
        server.shutdown()
        server.server_close()
        server.close_all_connections(wait=1.5)
        thread.join(timeout=1.0)
        log.info("emulator on port %d stopped", self.port)

    def __enter__(self) -> "Emulator":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        host = self.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and (ip.is_loopback or ip.is_unspecified):
            # "localhost" is what the demo PKI's server certificate names.
            host = "localhost"
        elif ip is not None and ip.version == 6:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}{API_PATH}"

    # -- observation and control ------------------------------------------

    def open_sessions(self, username: Optional[str] = None) -> int:
        """Live sessions, of one account (case-insensitive) when `username` is given."""
        if username is None:
            return self.store.open_count()
        return sum(1 for s in self.store.sessions() if s.username.upper() == username.upper())

    def open_sessions_by_user(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for s in self.store.sessions():
            counts[s.username] = counts.get(s.username, 0) + 1
        return counts

    def sessions_created(self) -> int:
        return self.store.created_count()

    def sessions_expired(self) -> int:
        """Sessions that ended by idle expiry, never deleted by a client."""
        return self.store.expired_count()

    def live_connections(self) -> int:
        return self._server.live_connections() if self._server is not None else 0

    def peak_sessions(self) -> int:
        """The most sessions open at once since the last `reset_peaks()`."""
        return self.store.peak_open_count()

    def peak_connections(self) -> int:
        """The most client connections open at once since the last `reset_peaks()`."""
        return self._server.peak_connections if self._server is not None else 0

    def reset_peaks(self) -> None:
        self.store.reset_peak()
        if self._server is not None:
            self._server.peak_connections = self._server.live_connections()

    def _services(self) -> List[Dict[str, Any]]:
        """listServices: the API's own listener, then the extra ones."""
        scheme = "https" if self._ssl_context is not None else "http"
        own = {"serviceName": f"{scheme}{self.port}", "description": "JSON DB API",
               "enabled": True, "port": str(self.port), "protocol": scheme}
        return [own] + [x.service() for x in self._listeners.values()] + list(self._named)

    def name_services(self, ports: Sequence[int], protocol: str = "mqtts", prefix: str = "named") -> None:
        """listServices also names these ports (enabled, `protocol`), which
        the emulator does not serve: a test points them at sockets of its
        own (a thousand that never handshake, say). Replaces the previous list."""
        self._named = [{"serviceName": f"{prefix}{p}", "description": "named by the test", "enabled": True,
                        "port": str(p), "protocol": protocol} for p in ports]

    def listeners(self) -> List[ExtraListener]:
        return list(self._listeners.values())

    def listener(self, name: str) -> ExtraListener:
        return self._listeners[name]

    def set_listener_mode(self, name: str, mode: str) -> None:
        if name not in self._listeners:
            raise KeyError(f"no listener {name!r}")
        self._listeners[name].set_mode(mode)

    def set_fault(self, action: str, fault: Fault) -> None:
        self.faults.set(action, fault)

    def clear_faults(self) -> None:
        self.faults.clear()
        log.info("all faults cleared")

    def requests_seen(self) -> List[Any]:
        """Parsed request bodies, oldest first (the last REQUESTS_KEPT)."""
        with self._requests_lock:
            return copy.deepcopy(list(self._requests))

    def _record(self, value: Any) -> None:
        with self._requests_lock:
            self._requests.append(copy.deepcopy(value))

    def __repr__(self) -> str:
        return f"<Emulator {self.url} open_sessions={self.open_sessions()}>"
