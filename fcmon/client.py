"""The JSON DB API over requests: TLS context, connection, one call, error model.

Trust is exactly the target's `ca_file` (or the system store without one):
the SSL context is built here once per target and requests is kept from
touching it (no certifi, no REQUESTS_CA_BUNDLE, see pitfalls.md). Every
connection of a probe goes through one small pool whose connections this
module knows, so a deadline can cut a socket that a server drips bytes into.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.wait import wait_for_read

from .certs import CertFileError, der_cert_info, file_stamp, load_private_key
from .config import TargetConfig
from .result import CertInfo

log = logging.getLogger(__name__)

USER_AGENT = "fcmon"


class ProbeError(Exception):
    """A classified failure: `reason` is one of result.REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------- TLS context


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
    """The connections a probe opened, so the deadline can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: List[Any] = []
        self.cut = False

    def add(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            cut = self.cut
        if cut:
            _cut(conn)

    def cut_all(self) -> None:
        with self._lock:
            self.cut = True
            conns = list(self._conns)
        for conn in conns:
            _cut(conn)


def _cut(conn: Any) -> None:
    """Shut the socket down under a blocked reader in another thread.

    socket.socket.shutdown on the SSLSocket bypasses SSLSocket.shutdown, which
    would clear _sslobj under the reader's feet; the reader sees EOF instead.
    """
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _ProbeHTTPSConnection(HTTPSConnection):
    @property
    def is_connected(self) -> bool:
        """urllib3 calls an idle connection dropped when its socket is readable.

        After a TLS 1.3 handshake it always is: the server's session tickets
        arrive after the handshake. urllib3 would then throw the fresh
        connection away and handshake again. Readable only because of TLS
        records is still connected; EOF, an alert or stray data is not.
        """
        sock = self.sock
        if sock is None:
            return False
        if not wait_for_read(sock, timeout=0.0):
            return True
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


class _TrackingMixin:
    _fcmon_tracked: _Tracked

    def _new_conn(self):  # type: ignore[no-untyped-def]
        conn = super()._new_conn()  # type: ignore[misc]
        self._fcmon_tracked.add(conn)
        return conn


class _HTTPSPool(_TrackingMixin, HTTPSConnectionPool):
    ConnectionCls = _ProbeHTTPSConnection


class _HTTPPool(_TrackingMixin, HTTPConnectionPool):
    pass


class _ProbeAdapter(HTTPAdapter):
    """Sends every request through the probe's own pool; never touches TLS trust."""

    def __init__(self, pool: HTTPConnectionPool):
        self._pool = pool
        super().__init__(max_retries=0)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):  # type: ignore[no-untyped-def,override]
        return self._pool

    def get_connection(self, url, proxies=None):  # type: ignore[no-untyped-def,override]
        return self._pool

    def cert_verify(self, conn, url, verify, cert):  # type: ignore[no-untyped-def,override]
        # requests would set ca_certs (certifi or REQUESTS_CA_BUNDLE) here and
        # urllib3 would then load it into our context on every connection.
        return None

    def close(self) -> None:
        super().close()
        self._pool.close()


# ---------------------------------------------------------------- peer certs


@dataclass(frozen=True)
class PeerInfo:
    certs: Tuple[CertInfo, ...]  # server leaf first, then chain
    tls_version: Optional[str]
    tls_cipher: Optional[str]


