"""The HTTP endpoint: /metrics, /probe, /-/healthy, /-/ready.

A small WSGI app behind fcmon's own bounded front door (httpd.py), not
wsgiref: wsgiref is a thread per connection with a per-read timeout (3,000
slow clients held 2,239 threads), and production WSGI servers fall short
here (cheroot handshakes TLS in its accept thread, waitress has no TLS).
With [web] TLS the handshake runs per connection under a timeout, so an
idle or slow client cannot stall other scrapes.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import socket
import ssl
import time
import zlib
from typing import Any, Callable, FrozenSet, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from . import httpd, statuspage
from .authguard import AuthGuard
from ..config import WebConfig
from ..probe.flight import Busy
from .pages import Pages, Rendered
from ..export.status import StatusSnapshot

log = logging.getLogger(__name__)

# What both /metrics and /probe write is the 0.0.4 text format; recent
# prometheus_client's CONTENT_TYPE_LATEST announces 1.0.0 instead.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StartResponse = Callable[..., Any]

# Who may not wait behind whom (httpd.Lane: threads, and requests queued
# for them at most; beyond, 503 + Retry-After, counted). Scrapes and health
# checks have their own threads, so a crowd of page pollers or /probe
# callers never holds them up; /probe waits for FairCom, so it has many
# threads (its probes are capped by max_probe_requests); pages and anything
# else (404s, 401s) share a small lane: pages come from a shared rendering
# (pages.py), so a request there costs little but writing the bytes, and at
# most 32 page answers are written at once: the others wait holding no copy
# (3,000 pollers of a 4.6 MB page: at most 32 x 128 KB in buffers). And
# while a scrape or health check is answered, page answers pause between
# slices: cached pages go out as fast as pollers read them, and without
# this they took the loop and the CPU from /metrics.
SCRAPE_LANE = httpd.Lane("scrape", threads=4, queue=32, first=True)
PROBE_LANE = httpd.Lane("probe", threads=256, queue=256)
PAGE_LANE = httpd.Lane("page", threads=2, queue=32, writers=32, yields=True)
LANES = {"/metrics": SCRAPE_LANE, "/-/healthy": SCRAPE_LANE, "/-/ready": SCRAPE_LANE, "/probe": PROBE_LANE}


class Chunks(Protocol):
    """A body sent in pieces as they come (`exposition.Body`): `size` in
    bytes, and the pieces."""

    size: int

    def __iter__(self) -> Iterator[bytes]: ...


BodyType = Union[bytes, Chunks]


def server_ssl_context(web: WebConfig) -> Optional[ssl.SSLContext]:
    if web.tls_cert_file is None or web.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(web.tls_cert_file), str(web.tls_key_file))
    if web.client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(web.client_ca_file))
    return ctx


class App:
    """The WSGI application. `metrics()` is the /metrics body (bytes, or
    pieces with a length: sent as they come, never joined here);
    `probe_target(name)` returns a registry holding only that target's series
    after probing it (or that and the seconds since the probe ended: a
    result served again), or None for an unknown name; `debug_probe(name)`
    the same probe's log and series as text (`&debug=true`); `status()` is
    what the status page (`/`) and `/api/v1/status` show."""

    def __init__(
        self,
        metrics: Callable[[], BodyType],
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        probe_target: Callable[[str], Union[None, CollectorRegistry, Tuple[CollectorRegistry, float]]],
        web: WebConfig,
        status: Optional[Callable[[], StatusSnapshot]] = None,
        debug_probe: Optional[Callable[[str], Optional[bytes]]] = None,
        on_auth_failure: Callable[[], None] = lambda: None,
        status_changes: Callable[[], int] = lambda: -1,
        status_reloads: Callable[[], int] = lambda: 0,
    ):
        self._metrics = metrics
        # `status_changes`: a count that moves with every change of the
        # status (StatusBoard.changes); without it the pages are rebuilt
        # every period. `status_reloads`: one that moves with each reload
        # (StatusBoard.reloads): the pages show it at once.
        self.pages: Optional[Pages] = None if status is None else Pages(
            status, {"html": statuspage.render_html, "json": statuspage.render_json}, gzip_body,
            changes=status_changes, reloads=status_reloads)
        self._healthy = healthy
        self._ready = ready
        self._probe_target = probe_target
        self._debug_probe = debug_probe
        self.web = web
        # Failed basic auth per client address: logged, counted, slowed
        # (the front door asks `auth_guard.admit` before each request).
        self.auth_guard = AuthGuard(on_auth_failure)
        self._own_names = own_host_names()

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not host_allowed(environ.get("HTTP_HOST"), self.web, self._own_names):
            return _reply(start_response, "421 Misdirected Request",
                          b"this host name is not served here ([web] allowed_hosts)\n")
        if not self._check_auth(environ):
            return _reply(start_response, "401 Unauthorized", b"Unauthorized\n",
                          [("WWW-Authenticate", 'Basic realm="fcmon"')])
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return _exposition(environ, start_response, self._metrics())
        if path == "/probe":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            names = query.get("target", [])
            debug = query.get("debug", [""])[-1].lower() in ("true", "1", "yes")
            if len(names) != 1 or not names[0]:
                # As blackbox_exporter: a missing parameter is the caller's mistake, named.
                return _reply(start_response, "400 Bad Request",
                              b"the 'target' parameter is missing (or given twice): /probe?target=NAME, "
                              b"NAME a [target:NAME] of the config\n")
            age: Optional[float] = None
            try:
                if debug and self._debug_probe is not None:
                    text = self._debug_probe(names[0]) if len(names) == 1 else None
                    if text is not None:
                        return _reply(start_response, "200 OK", text, [("Cache-Control", "no-store")])
                    registry = None
                else:
                    answer = self._probe_target(names[0]) if len(names) == 1 else None
                    registry, age = answer if isinstance(answer, tuple) else (answer, None)
            except Busy:
                return _reply(start_response, "503 Service Unavailable",
                              b"too many probes in flight, retry later\n", [("Retry-After", "5")])
            if registry is None:
                return _reply(start_response, "404 Not Found", b"unknown target\n")
            body = generate_latest(registry)
            extra: List[Tuple[str, str]] = []
            if age is not None:
                # How old the result is: a header, and a comment line (the
                # text format ignores comments other than HELP and TYPE).
                body += f"# fcmon: this probe ended {age:.3f} s before this answer\n".encode()
                extra.append(("Age", str(int(age))))
            return _exposition(environ, start_response, body, extra)
        if path == "/-/healthy":
            ok = self._healthy()
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable",
                          b"OK\n" if ok else b"scheduler not running\n")
        if path == "/-/ready":
            ok = self._ready()
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable",
                          b"OK\n" if ok else b"first round of probes not done\n")
        if path == "/" and self.pages is not None:
            return _page(environ, start_response, self.pages.get("html"),
                         [("Content-Type", statuspage.HTML_CONTENT_TYPE), *statuspage.PAGE_HEADERS])
        if path == "/api/v1/status" and self.pages is not None:
            return _page(environ, start_response, self.pages.get("json"),
                         [("Content-Type", statuspage.JSON_CONTENT_TYPE), ("Cache-Control", "no-store")])
        return _reply(start_response, "404 Not Found", b"not found\n")

    def _check_auth(self, environ: dict) -> bool:
        if self.web.basic_auth_username is None or self.web.basic_auth_password is None:
            return True
        key = httpd.client_key(str(environ.get("REMOTE_ADDR", "")))
        if self._authorized(environ):
            self.auth_guard.succeeded(key)
            return True
        self.auth_guard.failed(key)
        return False

    def _authorized(self, environ: dict) -> bool:
        user, password = self.web.basic_auth_username, self.web.basic_auth_password
        if user is None or password is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        given_user, _, given_password = given.partition(":")
        # Both compared, always, in constant time.
        ok_user = hmac.compare_digest(given_user.encode(), user.encode())
        ok_password = hmac.compare_digest(given_password.encode(), password.encode())
        return ok_user and ok_password


def own_host_names() -> FrozenSet[str]:
    """The machine's own names, as `hostname` gives them (no DNS lookup:
    a hung resolver must not hold the start)."""
    name = socket.gethostname().lower().rstrip(".")
    return frozenset(n for n in (name, name.split(".")[0]) if n)


def host_allowed(host: Optional[str], web: WebConfig, own_names: FrozenSet[str]) -> bool:
    """Whether a request's Host header may be served: the defence against DNS
    rebinding, where a web page in an operator's browser reaches fcmon under
    the page's own name. Always: no Host (browsers always send one), an IP
    address, `localhost` and `*.localhost`. Then `[web] allowed_hosts` if
    set (names, `*.domain`, `*`); if not, the machine's own names, or any
    name when basic auth is set (a rebinding page does not have the
    credentials)."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return True
    patterns = web.allowed_hosts
    if patterns is None:
        return name in own_names or web.basic_auth_username is not None
    for pattern in patterns:
        if pattern == "*" or pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header value allows gzip (and not with q=0)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        name, _, value = params.strip().partition("=")
        if name.strip().lower() != "q":
            return True
        try:
            return float(value) > 0
        except ValueError:
            return False
    return False


