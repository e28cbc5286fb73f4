"""What one probe did, for people: the debug probe's log and the per-probe log line.

Built after the fact from the `ProbeResult` (and the target's config for
the request bodies), never traced through the client while it runs: the
data flows one way, a debug probe is an ordinary probe (so /probe's single
flight covers it), and nothing here can slow or break a probe.

Secrets: the request bodies are rebuilt here with the password and the
authToken replaced by `<redacted>`; server messages in the result were
redacted by the probe; and the whole text is run through the redaction
once more with the target's password, so an echo cannot slip out.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import List, Optional

from .client import RequestPlan
from .codes import describe
from ..config import TargetConfig
from .levels import days_left, days_text
from .census import session_description
from .run import redact
from .result import CallResult, CertInfo, ProbeResult

REDACTED = "<redacted>"

_CERT_WHAT = {
    "server": "server certificate",
    "chain": "chain certificate (sent by the server)",
    "client": "client certificate (client_cert_file, presented when the server asks for one)",
    "ca": "CA certificate (ca_file)",
}


def request_body(target: TargetConfig, action: str, instance_id: Optional[str] = None) -> str:
    """The JSON body fcmon sends for `action`, password and authToken redacted."""
    plan = RequestPlan(target, session_description(instance_id))
    if action == "createSession":
        body = json.loads(plan.create_session())
        params = body.get("params", {})
        if "password" in params:
            params["password"] = REDACTED
        return json.dumps(body, separators=(",", ":"))
    if action == "listDatabases":
        return plan.list_databases(REDACTED).decode()
    return plan.delete_session(REDACTED).decode()


def _stamp(when: float, ms: bool = True) -> str:
    t = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    if not ms:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _seconds(value: float) -> str:
    return f"{value:.6f} s"


def _days(cert: CertInfo, now: float) -> str:
    # whole days for people, as the page and `check` (fcmon/probe/levels.py);
    # the exact moment is the "not after" beside it
    return days_text(days_left(cert, now))


class _Log:
    def __init__(self, started: float):
        self.started = started
        self.lines: List[str] = []

    def at(self, offset: Optional[float], text: str) -> None:
        offset = max(0.0, offset or 0.0)
        self.lines.append(f"{_stamp(self.started + offset)} +{offset:.6f}s {text}")


def render(result: ProbeResult, target: TargetConfig, instance_id: Optional[str] = None) -> str:
    """The timestamped log of one probe: each line the wall time, the offset
    from the probe's start, and what happened."""
    log = _Log(result.started)
    failure = result.failure
    log.at(0.0, f"probe of target {target.name!r} started: endpoint {target.endpoint}, "
                f"timeout {target.timeout:g} s")
    steps = dict(result.steps)
    now = result.ended

    connect_at = result.connect_started
    if "connect" in steps:
        host = f"{target.endpoint.split('//', 1)[-1].split('/', 1)[0]}"
        log.at(connect_at, f"connect: TCP + TLS to {host}")
        connect_at = (connect_at or 0.0) + steps["connect"]
        if failure is not None and failure.stage == "connect" and not result.calls:
            log.at(connect_at, f"connect: failed after {_seconds(steps['connect'])}: "
                               f"{failure.reason} ({failure.message})")
        else:
            log.at(connect_at, f"connect: connected to {result.peer_address or '?'} "
                               f"(TCP + TLS in {_seconds(steps['connect'])})")
    elif failure is not None and failure.stage == "connect":
        log.at(0.0, f"connect: not attempted: {failure.reason} ({failure.message})")
    if result.tls_version:
        log.at(connect_at, f"TLS: version {result.tls_version}, cipher {result.tls_cipher or '?'}")
    if failure is not None and failure.reason == "tls_verify":
        log.at(connect_at, "TLS: the server certificate below was read by a second, unverified "
                           "handshake, for reporting only (no client certificate, no request sent)")
    for cert in result.certs:
        log.at(connect_at, f"{_CERT_WHAT.get(cert.role, cert.role)}: subject {cert.subject}; "
                           f"issuer {cert.issuer or '?'}; serial {cert.serial}; "
                           f"not after {_stamp(cert.not_after, ms=False)}; {_days(cert, now)}")
    if target.endpoint.startswith("https:") and not any(c.role == "client" for c in result.certs):
        log.at(connect_at, "client certificate: none configured")

    for call in result.calls:
        if call.action == "deleteSession" and result.delete_reconnected:
            log.at(call.started, "deleteSession: over a new connection (the first one was cut or "
                                 "is in an unknown state)")
        _call(log, call, target, result, instance_id)
    if result.delete_reconnected and not any(c.action == "deleteSession" for c in result.calls):
        log.at(result.duration, "deleteSession: could not connect again to delete the session")

    if failure is None:
        log.at(result.duration, f"probe ended: up in {_seconds(result.duration)}, "
                                f"{result.databases} databases")
    else:
        log.at(result.duration, f"probe ended: FAILED at {failure.stage}: {failure.reason} "
                                f"({failure.message}) in {_seconds(result.duration)}")
    _census(log, result)
    if result.session_gone:
        log.at(result.duration, "deleteSession: the session was already gone on the server "
                                "(errorCode 12031): not a leak")
    if result.session_leaked:
        log.at(result.duration, "session NOT deleted: it stays on the server until its idle timeout "
                                f"({target.session_idle_timeout} s)")
    text = "\n".join(log.lines) + "\n"
    return redact(text, [target.password or ""])


