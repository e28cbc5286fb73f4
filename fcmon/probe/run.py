"""One probe: connect -> createSession -> listDatabases -> deleteSession (finally).

The probe knows nothing of Prometheus: it returns a `ProbeResult`. It never
raises; every failure becomes a `Failure` with a stage and a reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .census import (
    CensusUnavailable,
    Orphan,
    describe_sessions_request,
    list_sessions_request,
    parse_census,
    parse_user_counts,
    session_description,
)
from .certs import CertFileError, FileCertCache, dedupe
from .client import (
    ApiClient,
    ApiResponse,
    PeerInfo,
    ProbeError,
    RequestPlan,
    TLSContextCache,
    classify_connect_error,
    fetch_peer_unverified,
    internal_error,
)
from .codes import describe
from ..config import TargetConfig
from .deadlines import DeadlineWatcher
from .resolver import DEFAULT as DEFAULT_RESOLVER
from .resolver import Resolver
from .result import ERROR_MESSAGE_MAX, CallResult, Failure, ProbeResult, ServerInfo, SessionCensus

log = logging.getLogger(__name__)

# deleteSession may run past `timeout` by this much, so that a probe that
# timed out still frees its session: the contract allows timeout + 1 s.
CLEANUP_GRACE = 0.9
# The reporting-only handshake after a verification failure gets at most this.
UNVERIFIED_FETCH_TIMEOUT = 2.0
# The session census and the reaping (describeSessions, deleteSession of
# orphans) run on the probe's connection and must end by this share of the
# timeout: the rest is kept for the probe's own deleteSession.
EXTRAS_SHARE = 0.75
# An orphan of this instance is a session older than the longest possible
# probe: timeout + CLEANUP_GRACE, plus this for the server's one-second
# timestamps and the time between createSession and its stamp.
REAP_MARGIN = 2.0
# At most this many orphans deleted per probe (one kill -9 leaves one).
REAP_MAX_PER_PROBE = 5
# createSession failures that prove no session was created.
_NO_SESSION = ("api_error", "client_cert_rejected")
# deleteSession's answer for a token that matches no session (older
# releases as the errorCode, newer ones as a warning with errorCode 0): the
# session is already gone, which is what deleteSession was for.
SESSION_GONE_CODE = 12031
# After these the connection that carried the failed call cannot be trusted
# to carry deleteSession.
_BROKEN_CONNECTION = ("timeout", "bad_response", "tls_handshake", "client_cert_rejected", "http_status",
                      "internal")


class _Deadline:
    """Cuts a client's sockets at a monotonic instant."""

    def __init__(self, at: float, watcher: DeadlineWatcher):
        self.at = at
        self.fired = False
        self._watcher = watcher

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @contextmanager
    def watch(self, client: ApiClient) -> Iterator[None]:
        def fire() -> None:
            self.fired = True
            client.cut()

        # Every socket timeout of the client ends at the deadline too: the
        # cut covers reads and writes, the timeouts the TLS handshake.
        client.set_deadline(self.at)
        handle = self._watcher.at(self.at, fire)
        try:
            yield
        finally:
            self._watcher.cancel(handle)


def _says_gone(response: ApiResponse) -> bool:
    """errorCode 12031, or errorCode 0 with a 12031 warning in
    debugInfo.warnings, in either documented shape ({code, message} or
    {warningCode, warningMessage})."""
    if response.error_code == SESSION_GONE_CODE:
        return True
    if response.error_code != 0:
        return False
    debug = response.body.get("debugInfo")
    warnings = debug.get("warnings") if isinstance(debug, dict) else None
    if not isinstance(warnings, list):
        return False
    for w in warnings[:100]:
        if isinstance(w, dict):
            code = w.get("code", w.get("warningCode"))
            if code == SESSION_GONE_CODE and not isinstance(code, bool):
                return True
    return False


