"""The JSON DB API over requests: TLS context, connection, one call, error model.

Trust is exactly the target's `ca_file` (or the system store without one):
the SSL context is built here once per target and requests is kept from
touching it (no certifi, no REQUESTS_CA_BUNDLE; see
docs/design-notes.md#trust-ca-bundles-from-the-environment and
docs/design-notes.md#trust-certifi-loaded-into-our-context). A probe's
one connection records every socket it makes, so a deadline can cut a
socket that a server drips bytes into
(docs/design-notes.md#requests-timeouts-bound-each-socket-wait).

A probe's calls go to requests' transport API, an HTTPAdapter of its own
(`_ProbeAdapter`: `init_poolmanager`, `send`, `build_response`), over one
urllib3 connection (`_ProbeConnection`) whose `connect()` is fcmon's:
resolution and TCP through fcmon.probe.resolver within the deadline, the
handshake with the target's context. Only public names of requests,
urllib3, http.client and ssl are used (docs/design-notes.md#the-probes-transport-public-extension-points-only;
tests/test_private_names.py). A request plan (path, headers,
createSession body) is made once per target, and each request is one
write. The connection itself reads the whole (capped) body and times the
call on the wire: from just before the first byte of the request is
written to just after the last byte of the response is read, so a step's
time is the server's, not requests' own work.
"""

from __future__ import annotations

import errno
import http.client
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.util.connection import allowed_gai_family

from .certs import CertFileError, der_cert_info, file_stamp, load_private_key, path_from_leaf
from ..config import TargetConfig
from .resolver import DEFAULT as DEFAULT_RESOLVER
from .resolver import Resolver
from .result import CertInfo
from .sockwait import wait_readable

log = logging.getLogger(__name__)

USER_AGENT = "fcmon"