def _census(log: _Log, result: ProbeResult) -> None:
    """What the session census saw (fcmon/probe/census.py): counts, never a token."""
    c = result.census
    if c is not None:
        idle = "" if c.oldest_idle is None else f", the longest idle {c.oldest_idle:.0f} s"
        users = "".join(f", {name}: {n}" for name, n in c.by_user)
        log.at(result.duration, f"session census (describeSessions): {c.sessions} of {c.limit} sessions of "
                                f"the account, {c.fcmon} fcmon's{idle}; {c.reaped} orphan(s) of this "
                                f"instance deleted{users}")
    elif result.census_unavailable is not None:
        log.at(result.duration, f"session census: not available: {result.census_unavailable}")


def _call(log: _Log, call: CallResult, target: TargetConfig, result: ProbeResult,
          instance_id: Optional[str] = None) -> None:
    at = call.started
    name = call.action
    log.at(at, f"{name}: request POST {target.endpoint} {request_body(target, name, instance_id)}")
    end = (at or 0.0) + call.duration
    parts = [f"HTTP {call.http_status}" if call.http_status is not None else "no HTTP response"]
    if call.error_code is not None:
        parts.append(f"errorCode {describe(call.error_code)}")
    else:
        parts.append("no errorCode")
    if call.error_message:
        parts.append(f"errorMessage {json.dumps(call.error_message)}")
    if name == "listDatabases" and call.error_code == 0 and result.databases is not None:
        names = ", ".join(result.database_names)
        parts.append(f"{result.databases} databases" + (f" ({names})" if names else ""))
    timing = "on the wire" if call.http_status is not None else "until it failed"
    parts.append(f"{_seconds(call.duration)} {timing}")
    log.at(end, f"{name}: " + ", ".join(parts))
    if name == "createSession" and result.server is not None:
        s = result.server
        log.at(end, "server: " + ", ".join([
            f"serverVersion {json.dumps(s.version) if s.version is not None else '(not sent)'}",
            f"hostname {json.dumps(s.hostname) if s.hostname is not None else '(not sent)'}",
            f"hostUuid {json.dumps(s.uuid) if s.uuid is not None else '(not sent)'}",
        ]))


def summary(result: ProbeResult) -> str:
    """One line: the outcome and the step times (the `log_level = debug` line)."""
    steps = ", ".join(f"{step} {seconds:.6f}s" for step, seconds in result.steps) or "no steps"
    f = result.failure
    if f is None:
        head = f"probe up in {result.duration:.6f}s, {result.databases} databases"
    else:
        head = f"probe failed at {f.stage}: {f.reason} in {result.duration:.6f}s"
    codes = ", ".join(
        f"{c.action} {describe(c.error_code)}" for c in result.calls if c.error_code not in (None, 0)
    )
    line = f"{head} ({steps})"
    if codes:
        line += f"; errorCode {codes}"
    if result.session_leaked:
        line += "; session not deleted"
    return line