def gzip_body(body: BodyType) -> bytes:
    """The body gzipped block by block. Level 1: 17 MB of exposition (3,000
    targets) becomes about 0.7 MB in about 50 ms; zlib runs without the GIL."""
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: gzip header and trailer
    out = [z.compress(block) for block in ([body] if isinstance(body, bytes) else body)]
    out.append(z.flush())
    return b"".join(out)


def _exposition(environ: dict, start_response: StartResponse, body: BodyType,
                extra: Sequence[Tuple[str, str]] = ()) -> Iterable[bytes]:
    """A /metrics or /probe answer, gzipped when the client asks (Prometheus does)."""
    headers = [("Content-Type", METRICS_CONTENT_TYPE), ("Vary", "Accept-Encoding"), *extra]
    if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
        body = gzip_body(body)
        headers.append(("Content-Encoding", "gzip"))
    return _reply(start_response, "200 OK", body, headers)


def _page(environ: dict, start_response: StartResponse, page: Rendered,
          headers: List[Tuple[str, str]]) -> Iterable[bytes]:
    """The status page or its JSON from the shared rendering, gzipped when
    the client asks (browsers do: 3,000 targets make 4.6 MB of HTML, about
    90 kB gzipped); `Age`: seconds since it was rendered."""
    headers = headers + [("Vary", "Accept-Encoding"), ("Age", str(int(page.age(time.monotonic()))))]
    body = page.plain
    if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
        body = page.gzip
        headers.append(("Content-Encoding", "gzip"))
    return _reply(start_response, "200 OK", body, headers)