def _chain_der(sock: ssl.SSLSocket) -> List[bytes]:
    """The certificates the server presented, leaf first, as DER.

    Python 3.13 exposes them publicly; 3.10-3.12 only on the private _sslobj;
    3.9 has only the leaf.
    """
    getter = getattr(sock, "get_unverified_chain", None)
    if getter is None:
        sslobj = getattr(sock, "_sslobj", None)
        getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter() or []
            out = []
            for item in chain:
                if isinstance(item, (bytes, bytearray)):
                    out.append(bytes(item))
                else:
                    out.append(item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
            if out:
                return out
        except Exception:  # a private API: never let it break a probe
            log.debug("could not read the peer chain", exc_info=True)
    leaf = sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def peer_info(sock: Any) -> PeerInfo:
    if not isinstance(sock, ssl.SSLSocket):
        return PeerInfo((), None, None)
    infos = []
    for i, der in enumerate(_chain_der(sock)):
        info = der_cert_info(der, "server" if i == 0 else "chain")
        if info is not None:
            infos.append(info)
    cipher = sock.cipher()
    return PeerInfo(tuple(infos), sock.version(), cipher[0] if cipher else None)


def fetch_peer_unverified(host: str, port: int, timeout: float) -> PeerInfo:
    """A second handshake that verifies nothing, to report a certificate that failed.

    Reporting only: no client certificate is presented and no byte of HTTP
    (let alone credentials) is sent over this connection.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=max(timeout, 0.05)) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as sock:
            return peer_info(sock)


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


def classify_connect_error(exc: BaseException, has_client_cert: bool = True) -> ProbeError:
    """TCP connect and TLS handshake failures."""
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


@functools.lru_cache(maxsize=4096)
def _request_template(endpoint: str) -> requests.PreparedRequest:
    """A prepared POST to `endpoint`, copied for every call.

    Session.request would prepare (parse the URL, merge settings) anew for
    every call: about 0.15 ms each, half of it in runtime-checkable Protocol
    isinstance checks on Python 3.11.
    """
    return requests.Request(
        "POST",
        endpoint,
        data=b"",
        headers={"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT},
    ).prepare()


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Dict[str, Any]
    error_code: int


class ApiClient:
    """The connection(s) of one probe to one endpoint.

    Not thread-safe; one per probe. `cut()` may be called from another thread
    (the deadline) and makes every blocked read return at once.
    """

    def __init__(
        self,
        endpoint: str,
        ssl_context: Optional[ssl.SSLContext],
        max_response_bytes: int,
    ):
        parts = urlsplit(endpoint)
        self.endpoint = endpoint
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.max_response_bytes = max_response_bytes
        self.ssl_context = ssl_context
        self._tracked = _Tracked()
        pool: HTTPConnectionPool
        if self.tls:
            pool = _HTTPSPool(
                self.host,
                self.port,
                maxsize=1,
                retries=False,
                ssl_context=ssl_context,
                cert_reqs="CERT_REQUIRED",
            )
        else:
            pool = _HTTPPool(self.host, self.port, maxsize=1, retries=False)
        pool._fcmon_tracked = self._tracked  # type: ignore[attr-defined]
        self._pool = pool
        self._session = requests.Session()
        # Environment proxies and CA bundles must not change what a probe trusts.
        self._session.trust_env = False
        adapter = _ProbeAdapter(pool)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._fresh_tls = False

    def fresh(self) -> "ApiClient":
        """A new client with its own connection to the same endpoint."""
        return ApiClient(self.endpoint, self.ssl_context, self.max_response_bytes)

    def connect(self, timeout: float) -> PeerInfo:
        """TCP connect + TLS handshake now, so it is timed on its own; the
        connection then carries createSession."""
        conn = self._pool._get_conn()
        conn.timeout = max(timeout, 0.001)
        try:
            conn.connect()
            peer = peer_info(conn.sock)
        except BaseException:
            conn.close()
            self._pool._put_conn(None)
            raise
        self._pool._put_conn(conn)
        self._fresh_tls = peer.tls_version == "TLSv1.3"
        return peer

    def call(self, body: Dict[str, Any], timeout: float) -> ApiResponse:
        """POST one request; return the parsed body or raise ProbeError."""
        first_read = self._fresh_tls
        self._fresh_tls = False
        t = max(timeout, 0.001)
        data = json.dumps(body, separators=(",", ":")).encode()
        request = _request_template(self.endpoint).copy()
        request.body = data
        request.headers["Content-Length"] = str(len(data))
        try:
            resp = self._session.send(
                request, timeout=(t, t), stream=True, allow_redirects=False
            )
        except (requests.exceptions.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise classify_request_error(exc, first_read) from None
        try:
            raw = self._read_capped(resp)
        finally:
            resp.close()
        return self._parse(resp.status_code, raw)

    def _read_capped(self, resp: requests.Response) -> bytes:
        cap = self.max_response_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise ProbeError("bad_response", f"response of {declared} bytes exceeds the cap of {cap}")
        chunks = []
        size = 0
        try:
            for chunk in resp.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > cap:
                    raise ProbeError("bad_response", f"response exceeds the cap of {cap} bytes")
                chunks.append(chunk)
        except ProbeError:
            raise
        except (requests.exceptions.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise classify_request_error(exc, False) from None
        return b"".join(chunks)

    @staticmethod
    def _parse(status: int, raw: bytes) -> ApiResponse:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # The HTTP status counts only when the body is not a JSON object.
            if not 200 <= status < 300:
                raise ProbeError("http_status", f"HTTP {status} without a JSON object body")
            what = "not JSON" if body is None else f"JSON {type(body).__name__}, not an object"
            raise ProbeError("bad_response", f"response body is {what}")
        code = body.get("errorCode")
        if isinstance(code, bool) or not isinstance(code, int):
            raise ProbeError("bad_response", "response has no integer errorCode")
        return ApiResponse(status, body, code)

    def cut(self) -> None:
        self._tracked.cut_all()

    def close(self) -> None:
        self._session.close()

