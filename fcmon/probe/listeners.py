"""Every TLS listener of a FairCom server: discovered, handshaken, reported.

A FairCom server runs more TLS listeners than the JSON API's HTTPS one
(MQTT over TLS on 8883, MQTT over secure WebSockets on 9002 by default),
often with certificates installed at different times. `listServices`
answers without a session and names each listener with its port and
protocol, so one `[target:NAME]` covers all of them:

- discovery: `{"api":"admin","action":"listServices"}` on the target's
  endpoint, through the probe's own client (same TLS context, response cap
  and deadline; no authToken). Kept: enabled listeners whose protocol
  speaks TLS from the first byte, other than the endpoint's own port, on
  the endpoint's host. Never a port the server did not name or the config
  did not list.
- check: TCP connect and TLS handshake with the target's SSL context (only
  its `ca_file`, host name verified, its client certificate), no
  application byte sent, close_notify, close. With TLS 1.3 a server judges
  the client certificate only after the handshake, so the check then reads
  briefly: a session ticket means accepted, an alert or a close means
  rejected. A certificate that fails verification is fetched again by the
  reporting-only unverified handshake, so an expired one shows its
  negative days.

ISAM (5597) and SQL (6597) ports are out of scope: their TLS is negotiated
inside FairCom's own logon protocol, so a bare handshake cannot read them.

Nothing here knows of Prometheus: a round gives a `ListenerRound`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .certs import CertFileError, dedupe
from .client import (
    ApiClient,
    PeerInfo,
    ProbeError,
    classify_connect_error,
    connect_tcp,
    fetch_peer_unverified,
    peer_info,
)
from ..config import TargetConfig
from .result import ERROR_MESSAGE_MAX, FAILURE_MESSAGE_MAX, SERVER_FIELD_MAX, CertInfo
from .servertext import clean
from .sockwait import wait_readable

log = logging.getLogger(__name__)

LIST_SERVICES = b'{"api":"admin","action":"listServices"}'
# Protocols that speak TLS from the first byte (FairCom's services.json
# names: https, mqtts, mqttwss; wss as the docs write it). Plain ones
# (http, mqtt, mqttws) and the ISAM/SQL ports are never handshaken.
TLS_PROTOCOLS = frozenset({"https", "mqtts", "wss", "mqttwss", "tls", "ssl", "mqtt+ssl", "mqtt+tls"})
# The protocol label of a listener known only from the config.
CONFIGURED_PROTOCOL = "tls"
# After a TLS 1.3 handshake: how long to wait for the server's verdict on
# the client certificate (a session ticket, or an alert) at least, and as a
# multiple of the handshake's own time (a far server answers later).
SETTLE_MIN = 0.25
SETTLE_HANDSHAKES = 4.0
# The reporting-only handshake after a verification failure gets at most this.
UNVERIFIED_FETCH_TIMEOUT = 2.0
# A round (discovery and every check) ends within this many timeouts of the
# target; checks it leaves undone come first in the next round.
ROUND_TIMEOUTS = 4
# Listeners named in the discovery log line at most.
NAMED_IN_LOG = 10
# The listener check's own failure vocabulary: the connect-stage reasons,
# and internal (fcmon out of descriptors, say: classify_connect_error's).
LISTENER_REASONS = ("dns", "connect_refused", "connect_timeout", "tls_handshake", "tls_verify",
                    "client_cert_rejected", "internal")


@dataclass(frozen=True)
class Listener:
    name: str  # serviceName from listServices, or NAME from the config
    port: int
    protocol: str  # from listServices; CONFIGURED_PROTOCOL when only configured

    def __post_init__(self) -> None:
        # listServices' text: cleaned where it enters a result (fcmon/probe/servertext.py)
        object.__setattr__(self, "name", clean(self.name, SERVER_FIELD_MAX))
        object.__setattr__(self, "protocol", clean(self.protocol, SERVER_FIELD_MAX))


@dataclass(frozen=True)
class ListenerResult:
    listener: Listener
    ended: float  # Unix time
    duration: float  # seconds
    reason: Optional[str] = None  # one of LISTENER_REASONS; None when the handshake verified
    message: str = ""
    certs: Tuple[CertInfo, ...] = ()  # server leaf first, then chain
    tls_version: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", clean(self.message, FAILURE_MESSAGE_MAX))

    @property
    def up(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ListenerRound:
    """One target's discovery and listener checks."""

    target: str
    # None: discovery is not configured; True: listServices named the
    # listeners; False: it failed or the server does not offer it.
    discovery: Optional[bool]
    discovery_message: str
    results: Tuple[ListenerResult, ...]
    ended: float
    # listeners beyond the target's max_listeners: named, never checked
    over_cap: int = 0
    # listeners within the cap that this round's deadline left unchecked
    # (their last result, if any, is carried in `results`)
    not_reached: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "discovery_message", clean(self.discovery_message, FAILURE_MESSAGE_MAX))