def _reply(start_response: StartResponse, status: str, body: BodyType,
           headers: Optional[List[Tuple[str, str]]] = None) -> Iterable[bytes]:
    hdrs = [("Content-Type", "text/plain; charset=utf-8")] if headers is None else list(headers)
    if not any(k == "Content-Type" for k, _ in hdrs):
        hdrs.append(("Content-Type", "text/plain; charset=utf-8"))
    hdrs.append(("Content-Length", str(len(body) if isinstance(body, bytes) else body.size)))
    start_response(status, hdrs)
    return [body] if isinstance(body, bytes) else body


class ListenError(Exception):
    """The endpoint's address cannot be bound (taken, not local, privileged)."""


def listen_error(host: str, port: int, exc: OSError) -> ListenError:
    """One line naming the address and the cause, for the operator (not a traceback)."""
    shown = f"[{host}]" if ":" in host else host
    cause = exc.strerror or str(exc) or type(exc).__name__
    return ListenError(f"cannot listen on {shown}:{port}: {cause[:1].lower()}{cause[1:]}")


class WebServer:
    """The app behind fcmon's bounded front door (`httpd.Server`): binds at
    once, serves once started. `max_connections`: open connections at most
    (see `httpd.connection_cap`); `on_rejected(reason)` counts those closed
    at once (`httpd.REJECT_REASONS`). The per-client limit is the app's
    `[web] max_connections_per_client`. `on_shed(lane)` counts requests
    answered 503 because their lane was full, `on_dropped(lane)` requests
    not run because their client had gone."""

    def __init__(self, app: App, host: str, port: int, ssl_context: Optional[ssl.SSLContext],
                 max_connections: int = httpd.MAX_CONNECTIONS,
                 on_rejected: Callable[[str], None] = lambda reason: None,
                 on_shed: Callable[[str], None] = lambda lane: None,
                 on_dropped: Callable[[str], None] = lambda lane: None):
        try:
            self._server = httpd.Server(app, host, port, ssl_context, max_connections, on_rejected,
                                        max_per_client=app.web.max_connections_per_client,
                                        admit=app.auth_guard.admit,
                                        lanes=LANES, default_lane=PAGE_LANE,
                                        on_shed=on_shed, on_dropped=on_dropped)
        except OSError as exc:  # includes socket.gaierror for a host name that does not resolve
            raise listen_error(host, port, exc) from None
        self._app = app

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def max_connections(self) -> int:
        return self._server.max_connections

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        self._server.max_connections = value

    @property
    def max_connections_per_client(self) -> int:
        return self._server.max_per_client

    @max_connections_per_client.setter
    def max_connections_per_client(self, value: int) -> None:
        self._server.max_per_client = value

    def set_ssl_context(self, ctx: Optional[ssl.SSLContext]) -> None:
        self._server.ssl_context = ctx

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