class ProbeError(Exception):
    """A classified failure: `reason` is one of result.REASONS."""

    def __init__(self, reason: str, message: str, http_status: Optional[int] = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status  # when a response arrived


# ---------------------------------------------------------------- TLS context

# What urllib3 offers in the handshake when it wraps a socket; fcmon wraps
# its own (_ProbeConnection.connect), so its contexts offer it themselves.
_ALPN = ["http/1.1"]


def build_ssl_context(target: TargetConfig) -> ssl.SSLContext:
    """The context for every connection to `target`.

    Raises CertFileError when a client certificate or key cannot be loaded.
    """
    if target.ca_file is not None:
        # cafile= means load_default_certs() is never called: SSL_CERT_FILE
        # and friends cannot widen the trust.
        try:
            ctx = ssl.create_default_context(cafile=str(target.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise CertFileError(f"{target.ca_file}: cannot load CA file: {exc}") from None
    else:
        ctx = ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(_ALPN)
    if target.client_cert_file is not None and target.client_key_file is not None:
        # Load the key ourselves first: OpenSSL's own message for a bad key
        # or password is cryptic ("[SSL] PEM lib").
        load_private_key(target.client_key_file, target.client_key_password)
        try:
            ctx.load_cert_chain(
                str(target.client_cert_file),
                str(target.client_key_file),
                password=target.client_key_password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise CertFileError(
                f"{target.client_cert_file}: cannot use client certificate with its key: "
                f"{getattr(exc, 'reason', None) or exc}"
            ) from None
    return ctx


def _tls_key(target: TargetConfig) -> Tuple[Any, ...]:
    """What a context depends on: targets that share it share one context."""
    return (target.ca_file, target.client_cert_file, target.client_key_file, target.client_key_password)


class TLSContextCache:
    """SSLContexts shared by every target with the same CA and client files,
    rebuilt only when one of those files changes.

    Building a context parses the CA bundle and the key (~10 ms); doing it
    once instead of per connection is most of a probe's CPU. Sharing it
    across targets matters at fleet scale: 3,000 targets behind one
    [defaults] section hold one context, not 3,000.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[Tuple[Any, ...], Tuple[Tuple[Any, ...], ssl.SSLContext]] = {}
        self.builds = 0  # for tests that guard the mechanism

    @staticmethod
    def _stamps(key: Tuple[Any, ...]) -> Tuple[Any, ...]:
        stamps = []
        for path in key[:3]:
            if path is None:
                stamps.append(None)
                continue
            try:
                stamps.append(file_stamp(path))
            except OSError:
                stamps.append("missing")
        return tuple(stamps)

    def get(self, target: TargetConfig) -> ssl.SSLContext:
        key = _tls_key(target)
        stamps = self._stamps(key)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] == stamps:
            return entry[1]
        ctx = build_ssl_context(target)
        with self._lock:
            self._entries[key] = (stamps, ctx)
            self.builds += 1
        return ctx

    def retain(self, targets: Sequence[TargetConfig]) -> None:
        """Forget contexts no configured target uses any more."""
        keep = {_tls_key(t) for t in targets}
        with self._lock:
            for key in list(self._entries):
                if key not in keep:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# ---------------------------------------------------------------- connections


class _Tracked:
    """The sockets a probe's connections opened, so the deadline can cut them.

    Sockets, not connections: when a response says `Connection: close`,
    http.client hands the socket over to the response and the connection's
    `sock` becomes None, yet the response keeps reading from it. Each socket
    is recorded the moment it exists (the TCP socket right after connect,
    the TLS socket after the handshake), so a cut finds it whoever holds it.
    A socket recorded after the cut is shut down at once.

    `deadline` (monotonic) bounds every socket timeout set here: the TLS
    handshake, during which no socket object can be cut (the TCP socket is
    detached into the TLS one), is a single call whose timeout is a total,
    so it cannot outlive the deadline either.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: List[socket.socket] = []
        self.cut = False
        self.deadline: Optional[float] = None
        self.resolver: Resolver = DEFAULT_RESOLVER

    def add(self, sock: Optional[socket.socket]) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            cut = self.cut
        if cut:
            _cut(sock)

    def cut_all(self) -> None:
        with self._lock:
            self.cut = True
            socks = list(self._socks)
        for sock in socks:
            _cut(sock)

    def left(self, timeout: Optional[float]) -> Optional[float]:
        """`timeout`, shortened to the time left before the deadline."""
        deadline = self.deadline
        if deadline is None:
            return timeout
        left = max(deadline - time.monotonic(), 0.001)
        if not isinstance(timeout, (int, float)):  # None, or urllib3's "default" sentinel
            return left
        return min(timeout, left)


def _cut(sock: socket.socket) -> None:
    """Shut the socket down under a blocked reader in another thread.

    socket.socket.shutdown on the SSLSocket bypasses SSLSocket.shutdown, which
    would clear _sslobj under the reader's feet; the reader sees EOF instead.
    A socket already closed has no descriptor any more (EBADF): nothing to
    cut, and no other socket that reused its number can be hit.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


# Step timings are taken on the wire, inside the connection: from just
# before the request's first byte is written to just after the last byte of
# the response body is read. requests' and urllib3's own work around a call
# (and JSON decoding) is not the server's latency and is left out.
_clock = time.perf_counter


class Wire:
    """What a probe's connections saw of the last exchange.

    One per ApiClient, shared by every connection its pool opens. `cap` is
    the response size limit; the body is read (capped) inside the connection
    and handed to requests from here.
    """

    __slots__ = ("cap", "started", "finished", "body", "connect_seconds", "connects")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.started: Optional[float] = None
        self.finished: Optional[float] = None
        self.body: Optional[bytes] = None
        self.connect_seconds: Optional[float] = None
        self.connects = 0  # TCP connects (and TLS handshakes) made

    def seconds(self) -> Optional[float]:
        """Wire time of the last exchange, None unless its whole body was read."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


def _read_body(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """The whole body of `resp`, at most `cap` bytes, or raise."""
    if resp.length is not None:  # Content-Length (0 for HEAD, 204, 304)
        if resp.length > cap:
            raise ProbeError("bad_response", f"response of {resp.length} bytes exceeds the cap of {cap}")
        return resp.read()  # exactly that many bytes, or IncompleteRead
    chunks = []
    size = 0
    while True:  # chunked, or delimited by the end of the connection
        chunk = resp.read(min(65536, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise ProbeError("bad_response", f"response exceeds the cap of {cap} bytes")
        chunks.append(chunk)


class _WireIO(http.client.HTTPConnection):
    """The http.client layer of a probe connection.

    In the MRO it sits between urllib3's connection and http.client's, so
    urllib3's `getresponse` gets a response whose body this class has
    already read (the wire time ends there), and urllib3's writes of one
    request (headers, then body) can be collected and sent as one. Only
    http.client's public `send` and `getresponse` are overridden.
    """

    fcmon_wire: Optional[Wire] = None
    fcmon_tracked: Optional[_Tracked] = None
    fcmon_out: Optional[List[bytes]] = None

    def send(self, data: Any) -> None:  # type: ignore[override]
        out = self.fcmon_out
        if out is not None and isinstance(data, bytes):
            out.append(data)
            return
        super().send(data)

    def getresponse(self) -> http.client.HTTPResponse:
        tracked = self.fcmon_tracked
        if tracked is not None and self.sock is not None:
            self.sock.settimeout(tracked.left(self.sock.gettimeout()))
        resp = super().getresponse()
        wire = self.fcmon_wire
        if wire is not None:
            try:
                wire.body = _read_body(resp, wire.cap)
            except BaseException:
                # A body cut short (over the cap, by the deadline, by the
                # server) is closed here: with `Connection: close` the
                # response alone holds the socket, and closing the
                # connection would not release it.
                resp.close()
                raise
            wire.finished = _clock()
        return resp


def _connect_within(tracked: _Tracked, host: str, port: int, options: Any,
                    timeout: Optional[float] = None) -> socket.socket:
    """A connected TCP socket to (host, port): the name resolved within the
    time left before the deadline (fcmon.probe.resolver), each address tried with
    the time then left (socket.create_connection and urllib3 give each the
    whole), none longer than `timeout`."""
    if host.startswith("["):
        host = host.strip("[]")
    err: Optional[OSError] = None
    addresses = tracked.resolver.resolve(host, port, allowed_gai_family(), socket.SOCK_STREAM,
                                         tracked.left(timeout))
    for family, kind, proto, _, address in addresses:
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(tracked.left(timeout))
            sock.connect(address)
            return sock
        except OSError as e:
            err = e
            if sock is not None:
                sock.close()
    if err is not None:
        try:
            raise err
        finally:
            err = None  # no reference cycle through the traceback
    raise OSError("getaddrinfo returned no address")


def connect_tcp(host: str, port: int, deadline: float, resolver: Optional[Resolver] = None) -> socket.socket:
    """A connected TCP socket to (host, port) by the monotonic `deadline`:
    the name resolved within it (fcmon.probe.resolver), each address given only
    the time then left (socket.create_connection gives each the whole)."""
    within = _Tracked()
    within.deadline = deadline
    if resolver is not None:
        within.resolver = resolver
    return _connect_within(within, host, port, None)


# What urllib3 sets on every connection it makes (Nagle off: a request is
# one write, and the answer must not wait for a delayed ACK).
_SOCKET_OPTIONS = HTTPConnection.default_socket_options


class _ProbeConnection(HTTPConnection, _WireIO):
    """The one connection of a probe: urllib3 writes each request and parses
    each response; the connection itself is made by fcmon.

    `connect()` resolves the name through fcmon's resolver and tries each
    address within the time left before the deadline, then performs the TLS
    handshake with the target's own context (`SSLContext.wrap_socket`):
    urllib3 has no public hook for either, and resolving inside its
    `connect()` would run getaddrinfo unbounded. Each socket is recorded for
    the deadline the moment it exists (the TCP socket, then the TLS socket).
    Then urllib3's public `request()`/`getresponse()` carry the calls on it;
    the requests adapter (`_ProbeAdapter.send`) is what requests calls.
    """

    def __init__(self, plan: "RequestPlan", ssl_context: Optional[ssl.SSLContext], wire: Wire,
                 tracked: _Tracked) -> None:
        super().__init__(plan.host, plan.port, socket_options=_SOCKET_OPTIONS)
        self.fcmon_host = plan.host
        self.fcmon_ssl_context = ssl_context
        self.fcmon_wire = wire
        self.fcmon_tracked = tracked

    def connect(self) -> None:
        """TCP connect and TLS handshake, each within the deadline, timed."""
        started = _clock()
        wire = self.fcmon_wire
        tracked = self.fcmon_tracked
        assert wire is not None and tracked is not None
        wire.connects += 1
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        sock: socket.socket = _connect_within(tracked, self.fcmon_host, self.port, _SOCKET_OPTIONS, timeout)
        tracked.add(sock)
        ctx = self.fcmon_ssl_context
        if ctx is not None:
            # The handshake is one call whose timeout is a total: it ends by
            # the deadline too, although its socket cannot be cut while the
            # TCP socket is being detached into the TLS one.
            sock.settimeout(tracked.left(timeout))
            try:
                sock = ctx.wrap_socket(sock, server_hostname=self.fcmon_host.rstrip("."))
            except BaseException:
                sock.close()
                raise
            tracked.add(sock)
        self.sock = sock
        wire.connect_seconds = _clock() - started

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any) -> None:  # type: ignore[override]
        # urllib3 writes the request line and headers, then the body: two TLS
        # records and two syscalls. Collect them and write once, the way
        # http.client does for a bytes body; the wire time starts there.
        wire = self.fcmon_wire
        if wire is not None:
            wire.started = wire.finished = None
            wire.body = None
        out: List[bytes] = []
        self.fcmon_out = out
        try:
            super().request(method, url, body=body, headers=headers, **kw)
        finally:
            self.fcmon_out = None
        if wire is not None:
            wire.started = _clock()
        super().send(b"".join(out))

    @property
    def is_connected(self) -> bool:
        """urllib3 calls an idle connection dropped when its socket is readable.

        After a TLS 1.3 handshake it always is: the server's session tickets
        arrive after the handshake. A fresh connection would then be thrown
        away and handshaken again. Readable only because of TLS records is
        still connected; EOF, an alert or stray data is not.
        """
        sock = self.sock
        if sock is None:
            return False
        try:
            if not wait_readable(sock, 0.0):
                return True
        except (OSError, ValueError):  # closed under us
            return False
        if not isinstance(sock, ssl.SSLSocket):
            return False
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            sock.recv(1)  # EOF or stray data: either way not reusable
            return False
        except ssl.SSLWantReadError:
            return True
        except (OSError, ValueError):
            return False
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass


def _timeouts(timeout: Any) -> Tuple[Optional[float], Optional[float]]:
    """(connect, read) from `timeout=` as requests takes it: a number or a pair."""
    if isinstance(timeout, tuple):
        return timeout[0], timeout[1]
    return timeout, timeout


class _ProbeAdapter(HTTPAdapter):
    """requests' transport for a probe: every request over the probe's one
    connection; never touches TLS trust.

    requests' extension points for a transport adapter: `init_poolmanager`
    builds nothing (requests' default builds a PoolManager a probe never
    uses), `send` takes the connection, writes, reads and hands back a
    requests.Response, `close` closes the connection. Trust is the target's
    context alone: no `cert_verify` (certifi, REQUESTS_CA_BUNDLE), no proxy,
    no retry (a probe's failure is its result), no redirect (a 3xx is
    answered like any non-JSON reply). Errors propagate as the socket, TLS,
    http.client or urllib3 raised them; classify_request_error names them.
    """

    def __init__(self, conn: _ProbeConnection, wire: Wire, path: str):
        self.fcmon_conn = conn
        self.fcmon_wire = wire
        self.fcmon_path = path
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        self.poolmanager = None

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,  # type: ignore[override]
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        connect_timeout, read_timeout = _timeouts(timeout)
        conn = self.fcmon_conn
        try:
            if not conn.is_closed and not conn.is_connected:
                conn.close()  # dropped by the server while idle: connect again
            conn.timeout = connect_timeout
            if conn.is_closed:
                conn.connect()
            try:
                conn.request(request.method or "POST", self.fcmon_path, body=request.body,
                             headers=request.headers, chunked=False, preload_content=False, decode_content=False)
            except BrokenPipeError:
                pass  # as urllib3: the answer may still be on the wire (a TLS alert, say)
            except OSError as exc:
                if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):
                    raise
            conn.timeout = read_timeout
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        # The connection has read the whole body: it is free for the next call.
        return self.build_response(request, resp)

    def build_response(self, req, resp):  # type: ignore[no-untyped-def,override]
        """A complete requests.Response; its body is what the connection read.

        No cookie extraction (a probe carries its authToken in JSON) and no
        charset sniffing (the body is JSON bytes). `raw` is the body as a
        file, which `Response.content` reads.
        """
        response = requests.Response()
        response.status_code = resp.status
        response.headers = resp.headers  # urllib3's HTTPHeaderDict: case-insensitive
        body = self.fcmon_wire.body
        response.raw = io.BytesIO(body if body is not None else b"")
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self.fcmon_conn.close()


# ---------------------------------------------------------------- peer certs


@dataclass(frozen=True)
class PeerInfo:
    certs: Tuple[CertInfo, ...]  # server leaf first, then chain
    tls_version: Optional[str]
    tls_cipher: Optional[str]
    address: Optional[str] = None  # "host:port" connected to ("[v6]:port")


def _chain_der(sock: ssl.SSLSocket) -> List[bytes]:
    """The certificates the server presented, leaf first, as DER.

    `SSLSocket.get_unverified_chain()` is public from Python 3.13; before
    it, the ssl module's public API gives the leaf alone
    (`getpeercert(binary_form=True)`), so the chain is not read there
    (docs/design-notes.md#only-the-verified-path-is-the-chain).
    """
    getter = getattr(sock, "get_unverified_chain", None)
    if getter is not None:
        out = [bytes(der) for der in getter() or ()]
        if out:
            return out
    leaf = sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _verified_der(sock: ssl.SSLSocket) -> Optional[List[bytes]]:
    """Python 3.13's verified chain (leaf first, the trust anchor last), or
    None where there is none (older Pythons, an unverified connection)."""
    getter = getattr(sock, "get_verified_chain", None)
    if getter is None:
        return None
    try:
        return [bytes(der) for der in getter() or ()] or None
    except ssl.SSLError:
        log.debug("could not read the verified chain", exc_info=True)
        return None


def verified_path(sock: ssl.SSLSocket, presented: List[bytes], anchors: Optional[Sequence[bytes]]) -> Tuple[bytes, ...]:
    """The chain certificates to report: those on the verified path between
    the leaf and the trust anchor, both excluded
    (docs/design-notes.md#only-the-verified-path-is-the-chain).

    A verified connection on Python 3.13: `get_verified_chain()`. Before
    3.13, or after a failed verification (the unverified fetch, where
    `anchors` are the target's CA certificates): the path built from the
    presented certificates by names and signatures (`path_from_leaf`)."""
    if len(presented) < 2:
        return ()  # the leaf alone: no chain, and no CA list to fetch
    if anchors is None:
        anchors = sock.context.get_ca_certs(binary_form=True)
    if sock.context.verify_mode != ssl.CERT_NONE:
        chain = _verified_der(sock)
        if chain is not None:
            # up to the first trust anchor (OpenSSL may go on past a trusted
            # intermediate to the root), as path_from_leaf stops there
            trusted = set(anchors)
            out: List[bytes] = []
            for der in chain[1:-1]:
                if der in trusted:
                    break
                out.append(der)
            return tuple(out)
    return path_from_leaf(presented, anchors, time.time())


def _peer_address(sock: Any) -> Optional[str]:
    try:
        peer = sock.getpeername()
    except (OSError, AttributeError):
        return None
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def peer_info(sock: Any, anchors: Optional[Sequence[bytes]] = None) -> PeerInfo:
    """What the connection shows of the peer: its certificate (`server`),
    the chain on the verified path (`chain`), TLS version and cipher.
    `anchors`: the trust anchors to build the path to when the connection
    itself verified nothing (DER; default: the connection context's CAs)."""
    address = _peer_address(sock)
    if not isinstance(sock, ssl.SSLSocket):
        return PeerInfo((), None, None, address)
    infos = []
    presented = _chain_der(sock)
    if presented:
        for role, der in [("server", presented[0])] + [("chain", d) for d in verified_path(sock, presented, anchors)]:
            info = der_cert_info(der, role)
            if info is not None:
                infos.append(info)
    cipher = sock.cipher()
    return PeerInfo(tuple(infos), sock.version(), cipher[0] if cipher else None, address)


def fetch_peer_unverified(host: str, port: int, timeout: float, resolver: Optional[Resolver] = None,
                          anchors: Sequence[bytes] = ()) -> PeerInfo:
    """A second handshake that verifies nothing, to report a certificate that failed.

    Reporting only: no client certificate is presented and no byte of HTTP
    (let alone credentials) is sent over this connection. The chain is the
    path from the leaf towards `anchors` (the target's CA certificates, DER)
    by names and signatures, dates ignored: nothing on it was verified.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # `timeout` for the whole: connect (each address) and handshake share it.
    within = _Tracked()
    within.deadline = time.monotonic() + max(timeout, 0.05)
    if resolver is not None:
        within.resolver = resolver
    with _connect_within(within, host, port, None) as raw:
        raw.settimeout(within.left(None))
        with ctx.wrap_socket(raw, server_hostname=host) as sock:
            return peer_info(sock, anchors)


# ---------------------------------------------------------------- errors


def _chain_of(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps (requests and urllib3 nest the real cause)."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException):
                todo.append(arg)


_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
)


def _ssl_reason(err: ssl.SSLError) -> str:
    return str(getattr(err, "reason", None) or "")


# fcmon's own resources, not the server: never blamed on the target.
_RESOURCE_ERRNOS = {
    errno.EMFILE: "out of file descriptors (this process)",
    errno.ENFILE: "out of file descriptors (the whole system)",
    errno.ENOBUFS: "out of socket buffers",
    errno.ENOMEM: "out of memory",
}


def _descriptor_shortage() -> Optional[ProbeError]:
    """`internal` if this process cannot open a file descriptor right now."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return ProbeError("internal", f"{_RESOURCE_ERRNOS[e.errno]}: {e.strerror}")
        return None
    os.close(fd)
    return None


def internal_error(exc: BaseException) -> Optional[ProbeError]:
    """A failure that is fcmon's own (descriptors, memory, threads), or None."""
    network = False
    for e in _chain_of(exc):
        if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
            return ProbeError("internal", f"{_RESOURCE_ERRNOS[e.errno]}: {e.strerror}")
        if isinstance(e, MemoryError):
            return ProbeError("internal", "out of memory")
        if isinstance(e, RuntimeError) and "thread" in str(e):
            return ProbeError("internal", f"cannot start a thread: {e}")
        if isinstance(e, OSError) and not isinstance(e, (ssl.SSLError, socket.timeout)):
            network = True
    if network:
        # Out of descriptors, name resolution fails first (it opens
        # /etc/hosts) with whatever errno glibc leaves: a gaierror or an
        # odd OSError, not EMFILE. So a socket-level failure is checked
        # against the descriptor table itself before the server is blamed.
        return _descriptor_shortage()
    return None


def _is_network_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is an error of the network, TLS or HTTP
    layers; anything else escaping a connect or a call is a bug of fcmon's."""
    return any(
        isinstance(e, (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException,
                       requests.exceptions.RequestException))
        for e in _chain_of(exc)
    )


def classify_connect_error(exc: BaseException, has_client_cert: bool = True) -> ProbeError:
    """TCP connect and TLS handshake failures."""
    internal = internal_error(exc)
    if internal is not None:
        return internal
    if not _is_network_error(exc):
        return ProbeError("internal", f"internal error: {type(exc).__name__}")
    for e in _chain_of(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return ProbeError("tls_verify", f"server certificate not trusted: {e.verify_message}")
        if isinstance(e, ssl.SSLError):
            reason = _ssl_reason(e)
            if any(a in reason.upper() for a in _CLIENT_CERT_ALERTS):
                return ProbeError(
                    "client_cert_rejected", f"server rejected the client certificate ({reason})"
                )
            if not has_client_cert and "HANDSHAKE_FAILURE" in reason.upper():
                # TLS 1.2 servers answer a missing client certificate with
                # this generic alert.
                return ProbeError(
                    "client_cert_rejected",
                    f"server refused the handshake and no client certificate is configured ({reason})",
                )
            return ProbeError("tls_handshake", f"TLS handshake failed: {reason or e}")
        if isinstance(e, socket.gaierror):
            return ProbeError("dns", f"cannot resolve host: {e.strerror or e}")
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            cause = e.__cause__
            if isinstance(cause, socket.gaierror) and cause.strerror:
                return ProbeError("dns", f"cannot resolve host: {cause.strerror}")
            return ProbeError("dns", "cannot resolve host")
        if isinstance(e, ConnectionRefusedError):
            return ProbeError("connect_refused", "connection refused")
        if isinstance(e, (socket.timeout, TimeoutError)) and not isinstance(
            e, urllib3.exceptions.NewConnectionError
        ):
            return ProbeError("connect_timeout", "TCP connect or TLS handshake timed out")
        if isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.EPIPE):
            # Some TLS stacks drop the connection instead of sending an alert.
            return ProbeError("tls_handshake", f"connection reset during TLS handshake: {e.strerror}")
        if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ProbeError("connect_timeout", f"host unreachable: {e.strerror}")
    return ProbeError("tls_handshake", f"connection failed: {type(exc).__name__}")


def classify_request_error(exc: BaseException, first_read_after_handshake: bool) -> ProbeError:
    """Failures while sending a request or reading its response."""
    internal = internal_error(exc)
    if internal is not None:
        return internal
    for e in _chain_of(exc):
        if isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLCertVerificationError):
            reason = _ssl_reason(e)
            # TLS 1.3 reports a rejected client certificate only at the first read.
            if any(a in reason.upper() for a in _CLIENT_CERT_ALERTS):
                return ProbeError(
                    "client_cert_rejected", f"server rejected the client certificate ({reason})"
                )
        if isinstance(e, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
            return ProbeError("timeout", "no response within the timeout")
        if isinstance(e, (socket.timeout,)):
            return ProbeError("timeout", "no response within the timeout")
    if first_read_after_handshake:
        for e in _chain_of(exc):
            if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                return ProbeError(
                    "client_cert_rejected",
                    "server closed the connection right after the TLS 1.3 handshake "
                    "(client certificate not accepted)",
                )
    for e in _chain_of(exc):
        if isinstance(e, ssl.SSLError):
            return ProbeError("tls_handshake", f"TLS error: {_ssl_reason(e) or e}")
    return ProbeError("bad_response", "connection closed without a complete response")


# ---------------------------------------------------------------- one call


_HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class RequestPlan:
    """Everything about a target's requests that does not change between
    probes, worked out once per target: where to connect, the path, the
    header template, the createSession body (JSON-encoded once).

    The createSession body holds the password: this object has no repr that
    shows it.
    """

    __slots__ = ("endpoint", "host", "port", "tls", "path", "max_response_bytes", "_create", "__weakref__")

    def __init__(self, target: TargetConfig, session_description: str) -> None:
        parts = urlsplit(target.endpoint)
        self.endpoint = target.endpoint
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.max_response_bytes = target.max_response_bytes
        params: Dict[str, Any] = {
            "description": session_description,
            "idleConnectionTimeoutSeconds": target.session_idle_timeout,
        }
        if target.username is not None:
            params["username"] = target.username
            if target.password is not None:
                params["password"] = target.password
        self._create = _json_bytes({"api": "admin", "action": "createSession", "params": params})

    def __repr__(self) -> str:
        return f"RequestPlan({self.endpoint!r})"

    def create_session(self) -> bytes:
        return self._create

    @staticmethod
    def list_databases(token: str) -> bytes:
        # Byte for byte what json.dumps of the dict gives, without building it.
        return b'{"api":"db","action":"listDatabases","authToken":' + _json_bytes(token) + b"}"

    @staticmethod
    def delete_session(token: str) -> bytes:
        return b'{"api":"admin","action":"deleteSession","authToken":' + _json_bytes(token) + b"}"

    def prepare(self, body: bytes) -> requests.PreparedRequest:
        """A prepared POST of `body`.

        Built directly rather than copied from a prepared template: a copy
        duplicates a CaseInsensitiveDict and a cookie jar per call. The
        headers are a plain dict (requests and urllib3 only look up
        Content-Length in it and iterate it).
        """
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self.endpoint
        headers = dict(_HEADERS)
        headers["Content-Length"] = str(len(body))
        request.headers = headers  # type: ignore[assignment]
        request.body = body
        return request


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Dict[str, Any]
    error_code: int


class ApiClient:
    """The connection of one probe to one endpoint, behind requests: a
    fresh HTTPAdapter (`_ProbeAdapter`) over one connection (`_ProbeConnection`).

    Not thread-safe; one per probe. `cut()` may be called from another thread
    (the deadline) and makes every blocked read return at once.
    """

    def __init__(self, plan: RequestPlan, ssl_context: Optional[ssl.SSLContext],
                 resolver: Optional[Resolver] = None):
        self.plan = plan
        self.host = plan.host
        self.port = plan.port
        self.ssl_context = ssl_context
        self.wire = Wire(plan.max_response_bytes)
        self._tracked = _Tracked()
        if resolver is not None:
            self._tracked.resolver = resolver
        self._conn = _ProbeConnection(plan, ssl_context if plan.tls else None, self.wire, self._tracked)
        self.adapter = _ProbeAdapter(self._conn, self.wire, plan.path)
        self._fresh_tls = False
        # wire time of the last call whose whole response was read, else None
        self.last_wire: Optional[float] = None
        self.connect_seconds: Optional[float] = None

    def fresh(self) -> "ApiClient":
        """A new client with its own connection to the same endpoint."""
        return ApiClient(self.plan, self.ssl_context, self._tracked.resolver)

    @property
    def connects(self) -> int:
        """TCP connects (and TLS handshakes) this client made."""
        return self.wire.connects

    def connect(self, timeout: float) -> PeerInfo:
        """TCP connect + TLS handshake now, so it is timed on its own; the
        connection then carries createSession. `connect_seconds` is the time
        of the connect and handshake alone."""
        self.connect_seconds = None
        conn = self._conn
        conn.close()
        conn.timeout = max(timeout, 0.001)
        try:
            conn.connect()
            self.connect_seconds = self.wire.connect_seconds
            peer = peer_info(conn.sock)
        except BaseException:
            conn.close()
            raise
        self._fresh_tls = peer.tls_version == "TLSv1.3"
        return peer

    def call(self, body: bytes, timeout: float) -> ApiResponse:
        """POST one JSON request body; return the parsed body or raise ProbeError.

        `last_wire` is then the call's time on the wire, or None when no
        complete response was read.
        """
        first_read = self._fresh_tls
        self._fresh_tls = False
        self.last_wire = None
        wire = self.wire
        wire.started = wire.finished = None
        t = max(timeout, 0.001)
        try:
            resp = self.adapter.send(self.plan.prepare(body), timeout=(t, t))
        except ProbeError:
            raise
        except (requests.exceptions.RequestException, OSError, urllib3.exceptions.HTTPError,
                http.client.HTTPException) as exc:
            raise classify_request_error(exc, first_read) from None
        self.last_wire = wire.seconds()
        raw = resp.content
        resp.close()
        return self._parse(resp.status_code, raw)

    @staticmethod
    def _parse(status: int, raw: bytes) -> ApiResponse:
        """The body as a JSON object with an integer errorCode, or ProbeError.

        Whatever the server sent (any bytes up to the size cap) ends here as
        a response or a named reason: invalid UTF-8 and numbers past
        Python's digit limit are ValueErrors, and nesting deeper than the
        interpreter's recursion limit is a RecursionError.
        """
        what = "not JSON"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        except RecursionError:
            body, what = None, "JSON nested too deep"
        if not isinstance(body, dict):
            # The HTTP status counts only when the body is not a JSON object.
            if not 200 <= status < 300:
                raise ProbeError("http_status", f"HTTP {status} without a JSON object body", status)
            if body is not None:
                what = f"JSON {type(body).__name__}, not an object"
            raise ProbeError("bad_response", f"response body is {what}", status)
        code = body.get("errorCode")
        if isinstance(code, bool) or not isinstance(code, int):
            raise ProbeError("bad_response", "response has no integer errorCode", status)
        if not _MIN_CODE <= code <= _MAX_CODE:
            # It becomes a label and a gauge: keep it a number both can hold.
            raise ProbeError("bad_response", "response errorCode out of range", status)
        return ApiResponse(status, body, code)

    def set_deadline(self, at: Optional[float]) -> None:
        """Every socket timeout of this client ends by monotonic time `at`."""
        self._tracked.deadline = at

    def cut(self) -> None:
        self._tracked.cut_all()

    def close(self) -> None:
        self.adapter.close()


# errorCode is a 32-bit number in FairCom; anything beyond 64 bits is not an answer.
_MIN_CODE, _MAX_CODE = -(2 ** 63), 2 ** 63 - 1
