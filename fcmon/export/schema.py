"""The JSON document of `/api/v1/status` and `fcmon check --format json`: one schema.

Both outputs describe targets with the same objects, built here and
nowhere else, versioned by `"schema": 1` at the top (a change that removes
or renames a field raises it; new fields do not). The README's "JSON
schema" section documents every field once. What only one side knows is
null on the other (`since` and `debug_probe` in `check`, which keeps no
history and serves no page).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

from .. import runbook
from ..probe.codes import describe
from ..probe.levels import DEFAULT_THRESHOLDS, Thresholds, cert_level, days_left, judge, rank
from ..probe.listeners import ListenerResult, ListenerRound
from ..probe.result import CallResult, CertInfo, ProbeResult, ServerInfo, SessionCensus

SCHEMA = 1


def debug_probe_url(target: str) -> str:
    return "/probe?target=" + quote(target, safe="") + "&debug=true"


def cert_doc(c: CertInfo, now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS,
             listener: bool = False, base: str = runbook.RUNBOOK_URL) -> Dict[str, Any]:
    days = days_left(c, now)
    level = cert_level(days, thresholds)
    alert = runbook.cert_alert(c.role, level, listener)
    return {"role": c.role, "subject": c.subject, "issuer": c.issuer or None, "serial": c.serial,
            "not_after": c.not_after, "days_left": days, "level": level, "alert": alert,
            "runbook": None if alert is None else runbook.alert_url(alert, base)}


def failure_doc(stage: Optional[str], reason: str, message: str, base: str = runbook.RUNBOOK_URL) -> Dict[str, Any]:
    return {"stage": stage, "reason": reason, "message": message,
            "first_check": runbook.first_check(reason), "runbook": runbook.reason_url(reason, base)}


def _call_doc(call: CallResult) -> Dict[str, Any]:
    return {"action": call.action, "seconds": call.duration, "http_status": call.http_status,
            "error_code": call.error_code, "error_message": call.error_message,
            "error_meaning": None if call.error_code in (None, 0) else describe(call.error_code)}  # type: ignore[arg-type]


def server_doc(server: Optional[ServerInfo]) -> Optional[Dict[str, Any]]:
    if server is None:
        return None
    return {"version": server.version, "hostname": server.hostname, "uuid": server.uuid}


def probe_doc(r: ProbeResult, now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS,
              base: str = runbook.RUNBOOK_URL) -> Dict[str, Any]:
    f = r.failure
    return {
        "ended": r.ended,
        "age_seconds": max(0.0, now - r.ended),
        "duration_seconds": r.duration,
        "failure": None if f is None else failure_doc(f.stage, f.reason, f.message, base),
        "steps": [{"step": step, "seconds": sec} for step, sec in r.steps],
        "calls": [_call_doc(c) for c in r.calls],
        "databases": r.databases,
        "database_names": list(r.database_names),
        "tls": None if r.tls_version is None else {"version": r.tls_version, "cipher": r.tls_cipher},
        "server": server_doc(r.server),
        "peer_address": r.peer_address,
        "certificates": [cert_doc(c, now, thresholds, base=base) for c in r.certs],
        "session_leaked": r.session_leaked,
    }


def listener_doc(x: ListenerResult, now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 base: str = runbook.RUNBOOK_URL) -> Dict[str, Any]:
    return {
        "name": x.listener.name, "port": x.listener.port, "protocol": x.listener.protocol,
        "state": "up" if x.up else "down",
        "failure": None if x.reason is None else failure_doc(None, x.reason, x.message, base),
        "checked": x.ended, "age_seconds": max(0.0, now - x.ended), "duration_seconds": x.duration,
        "tls_version": x.tls_version,
        "certificates": [cert_doc(c, now, thresholds, listener=True, base=base) for c in x.certs],
    }


def census_doc(census: Optional[SessionCensus], reaped_total: int) -> Optional[Dict[str, Any]]:
    """The account's sessions from a census (fcmon/probe/census.py); None without one."""
    if census is None:
        return None
    return {"sessions": census.sessions, "limit": census.limit, "fcmon": census.fcmon,
            "oldest_idle_seconds": census.oldest_idle, "reaped_total": reaped_total}


def target_doc(name: str, endpoint: str, result: Optional[ProbeResult], listeners: Optional[ListenerRound],
               now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS, *, state: Optional[str] = None,
               since: Optional[float] = None, server: Optional[ServerInfo] = None,
               server_seen: Optional[float] = None, debug_probe: bool = True,
               census: Optional[SessionCensus] = None, reaped_total: Optional[int] = None,
               base: str = runbook.RUNBOOK_URL) -> Dict[str, Any]:
    """One target. `state` defaults to the result's (`not_probed` without one);
    `server` to the result's (the daemon passes the last one seen); `census`
    and `reaped_total` to the result's census (the daemon passes the last
    census and its running total); `base` is where docs/runbook.md is
    published ([fcmon] runbook_url)."""
    if census is None and result is not None:
        census = result.census
    if reaped_total is None:
        reaped_total = census.reaped if census is not None else 0
    if state is None:
        state = "not_probed" if result is None else ("up" if result.up else "down")
    if server is None and result is not None and result.server is not None:
        server, server_seen = result.server, result.ended
    verdict = judge(result, listeners, now, thresholds)
    return {
        "name": name,
        "endpoint": endpoint,
        "state": state,
        "level": verdict.level,
        "summary": verdict.why,
        "since": since,
        "debug_probe": debug_probe_url(name) if debug_probe else None,
        "server": server_doc(server),
        "server_seen": server_seen,
        "last_probe": None if result is None else probe_doc(result, now, thresholds, base),
        "account_sessions": census_doc(census, reaped_total),
        "listener_discovery": None if listeners is None else listeners.discovery,
        "listener_discovery_message": None if listeners is None else (listeners.discovery_message or None),
        "listeners": [] if listeners is None else [listener_doc(x, now, thresholds, base)
                                                   for x in listeners.results],
    }


def _certificates(t: Dict[str, Any]) -> List[Dict[str, Any]]:
    certs = list((t["last_probe"] or {}).get("certificates", ()))
    for x in t["listeners"]:
        certs.extend(x["certificates"])
    return certs


def summary_doc(targets: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """What the top of the page says: counts of what is wrong."""
    certs = [c for t in targets for c in _certificates(t)]
    return {
        "targets": len(targets),
        "up": sum(1 for t in targets if t["state"] == "up"),
        "down": sum(1 for t in targets if t["state"] == "down"),
        "not_probed": sum(1 for t in targets if t["state"] == "not_probed"),
        "levels": {level: sum(1 for t in targets if t["level"] == level)
                   for level in ("critical", "warning", "unknown", "ok")},
        "certificates": {level: sum(1 for c in certs if c["level"] == level)
                         for level in ("expired", "critical", "warning")},
        "listeners_down": sum(1 for t in targets for x in t["listeners"] if x["state"] == "down"),
        "sessions_leaked": sum(1 for t in targets if (t["last_probe"] or {}).get("session_leaked")),
    }


def worst_first(targets: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return sorted(targets, key=lambda t: rank(t["state"], t["level"]))


def document(targets: Sequence[Dict[str, Any]], now: float,
             thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Dict[str, Any]:
    """The shared top of both documents; targets worst first."""
    ordered = worst_first(targets)
    return {
        "schema": SCHEMA,
        "now": now,
        "cert_thresholds_days": {"warning": thresholds.warn_days, "critical": thresholds.crit_days},
        "summary": summary_doc(ordered),
        "targets": ordered,
    }