def round_budget(target: TargetConfig) -> float:
    """Seconds a round of `target` may take: ROUND_TIMEOUTS timeouts, and
    less than its listener_interval, so it never overruns into the next."""
    return min(ROUND_TIMEOUTS * target.timeout, max(target.timeout, 0.9 * target.listener_interval))


def speaks_tls(protocol: str) -> bool:
    return protocol.strip().lower() in TLS_PROTOCOLS


class DiscoveryUnsupported(Exception):
    """The server answered, but not with a list of listeners."""


def parse_listeners(body: Dict[str, Any], own_port: int) -> List[Listener]:
    """The TLS listeners worth a handshake in a listServices answer.

    Raises DiscoveryUnsupported when the answer names none at all (an
    unknown action, or no `listeners`).
    """
    code = body.get("errorCode")
    if code != 0:
        message = body.get("errorMessage")
        # The server's errorMessage, cleaned here: this text is logged before any result holds it.
        raise DiscoveryUnsupported(f"listServices answered errorCode {code}"
                                   + (f": {clean(message, ERROR_MESSAGE_MAX)}"
                                      if isinstance(message, str) and message else ""))
    result = body.get("result")
    items = result.get("listeners") if isinstance(result, dict) else None
    if not isinstance(items, list):
        raise DiscoveryUnsupported("listServices answered without a listeners list")
    out: List[Listener] = []
    for item in items:
        if not isinstance(item, dict) or item.get("enabled") is not True:
            continue
        protocol = item.get("protocol")
        if not isinstance(protocol, str) or not speaks_tls(protocol):
            continue
        port = _port(item.get("port"))
        if port is None or port == own_port:
            continue
        name = item.get("serviceName")
        if not isinstance(name, str) or not name:
            name = f"{protocol.lower()}{port}"
        out.append(Listener(name, port, protocol.lower()))
    return out


def _port(value: Any) -> Optional[int]:
    # FairCom sends the port as a string; tolerate a number. ASCII digits
    # only: str.isdigit() accepts "²" and other digits int() refuses.
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
            return None
        value = int(text)
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


def merge(configured: Sequence[Tuple[str, int]], discovered: Sequence[Listener]) -> Tuple[Listener, ...]:
    """Configured listeners first (their names win), then discovered ones on
    other ports; one listener per port, one port per name."""
    out: List[Listener] = []
    ports = set()
    names = set()
    by_port = {d.port: d for d in discovered}
    for name, port in configured:
        found = by_port.get(port)
        out.append(Listener(name, port, found.protocol if found else CONFIGURED_PROTOCOL))
        ports.add(port)
        names.add(name)
    for d in discovered:
        if d.port in ports:
            continue
        name = d.name if d.name not in names else f"{d.name}-{d.port}"
        out.append(Listener(name, d.port, d.protocol))
        ports.add(d.port)
        names.add(name)
    return tuple(out)