def redact(text: str, secrets: List[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


class Prober:
    """Runs probes; holds what is worth keeping between probes of a target
    (SSL contexts, parsed certificate files, request plans)."""

    def __init__(
        self,
        contexts: Optional[TLSContextCache] = None,
        file_certs: Optional[FileCertCache] = None,
        wall_clock: Callable[[], float] = time.time,
        deadlines: Optional[DeadlineWatcher] = None,
        resolver: Optional[Resolver] = None,
        instance_id: Optional[str] = None,
    ):
        self.contexts = contexts or TLSContextCache()
        self.file_certs = file_certs or FileCertCache()
        self.deadlines = deadlines or DeadlineWatcher()
        # name resolution within each probe's deadline (bounded threads)
        self.resolver = resolver or DEFAULT_RESOLVER
        self._wall = wall_clock
        self._plans: Dict[str, Tuple[TargetConfig, RequestPlan]] = {}
        self._plans_lock = threading.Lock()
        # fcmon/service/instance.py: named in every session's description; without
        # one, sessions are still counted but none is ever reaped.
        self.instance_id = instance_id
        # target -> why its last census was not available (logged once)
        self._census_noted: Dict[str, Optional[str]] = {}
        # Called with (target, client) on the open connection of each probe
        # that succeeded, after its timing ended: see _Probe._after.
        self.after_probe: Optional[Callable[[TargetConfig, ApiClient], None]] = None
        # Targets whose "session already gone" was logged: once per target.
        self._gone_logged: set = set()
        self._gone_lock = threading.Lock()

    def first_gone(self, target: str) -> bool:
        """True the first time a target's session is found already gone."""
        with self._gone_lock:
            if target in self._gone_logged:
                return False
            self._gone_logged.add(target)
            return True

    def set_instance_id(self, instance_id: Optional[str]) -> None:
        """A new id (after a reload): request plans are rebuilt with it."""
        if instance_id == self.instance_id:
            return
        with self._plans_lock:
            self.instance_id = instance_id
            self._plans.clear()

    def note_census(self, target: str, unavailable: Optional[str], what: str = "session census",
                    series: str = "fcmon_account_sessions") -> None:
        """Log a target's census (or per-user counts) becoming unavailable
        (once, with why) or available again."""
        key = f"{target}\0{what}"
        before = self._census_noted.get(key)
        if unavailable == before:
            return
        self._census_noted[key] = unavailable
        if unavailable is not None:
            log.info("%s: %s not available: %s (no %s series; the probe is not affected)",
                     target, what, unavailable, series)
        elif before is not None:
            log.info("%s: %s available again", target, what)

    def retain(self, targets: Sequence[TargetConfig]) -> None:
        self.contexts.retain(targets)
        keep = {t.name for t in targets}
        with self._plans_lock:
            for name in list(self._plans):
                if name not in keep:
                    del self._plans[name]
            for key in list(self._census_noted):
                if key.split("\0", 1)[0] not in keep:
                    del self._census_noted[key]

    def plan(self, target: TargetConfig) -> RequestPlan:
        """The target's RequestPlan, built once and rebuilt when its config changes."""
        entry = self._plans.get(target.name)
        if entry is not None and (entry[0] is target or entry[0] == target):
            return entry[1]
        plan = RequestPlan(target, session_description(self.instance_id))
        with self._plans_lock:
            self._plans[target.name] = (target, plan)
        return plan

    def probe(self, target: TargetConfig, deadline: Optional[float] = None) -> ProbeResult:
        """Probe `target`; it ends by `deadline` (monotonic; default: its
        timeout from now), deleteSession by CLEANUP_GRACE later. A caller
        that waited for a slot passes the deadline its wait counted against."""
        probe: Optional[_Probe] = None
        try:
            probe = _Probe(self, target, deadline)
            return probe.run()
        except Exception as exc:  # the boundary: a bug must not kill the scheduler
            stage = probe.stage if probe is not None else "connect"
            secrets = probe.secrets if probe is not None else [target.password or ""]
            err = internal_error(exc) or ProbeError("internal", f"internal error: {type(exc).__name__}")
            _log_internal(target.name, stage, err, exc, secrets)
            now = self._wall()
            return ProbeResult(
                target=target.name,
                started=now,
                ended=now,
                duration=0.0,
                failure=Failure(stage, "internal", redact(err.message, secrets)),
                session_leaked=probe is not None and probe.token is not None,
            )


def _log_internal(target: str, stage: str, err: ProbeError, exc: BaseException, secrets: List[str]) -> None:
    """fcmon's own failure, at error level: the reason, and for a bug the
    traceback, both with every secret of the probe redacted."""
    if err.message.startswith("internal error"):
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("%s: %s at %s (a bug in fcmon)\n%s", target, err.message, stage,
                  redact(detail, secrets).rstrip())
    else:
        log.error("%s: %s at %s", target, redact(err.message, secrets), stage)


class _Probe:
    def __init__(self, prober: Prober, target: TargetConfig, deadline: Optional[float] = None):
        self.prober = prober
        self.target = target
        self.deadline = deadline
        self.secrets: List[str] = [target.password or ""]
        self.steps: List[Tuple[str, float]] = []
        self.calls: List[CallResult] = []
        self.failure: Optional[Failure] = None
        self.peer = PeerInfo((), None, None)
        self.token: Optional[str] = None
        self.databases: Optional[List[Any]] = None
        self.leaked = False
        self.server: Optional[ServerInfo] = None
        self.t0 = time.monotonic()
        self.connect_started: Optional[float] = None
        self.delete_reconnected = False
        self.session_gone = False
        self.census: Optional[SessionCensus] = None
        self.census_unavailable: Optional[str] = None
        # the census or a reap left the connection in an unknown state
        self.extras_broke = False
        # createSession's own timestamp of the session (the census's clock)
        self.created_stamp: object = None
        # the step in progress, where an unexpected failure is reported
        self.stage = "connect"

    def fail(self, stage: str, reason: str, message: str) -> None:
        if self.failure is None:
            self.failure = Failure(stage, reason, redact(message, self.secrets))

    def internal(self, stage: str, exc: BaseException) -> None:
        """An exception nobody expected: fcmon's own failure, never the server's."""
        err = internal_error(exc) or ProbeError("internal", f"internal error: {type(exc).__name__}")
        _log_internal(self.target.name, stage, err, exc, self.secrets)
        self.fail(stage, "internal", err.message)

    def run(self) -> ProbeResult:
        target = self.target
        started = self.prober._wall()
        t0 = self.t0 = time.monotonic()
        end = t0 + target.timeout if self.deadline is None else min(self.deadline, t0 + target.timeout)
        main = _Deadline(end, self.prober.deadlines)
        client: Optional[ApiClient] = None
        try:
            client = self._client()
            if client is not None:
                with main.watch(client):
                    self._main(client, main)
        except Exception as exc:
            self.internal(self.stage, exc)
        finally:
            try:
                if self.token is not None:
                    self.stage = "delete_session"
                    self._delete(client, main, _Deadline(end + CLEANUP_GRACE, self.prober.deadlines))
            except Exception as exc:
                self.leaked = True
                self.internal("delete_session", exc)
            duration = time.monotonic() - t0
            if client is not None:
                try:
                    self._after(client)
                finally:
                    client.close()
        certs = dedupe(
            self.peer.certs
            + self.prober.file_certs.for_files(target.ca_file, target.client_cert_file)
        )
        return ProbeResult(
            target=target.name,
            started=started,
            ended=started + duration,
            duration=duration,
            failure=self.failure,
            steps=tuple(self.steps),
            calls=tuple(self.calls),
            databases=len(self.databases) if self.databases is not None else None,
            certs=certs,
            tls_version=self.peer.tls_version,
            tls_cipher=self.peer.tls_cipher,
            session_leaked=self.leaked,
            server=self.server,
            peer_address=self.peer.address,
            connect_started=self.connect_started,
            delete_reconnected=self.delete_reconnected,
            session_gone=self.session_gone,
            census=self.census,
            census_unavailable=self.census_unavailable,
            database_names=tuple(
                str(d.get("databaseName")) if isinstance(d, dict) else str(d)
                for d in (self.databases or [])
            ),
        )

    def _after(self, client: ApiClient) -> None:
        """The Prober's `after_probe` hook, on the connection of a probe that
        succeeded, after its timing ended and its session was deleted (the
        listener check asks listServices here when due: no second handshake)."""
        hook = self.prober.after_probe
        if hook is None or self.failure is not None or self.leaked:
            return
        try:
            hook(self.target, client)
        except Exception:  # an extra: never the probe's failure
            log.debug("%s: after-probe hook failed", self.target.name, exc_info=True)

    def _client(self) -> Optional[ApiClient]:
        target = self.target
        ctx = None
        if target.endpoint.startswith("https:"):
            try:
                ctx = self.prober.contexts.get(target)
            except CertFileError as exc:
                self.fail("connect", "tls_handshake", f"cannot set up TLS: {exc}")
                return None
        return ApiClient(self.prober.plan(target), ctx, self.prober.resolver)

    def _main(self, client: ApiClient, deadline: _Deadline) -> None:
        if not self._connect(client, deadline):
            return
        created = self._call(client, deadline, "create_session", "createSession", client.plan.create_session())
        if created is None:
            failure = self.failure
            if (client.wire.started is not None and failure is not None
                    and failure.reason not in _NO_SESSION):
                # createSession was written and no usable answer came back:
                # the server may have created a session that fcmon cannot
                # address. Counted, as a deleteSession whose answer was lost.
                self.leaked = True
            return
        result = created.body.get("result")
        # A server could echo the password in these; they become labels.
        server = ServerInfo.from_result(result)
        self.server = ServerInfo(*(redact(v, self.secrets) if v is not None else None
                                   for v in (server.version, server.hostname, server.uuid)))
        token = result.get("authToken") if isinstance(result, dict) else None
        if not token:
            token = created.body.get("authToken")
        if not isinstance(token, str) or not token:
            # The server says it created a session we cannot address: it stays
            # open until its idle timeout.
            self.leaked = True
            self.fail("create_session", "bad_response", "createSession succeeded without an authToken")
            return
        self.token = token
        self.secrets.append(token)
        if isinstance(result, dict):
            self.created_stamp = result.get("sessionLastAccessedTimestamp") or result.get("sessionStartTimestamp")
        listed = self._call(client, deadline, "list_databases", "listDatabases", client.plan.list_databases(token))
        if listed is None:
            return
        result = listed.body.get("result")
        data = result.get("data") if isinstance(result, dict) else None
        if not isinstance(data, list):
            self.fail("list_databases", "bad_response", "listDatabases result has no data list")
            return
        self.databases = data
        if self.target.session_census:
            self._census(client, deadline)

    def _census(self, client: ApiClient, main: _Deadline) -> None:
        """describeSessions on the probe's connection, then delete this
        instance's orphans it shows; never the probe's failure. Both end by
        EXTRAS_SHARE of the timeout, leaving the rest to deleteSession."""
        target = self.target
        # (the probe's own deadline may be shorter than its timeout: it waited for a slot)
        extras = _Deadline(self.t0 + (main.at - self.t0) * EXTRAS_SHARE, self.prober.deadlines)
        try:
            if extras.remaining() <= 0:
                raise CensusUnavailable("no time left for describeSessions within the timeout")
            with extras.watch(client):
                census, orphans = self._describe(client, extras)
                reaped = self._reap(client, extras, orphans)
                by_user = self._count_users(client, extras) if target.session_census_usernames else ()
            self.census = dataclasses.replace(census, reaped=reaped, by_user=by_user)
        except CensusUnavailable as exc:
            self.census_unavailable = str(exc)
        except Exception as exc:  # a bug in the census: logged, never the probe's failure
            err = internal_error(exc) or ProbeError("internal", f"internal error: {type(exc).__name__}")
            _log_internal(target.name, "session census", err, exc, self.secrets)
            self.census_unavailable = err.message
            self.extras_broke = True
        finally:
            client.set_deadline(main.at)
            if extras.fired:
                self.extras_broke = True
        self.prober.note_census(target.name, self.census_unavailable)

    def _describe(self, client: ApiClient, extras: _Deadline) -> Tuple[SessionCensus, List[Orphan]]:
        assert self.token is not None
        try:
            response = client.call(json.dumps(describe_sessions_request(self.token)).encode(), extras.remaining())
        except ProbeError as exc:
            self.extras_broke = True
            raise CensusUnavailable("describeSessions: " + ("no answer in time" if extras.fired else exc.reason))
        target = self.target
        reap_after = target.timeout + CLEANUP_GRACE + REAP_MARGIN
        return parse_census(response.error_code, response.body, self.token, self.prober.instance_id,
                            target.account_sessions_limit, self.created_stamp, reap_after)

    def _count_users(self, client: ApiClient, extras: _Deadline) -> Tuple[Tuple[str, int], ...]:
        """listSessions for the configured user names (an administrator sees
        all users' sessions); not available is logged once, never a failure."""
        assert self.token is not None
        names = self.target.session_census_usernames
        why: Optional[str] = None
        counts: Tuple[Tuple[str, int], ...] = ()
        if extras.remaining() <= 0:
            why = "no time left for listSessions within the timeout"
        else:
            try:
                body = json.dumps(list_sessions_request(self.token, names)).encode()
                response = client.call(body, extras.remaining())
                counts = parse_user_counts(response.error_code, response.body, names)
            except ProbeError as exc:
                self.extras_broke = True
                why = "listSessions: " + ("no answer in time" if extras.fired else exc.reason)
            except CensusUnavailable as exc:
                why = str(exc)
        self.prober.note_census(self.target.name, why, "per-user session counts", "fcmon_account_sessions_by_user")
        return counts

    def _reap(self, client: ApiClient, extras: _Deadline, orphans: List[Orphan]) -> int:
        """deleteSession of this instance's orphans, oldest first, while time is left."""
        reaped = 0
        for orphan in orphans[:REAP_MAX_PER_PROBE]:
            self.secrets.append(orphan.token)
            if extras.remaining() <= 0:
                break
            try:
                response = client.call(client.plan.delete_session(orphan.token), extras.remaining())
            except ProbeError:
                self.extras_broke = True
                break
            if not _says_gone(response) and response.error_code == 0:
                reaped += 1
        if reaped:
            log.info("%s: deleted %d orphaned session(s) of this fcmon instance (oldest %.0f s old)",
                     self.target.name, reaped, orphans[0].age)
        return reaped

    def _connect(self, client: ApiClient, deadline: _Deadline) -> bool:
        t = time.monotonic()
        self.connect_started = t - self.t0
        elapsed: Optional[float] = None
        try:
            self.peer = client.connect(deadline.remaining())
            # TCP connect + TLS handshake as timed inside the connection.
            elapsed = client.connect_seconds
            return True
        except Exception as exc:
            err = classify_connect_error(exc, self.target.client_cert_file is not None)
            if err.reason == "internal":
                self.internal("connect", exc)
                return False
            if deadline.fired and err.reason != "dns":
                err = ProbeError("connect_timeout", "TCP connect and TLS handshake did not finish within the timeout")
            message = err.message
            if err.reason == "tls_verify":
                self._fetch_unverified(client, deadline)
                message += self._issuer_note(message)
            self.fail("connect", err.reason, message)
            return False
        finally:
            self.steps.append(("connect", elapsed if elapsed is not None else time.monotonic() - t))

    def _issuer_note(self, message: str) -> str:
        """For a server certificate from a CA that ca_file does not hold: who
        issued what the server presented, and what ca_file holds, so the
        operator sees the mismatch in the message itself."""
        lowered = message.lower()
        if not any(w in lowered for w in ("issuer", "self-signed", "self signed")):
            return ""  # expired, wrong host name...: the message says it
        peer = self.peer.certs if self.peer is not None else ()
        if not peer:
            return ""
        leaf = peer[0]
        held = [c.subject for c in self.prober.file_certs.infos(self.target.ca_file, "ca")]
        holds = "; ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        what = f"ca_file holds {holds}" if held else "no ca_file (the system's CAs)"
        return f" (the server presented {leaf.subject}, issued by {leaf.issuer or 'an unnamed issuer'}; {what})"

    def _fetch_unverified(self, client: ApiClient, deadline: _Deadline) -> None:
        try:
            ctx = client.ssl_context
            anchors = ctx.get_ca_certs(binary_form=True) if ctx is not None else []
            self.peer = fetch_peer_unverified(
                client.host, client.port, min(deadline.remaining(), UNVERIFIED_FETCH_TIMEOUT), self.prober.resolver,
                anchors,
            )
        except Exception as exc:  # reporting only: the failure is already named
            log.debug("%s: could not fetch the unverified server certificate: %s", self.target.name, exc)

    def _call(
        self, client: ApiClient, deadline: _Deadline, step: str, action: str, body: bytes
    ) -> Optional[ApiResponse]:
        """One API call. Its step time is the time on the wire (first byte of
        the request written to last byte of the response read, taken in the
        connection) when a whole response arrived, else the wall time until
        the call failed."""
        t = time.monotonic()
        self.stage = step
        client.last_wire = None
        response: Optional[ApiResponse] = None
        status: Optional[int] = None
        error_message: Optional[str] = None
        try:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise ProbeError("timeout", "probe timeout reached before this step")
            response = client.call(body, remaining)
        except ProbeError as exc:
            reason, message = exc.reason, exc.message
            status = exc.http_status
            if deadline.fired and reason != "internal":
                reason, message = "timeout", "no complete response within the timeout"
            if reason == "internal":
                _log_internal(self.target.name, step, exc, exc, self.secrets)
            error_message = message
            if reason == "client_cert_rejected":
                self.fail("connect", reason, message)
            else:
                self.fail(step, reason, f"{action}: {message}")
        except Exception as exc:
            self.internal(step, exc)
        finally:
            elapsed = time.monotonic() - t
            if client.last_wire is not None:
                elapsed = client.last_wire
            self.steps.append((step, elapsed))
            if response is not None:
                status = response.status
                server_message = response.body.get("errorMessage")
                if isinstance(server_message, str) and server_message:
                    error_message = server_message
            self.calls.append(
                CallResult(
                    action,
                    elapsed,
                    response.error_code if response is not None else None,
                    http_status=status,
                    error_message=self._clean(error_message),
                    started=t - self.t0,
                )
            )
        if response is None:
            return None
        if action == "deleteSession" and _says_gone(response):
            self._gone()
            return response
        if response.error_code != 0:
            message = self._clean(error_message)
            self.fail(
                step,
                "api_error",
                f"{action}: errorCode {describe(response.error_code)}" + (f": {message}" if message else ""),
            )
            return None
        return response

    def _gone(self) -> None:
        """deleteSession found no session for the token: something else ended
        it (an idle timeout, a restart, an administrator). Not a leak, not a
        failure; worth saying once per target."""
        self.session_gone = True
        if self.prober.first_gone(self.target.name):
            log.warning("target %s: deleteSession found the session already gone (errorCode %d): "
                        "the server ended it before fcmon did (idle timeout, restart or an administrator); "
                        "logged once per target", self.target.name, SESSION_GONE_CODE)

    def _clean(self, message: Optional[str]) -> Optional[str]:
        """A message fit for logs and pages: secrets redacted, then capped
        (redacting first, so a cut cannot leave half a secret behind)."""
        if not message:
            return None
        text = redact(message, self.secrets)
        if len(text) > ERROR_MESSAGE_MAX:
            text = text[: ERROR_MESSAGE_MAX - 3] + "..."
        return text

    def _delete(self, client: Optional[ApiClient], main: _Deadline, deadline: _Deadline) -> None:
        assert self.token is not None and client is not None
        if (main.fired or self.extras_broke
                or self.failure is not None and self.failure.reason in _BROKEN_CONNECTION):
            # The old connection is cut or in an unknown state: use a new one.
            self.delete_reconnected = True
            fresh = client.fresh()
            try:
                with deadline.watch(fresh):
                    try:
                        fresh.connect(deadline.remaining())
                    except Exception as exc:
                        err = classify_connect_error(exc, self.target.client_cert_file is not None)
                        self.leaked = True
                        if err.reason == "internal":
                            self.internal("delete_session", exc)
                        elif deadline.fired:
                            self.fail("delete_session", "timeout",
                                      "deleteSession: no new connection within the grace time")
                        else:
                            self.fail("delete_session", err.reason, f"deleteSession: {err.message}")
                        return
                    self._delete_on(fresh, deadline)
            finally:
                fresh.close()
        else:
            with deadline.watch(client):
                self._delete_on(client, deadline)

    def _delete_on(self, client: ApiClient, deadline: _Deadline) -> None:
        assert self.token is not None
        response = self._call(
            client, deadline, "delete_session", "deleteSession", client.plan.delete_session(self.token)
        )
        if response is None:
            self.leaked = True