class _Cut:
    """The deadline's handle on one socket: shut it down under a blocked call."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        sock = self.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def handshake(host: str, port: int, ctx: ssl.SSLContext, timeout: float,
              at: Callable[[float, Callable[[], None]], Any], cancel: Callable[[Any], None],
              has_client_cert: bool, resolver: Optional[Resolver] = None) -> Tuple[PeerInfo, Optional[ProbeError]]:
    """Connect, handshake, wait for the server's verdict (TLS 1.3), close.

    Sends no application byte. Raises ProbeError with a connect-stage reason
    when no handshake completed; returns the error beside the peer's
    certificates when the server refused the client certificate after it.
    `at`/`cancel` arm the deadline that cuts a handshake a server stalls.
    """
    t0 = time.monotonic()
    cut = _Cut()
    handle = at(t0 + timeout, cut)
    raw: Optional[socket.socket] = None
    sock: Optional[ssl.SSLSocket] = None
    try:
        try:
            # name resolution and each address inside the deadline
            raw = connect_tcp(host, port, t0 + max(timeout, 0.001), resolver)
            cut.sock = raw
            if cut.fired:
                raise socket.timeout("deadline")
            raw.settimeout(max(timeout - (time.monotonic() - t0), 0.001))
            sock = ctx.wrap_socket(raw, server_hostname=host)
        except Exception as exc:
            err = classify_connect_error(exc, has_client_cert)
            if cut.fired and err.reason != "dns":
                raise ProbeError("connect_timeout", "TCP connect and TLS handshake did not finish "
                                 "within the timeout") from None
            raise err from None
        shook = time.monotonic() - t0
        peer = peer_info(sock)
        if sock.version() == "TLSv1.3":
            settle = min(max(SETTLE_MIN, SETTLE_HANDSHAKES * shook), t0 + timeout - time.monotonic())
            try:
                _verdict(sock, settle, has_client_cert)
            except ProbeError as exc:
                return peer, exc
        return peer, None
    finally:
        cancel(handle)
        _close(sock, raw)


def _verdict(sock: ssl.SSLSocket, wait: float, has_client_cert: bool) -> None:
    """After a TLS 1.3 handshake the server judges the client certificate,
    then sends session tickets (accepted) or an alert (refused). Wait until
    the socket is readable, up to `wait`, then read once: records that are
    not an alert (tickets, or data of a server that speaks first) mean
    accepted; an alert or a close mean refused; silence means accepted (a
    server that sends no tickets). No SSLSession is built: reading
    `sock.session` costs a re-parse of the peer certificate each time."""
    sock.setblocking(False)
    try:
        readable = wait_readable(sock, wait)
    except (OSError, ValueError):
        return  # the deadline cut the socket: the handshake itself succeeded
    if not readable:
        return
    try:
        sock.recv(1)
        return  # data: a server that speaks first accepted the connection
    except ssl.SSLWantReadError:
        return  # tickets (or a partial record): no alert
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
        raise ProbeError(
            "client_cert_rejected",
            "server closed the connection right after the TLS 1.3 handshake "
            "(client certificate not accepted)",
        ) from None
    except ssl.SSLError as exc:
        err = classify_connect_error(exc, has_client_cert)
        if err.reason == "client_cert_rejected":
            raise err from None
        raise ProbeError("tls_handshake", f"TLS error right after the handshake: {err.message}") from None
    except OSError:
        return


def _close(sock: Optional[ssl.SSLSocket], raw: Optional[socket.socket]) -> None:
    """close_notify (never waiting for the peer's), then close."""
    if sock is not None:
        try:
            sock.setblocking(False)
            sock.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass
    if raw is not None:
        try:
            raw.close()
        except OSError:
            pass


class ListenerChecker:
    """Runs listener rounds; remembers each target's discovered listeners
    (kept while the server cannot be asked) and what was logged about it."""

    def __init__(self, prober: Any, wall_clock: Callable[[], float] = time.time):
        self._prober = prober  # probe.Prober: TLS contexts, request plans, deadlines
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._discovered: Dict[str, Tuple[Listener, ...]] = {}
        self._said: Dict[str, str] = {}
        # target -> (monotonic time, listeners found, or the message of an
        # answer without listeners) of a listServices asked on a probe's
        # connection (`piggyback`); the next round uses it when fresh
        self._piggybacked: Dict[str, Tuple[float, Optional[Tuple[Listener, ...]], str]] = {}
        self._next_due: Dict[str, float] = {}  # target -> Unix time its next round is due (from the scheduler)
        self._asked_for: Dict[str, float] = {}  # target -> the due time a probe last asked listServices for
        self._busy: set = set()  # targets whose round is running
        self._last: Dict[str, float] = {}  # target -> monotonic start of its last round
        # target -> its last round's result per listener (carried over for
        # listeners a round's deadline did not reach), and where the next
        # round starts checking (rotation: every listener gets its turn)
        self._results: Dict[str, Dict[Listener, ListenerResult]] = {}
        self._rotation: Dict[str, int] = {}
        self._crashed: set = set()  # targets whose last round crashed (logged once)
        self._over_cap: Dict[str, int] = {}  # target -> listeners beyond its cap last round (logged on change)
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Start no further check (fcmon is stopping): a round in progress
        ends after its current handshake, within the target's timeout."""
        self._stopping.set()

    def retain(self, targets: Sequence[TargetConfig]) -> None:
        keep = {t.name for t in targets if t.discovers_listeners}
        checking = {t.name for t in targets if t.checks_listeners}
        with self._lock:
            for name in list(self._last):
                if name not in checking:
                    del self._last[name]
            for d2 in (self._results, self._rotation, self._over_cap):  # type: ignore[attr-defined]
                for name in list(d2):
                    if name not in checking:
                        del d2[name]
            self._crashed &= checking
            for name in list(self._discovered):
                if name not in keep:
                    del self._discovered[name]
            for name in list(self._said):
                if name not in keep:
                    del self._said[name]
            for d in (self._piggybacked, self._next_due, self._asked_for):  # type: ignore[attr-defined]
                for name in list(d):
                    if name not in keep:
                        del d[name]

    def due(self, target: TargetConfig) -> bool:
        """No round of `target` ran for listener_interval (and none runs now)."""
        with self._lock:
            last = self._last.get(target.name)
            busy = target.name in self._busy
        return not busy and (last is None or time.monotonic() - last >= target.listener_interval)

    def run(self, target: TargetConfig) -> Optional[ListenerRound]:
        """One round; None when a round of the same target is already running
        (at most one check per listener in flight, whoever asks), or crashed."""
        with self._lock:
            if target.name in self._busy:
                return None
            self._busy.add(target.name)
            self._last[target.name] = time.monotonic()
        try:
            round_ = self._run(target)
            with self._lock:
                self._crashed.discard(target.name)
            return round_
        except Exception as exc:  # the boundary: a bug must not kill the scheduler
            return self._crashed_round(target, exc)
        finally:
            with self._lock:
                self._busy.discard(target.name)

    def _crashed_round(self, target: TargetConfig, exc: BaseException) -> ListenerRound:
        """A round that crashed (a bug): logged with its traceback once until
        a round succeeds again, and reported as a failed discovery naming
        the crash, with the last results carried, so its state says so
        instead of freezing silently."""
        with self._lock:
            first = target.name not in self._crashed
            self._crashed.add(target.name)
            last = tuple(self._results.get(target.name, {}).values())
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if first:
            log.error("listener round of %s crashed (%s), a bug in fcmon: its listeners keep their last "
                      "results until a round succeeds", target.name, what, exc_info=True)
        else:
            log.debug("listener round of %s crashed again (%s)", target.name, what)
        return ListenerRound(target.name, False, f"listener round crashed (a bug in fcmon): {what}", last,
                             self._wall())

    def _run(self, target: TargetConfig) -> ListenerRound:
        round_deadline = time.monotonic() + round_budget(target)
        ctx: Optional[ssl.SSLContext] = None
        setup_error: Optional[str] = None
        try:
            ctx = self._prober.contexts.get(target)
        except CertFileError as exc:
            setup_error = f"cannot set up TLS: {exc}"
        discovery: Optional[bool] = None
        message = ""
        discovered: Tuple[Listener, ...] = ()
        if target.discovers_listeners:
            discovery, message, discovered = self._discover(target, ctx)
        listeners = merge(target.listeners, discovered)
        over = len(listeners) - target.max_listeners
        with self._lock:
            said, self._over_cap[target.name] = self._over_cap.get(target.name, 0), max(0, over)
        if over > 0:
            listeners = listeners[:target.max_listeners]
            if over != said:  # once, and again when the number changes
                log.warning("target %s: listeners: %d named, %d beyond max_listeners = %d not checked "
                            "(fcmon_listeners_not_checked)", target.name, len(listeners) + over, over,
                            target.max_listeners)
        results, not_reached = self._check_within(target, listeners, ctx, setup_error, round_deadline)
        return ListenerRound(target.name, discovery, message, results, self._wall(),
                             over_cap=max(0, over), not_reached=not_reached)

    def _check_within(self, target: TargetConfig, listeners: Tuple[Listener, ...], ctx: Optional[ssl.SSLContext],
                      setup_error: Optional[str], deadline: float) -> Tuple[Tuple[ListenerResult, ...], int]:
        """Check `listeners` until the round's deadline, starting where the
        last round stopped; a listener not reached keeps its last result."""
        with self._lock:
            previous = self._results.get(target.name, {})
            start = self._rotation.get(target.name, 0) % len(listeners) if listeners else 0
        fresh: Dict[Listener, ListenerResult] = {}
        order = listeners[start:] + listeners[:start]
        checked = 0
        for listener in order:
            left = deadline - time.monotonic()
            if left < min(target.timeout, 0.05) or self._stopping.is_set():
                break
            fresh[listener] = self.check(target, listener, ctx, setup_error, min(target.timeout, left))
            checked += 1
        not_reached = len(listeners) - checked
        if not_reached:
            log.debug("target %s: listener round ended at its deadline: %d of %d listeners not reached "
                      "(first in the next round)", target.name, not_reached, len(listeners))
        results = tuple(fresh.get(x) or previous.get(x) for x in listeners)
        kept = tuple(r for r in results if r is not None)
        with self._lock:
            self._results[target.name] = {r.listener: r for r in kept}
            self._rotation[target.name] = (start + checked) % len(listeners) if listeners else 0
        return kept, not_reached

    # -- discovery

    @staticmethod
    def _fresh_for(target: TargetConfig) -> float:
        """How old a probe's listServices answer may be for a round to use it."""
        return target.interval + 2 * target.timeout + 5.0

    def expect(self, name: str, due: float) -> None:
        """The scheduler says when the target's next round is due (Unix time),
        so that a probe just before it can ask listServices for it."""
        with self._lock:
            self._next_due[name] = due

    def piggyback(self, target: TargetConfig, client: ApiClient) -> None:
        """Prober.after_probe: in the last probe interval before the target's
        next round (so that the probe, timeout and all, ends before the round
        starts), ask listServices on the probe's open connection: one more
        request instead of a connection and handshake of the round's own."""
        if not target.discovers_listeners:
            return
        wall = self._wall()
        with self._lock:
            due = self._next_due.get(target.name)
            if due is None or self._asked_for.get(target.name) == due:
                return
            if not due - target.interval - target.timeout - 2.0 <= wall <= due - target.timeout - 1.0:
                return
            self._asked_for[target.name] = due
        now = time.monotonic()
        plan = client.plan
        timeout = min(target.timeout, UNVERIFIED_FETCH_TIMEOUT)
        handle = self._prober.deadlines.at(now + timeout, client.cut)
        try:
            response = client.call(LIST_SERVICES, timeout)
            entry: Tuple[float, Optional[Tuple[Listener, ...]], str] = (
                now, tuple(parse_listeners(response.body, plan.port)), "")
        except DiscoveryUnsupported as exc:
            entry = (now, None, str(exc))
        except ProbeError:
            return  # the round asks on its own
        finally:
            self._prober.deadlines.cancel(handle)
        with self._lock:
            self._piggybacked[target.name] = entry

    def _discover(self, target: TargetConfig,
                  ctx: Optional[ssl.SSLContext]) -> Tuple[bool, str, Tuple[Listener, ...]]:
        with self._lock:
            known = self._discovered.get(target.name, ())
            piggybacked = self._piggybacked.pop(target.name, None)
        if piggybacked is not None and time.monotonic() - piggybacked[0] <= self._fresh_for(target):
            return self._discovered_now(target, piggybacked[1], piggybacked[2])
        plan = self._prober.plan(target)
        if plan.tls and ctx is None:
            message = "listServices not asked: the TLS context cannot be set up"
            self._say(target.name, "warning", message)
            return False, message, known
        client = ApiClient(plan, ctx if plan.tls else None, self._prober.resolver)
        deadline = time.monotonic() + target.timeout
        handle = self._prober.deadlines.at(deadline, client.cut)
        connected = False
        try:
            # Connect on its own first, classified as the probe classifies
            # its connect (connect_refused, tls_verify, ...): left to the
            # call, a refused connection read as bad_response.
            try:
                client.connect(max(0.001, deadline - time.monotonic()))
            except Exception as exc:
                err = classify_connect_error(exc, target.client_cert_file is not None)
                if time.monotonic() >= deadline and err.reason != "internal":
                    err = ProbeError("connect_timeout", "TCP connect and TLS handshake did not finish within the timeout")
                raise err from None
            connected = True
            response = client.call(LIST_SERVICES, max(0.001, deadline - time.monotonic()))
            found: Optional[Tuple[Listener, ...]] = tuple(parse_listeners(response.body, plan.port))
            unsupported = ""
        except DiscoveryUnsupported as exc:
            found, unsupported = None, str(exc)
        except ProbeError as exc:
            reason = "timeout" if connected and time.monotonic() >= deadline else exc.reason
            # The server could not be asked: keep what it said last, so its
            # listeners show as down rather than vanish.
            message = f"listServices failed: {reason}: {exc.message}"
            # A server that cannot be reached is the probe's failure, logged
            # by the probe with the same reason: not a second warning here.
            self._say(target.name, "warning" if connected else "debug", message)
            return False, message, known
        finally:
            self._prober.deadlines.cancel(handle)
            client.close()
        return self._discovered_now(target, found, unsupported)

    def _discovered_now(self, target: TargetConfig, found: Optional[Tuple[Listener, ...]],
                        unsupported: str) -> Tuple[bool, str, Tuple[Listener, ...]]:
        """An answer to listServices: the listeners it named (`found`), or
        none at all (`unsupported` says why)."""
        with self._lock:
            if found is None:
                self._discovered.pop(target.name, None)
            else:
                self._discovered[target.name] = found
        if found is None:
            # Not a failure of the target: an older server, or one that
            # hides the action. The configured list is still checked.
            message = f"{unsupported}; checking only the listeners configured"
            self._say(target.name, "info", message)
            return False, message, ()
        shown = ", ".join(f"{x.name}:{x.port}" for x in found[:NAMED_IN_LOG])
        if len(found) > NAMED_IN_LOG:
            shown += f" and {len(found) - NAMED_IN_LOG} more"
        self._say(target.name, "info", "listServices named " + (shown if found else "no other TLS listener"))
        return True, "", found

    def _say(self, target: str, level: str, message: str) -> None:
        """Log a discovery state once, when it changes."""
        with self._lock:
            if self._said.get(target) == message:
                return
            self._said[target] = message
        getattr(log, level)("target %s: listeners: %s", target, message)

    # -- one listener

    def check(self, target: TargetConfig, listener: Listener, ctx: Optional[ssl.SSLContext],
              setup_error: Optional[str] = None, timeout: Optional[float] = None) -> ListenerResult:
        timeout = target.timeout if timeout is None else timeout
        started = self._wall()
        t0 = time.monotonic()
        host = self._prober.plan(target).host
        peer = PeerInfo((), None, None)
        reason: Optional[str] = None
        message = ""
        if ctx is None:
            reason, message = "tls_handshake", setup_error or "no TLS context"
        else:
            deadlines = self._prober.deadlines
            try:
                peer, refused = handshake(host, listener.port, ctx, timeout, deadlines.at,
                                          deadlines.cancel, target.client_cert_file is not None,
                                          self._prober.resolver)
                if refused is not None:
                    reason, message = refused.reason, refused.message
            except ProbeError as exc:
                reason, message = exc.reason, exc.message
            if reason == "tls_verify":
                left = t0 + timeout - time.monotonic()
                try:
                    peer = fetch_peer_unverified(host, listener.port, min(left, UNVERIFIED_FETCH_TIMEOUT),
                                                 self._prober.resolver, ctx.get_ca_certs(binary_form=True))
                except Exception as exc:  # reporting only: the failure is already named
                    log.debug("%s: %s: no unverified certificate: %s", target.name, listener.name, exc)
        duration = time.monotonic() - t0
        if reason is not None:
            log.warning("target %s: listener %s (port %d) failed: %s (%s)",
                        target.name, listener.name, listener.port, reason, message)
        return ListenerResult(listener, started + duration, duration, reason, message,
                              dedupe(peer.certs), peer.tls_version)
