"""The status page (`/`, HTML) and `/api/v1/status` (JSON), from a `StatusSnapshot`.

The page is rendered here, whole, with its CSS inline: no script, no
external asset, and a `<meta http-equiv="refresh">` so that it refreshes
itself in any browser. Everything that comes from a server or the config
(target names, endpoints, error messages, subjects, host names) goes
through `_e` (HTML escaping, quotes included) or, in a URL, through
`quote` first; nothing else is interpolated. The response headers add a
Content-Security-Policy that allows no script at all, as a second line.

Both renderers read the same snapshot, so the page and the JSON agree.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

from .codes import describe
from .listeners import ListenerResult
from .result import CallResult, CertInfo, ServerInfo
from .status import (
    CERT_CRIT_DAYS,
    CERT_WARN_DAYS,
    DOWN,
    MAX_EVENTS,
    NOT_PROBED,
    SECONDS_PER_DAY,
    UP,
    StatusSnapshot,
    TargetStatus,
    cert_level,
)

REFRESH_SECONDS = 15

HTML_CONTENT_TYPE = "text/html; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# No script may run on the page, whatever ends up in it; styles are inline.
PAGE_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)

# State: symbol and word, so colour is never the only signal.
_STATE_LABEL = {UP: "\u2714 up", DOWN: "\u2716 down", NOT_PROBED: "\u2026 not yet probed"}
_CERT_SYMBOL = {"ok": "", "warning": "\u26a0 ", "critical": "\u26a0 ", "expired": "\u2716 "}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def debug_probe_url(target: str) -> str:
    return "/probe?target=" + quote(target, safe="") + "&debug=true"


# -- plain values, shared by HTML and JSON

def days_left(cert: CertInfo, now: float) -> float:
    return (cert.not_after - now) / SECONDS_PER_DAY


def days_text(days: float) -> str:
    """"12 days left", "less than a day left", "expired 3 days ago"."""
    if days < 0:
        ago = int(-days)
        if ago == 0:
            return "expired less than a day ago"
        return f"expired {ago} day{'s' if ago != 1 else ''} ago"
    left = int(days)
    if left == 0:
        return "less than a day left"
    return f"{left} day{'s' if left != 1 else ''} left"


def duration_text(seconds: float) -> str:
    """A coarse human duration: "42 s", "5 min", "3 h 12 min", "4 d 2 h"."""
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s} s"
    m = s // 60
    if m < 120:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def clock_text(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ms_text(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


# -- JSON

def _call_json(call: CallResult) -> Dict[str, Any]:
    out: Dict[str, Any] = {"action": call.action, "seconds": call.duration, "http_status": call.http_status,
                           "error_code": call.error_code, "error_message": call.error_message}
    if call.error_code not in (None, 0):
        out["error_meaning"] = describe(call.error_code)  # type: ignore[arg-type]
    return out


def _cert_json(c: CertInfo, now: float) -> Dict[str, Any]:
    days = days_left(c, now)
    return {"role": c.role, "subject": c.subject, "issuer": c.issuer or None, "serial": c.serial,
            "not_after": c.not_after, "days_left": days, "level": cert_level(days)}


def _server_json(server: Optional[ServerInfo]) -> Optional[Dict[str, Any]]:
    if server is None:
        return None
    return {"version": server.version, "hostname": server.hostname, "uuid": server.uuid}


def _target_json(t: TargetStatus, now: float) -> Dict[str, Any]:
    r = t.latest
    out: Dict[str, Any] = {
        "name": t.name,
        "endpoint": t.endpoint,
        "state": t.state,
        "since": t.since,
        "debug_probe": debug_probe_url(t.name),
        "server": _server_json(t.server),
        "server_seen": t.server_seen,
        "last_probe": None,
    }
    lr = t.listeners
    out["listener_discovery"] = None if lr is None else lr.discovery
    out["listeners"] = [] if lr is None else [_listener_json(x, now) for x in lr.results]
    if r is None:
        return out
    out["last_probe"] = {
        "ended": r.ended,
        "age_seconds": max(0.0, now - r.ended),
        "duration_seconds": r.duration,
        "failure": None if r.failure is None else {
            "stage": r.failure.stage, "reason": r.failure.reason, "message": r.failure.message},
        "steps": [{"step": step, "seconds": sec} for step, sec in r.steps],
        "calls": [_call_json(c) for c in r.calls],
        "databases": r.databases,
        "tls": None if r.tls_version is None else {"version": r.tls_version, "cipher": r.tls_cipher},
        "server": _server_json(r.server),
        "peer_address": r.peer_address,
        "certificates": [_cert_json(c, now) for c in r.certs],
        "session_leaked": r.session_leaked,
    }
    return out


def _listener_json(x: ListenerResult, now: float) -> Dict[str, Any]:
    return {
        "listener": x.listener.name, "port": x.listener.port, "protocol": x.listener.protocol,
        "up": x.up, "reason": x.reason, "message": x.message or None, "checked": x.ended,
        "age_seconds": max(0.0, now - x.ended), "tls_version": x.tls_version,
        "certificates": [_cert_json(c, now) for c in x.certs],
    }


def status_json(snap: StatusSnapshot) -> Dict[str, Any]:
    return {
        "fcmon": {"version": snap.version, "started": snap.started, "uptime_seconds": snap.uptime},
        "now": snap.now,
        "targets_up": snap.targets_up,
        "targets_total": len(snap.targets),
        "reload": {
            "successful": snap.reload.successful,
            "last_attempt": snap.reload.last_attempt,
            "last_success": snap.reload.last_success,
            "error": snap.reload.error,
        },
        "cert_thresholds_days": {"warning": CERT_WARN_DAYS, "critical": CERT_CRIT_DAYS},
        "targets": [_target_json(t, snap.now) for t in snap.targets],
        "events": [{"time": ev.time, "target": ev.target, "kind": ev.kind, "text": ev.text} for ev in snap.events],
    }


def render_json(snap: StatusSnapshot) -> bytes:
    # Compact: 3,000 targets are megabytes; `| jq .` shows it indented.
    return (json.dumps(status_json(snap), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


# -- HTML

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
header{background:#1d2b3a;color:#fff;padding:.8em 1.2em}
header h1{margin:0 0 .2em;font-size:1.3em}
header a{color:#bcd7ff}
header .facts span{margin-right:1.4em;white-space:nowrap}
main{padding:1em 1.2em}
h2{font-size:1.1em;margin:1.2em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d8dde3;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#e9edf2;font-weight:600}
.state{font-weight:700;white-space:nowrap}
tr.up .state{color:#11693a;background:#e3f5ea}
tr.down .state{color:#fff;background:#b3261e}
tr.not_probed .state{color:#5b6570;background:#eceff2}
tr.listener td{background:#fafbfc;font-size:.95em}
tr.listener td:first-child{padding-left:1.6em}
.muted{color:#5b6570}
.msg{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
ul.plain{list-style:none;margin:0;padding:0}
ul.steps li,.age,.took,.for{white-space:nowrap}
ul.certs li{margin-bottom:.15em}
.role{font-weight:600}
.cert-ok{color:#11693a}
.cert-warning{color:#8a5a00;background:#fff4d6}
.cert-critical{color:#fff;background:#c4541a}
.cert-expired{color:#fff;background:#b3261e}
.days{font-weight:600;padding:0 .25em;white-space:nowrap}
.banner{padding:.5em .8em;margin:.5em 0 0}
.banner.fail{background:#b3261e;color:#fff}
.banner.ok{color:#bde5c8}
ol.events{background:#fff;border:1px solid #d8dde3;margin:0;padding:.4em .4em .4em 2.4em}
ol.events li{padding:.15em 0}
.ev-up{color:#11693a}.ev-down,.ev-failure{color:#b3261e}
"""


def _ago(now: float, ts: float) -> str:
    return f"{duration_text(now - ts)} ago"


def _cert_html(c: CertInfo, now: float) -> str:
    d = days_left(c, now)
    level = cert_level(d)
    return (f'<li><span class="days cert-{level}" data-level="{level}" title="{level}">'
            f"{_CERT_SYMBOL[level]}{_e(days_text(d))}</span> "
            f'<span class="role">{_e(c.role)}</span> <span class="subject">{_e(c.subject)}</span></li>')


def _calls_html(calls: Sequence[CallResult], failure_message: str) -> str:
    """The calls that went wrong: HTTP status, errorCode with its meaning,
    and the server's errorMessage unless the failure's message already says it."""
    lines = []
    for c in calls:
        if c.error_code in (None, 0) and c.http_status in (None, 200):
            continue
        bits = []
        if c.http_status is not None:
            bits.append(f"HTTP {_e(c.http_status)}")
        if c.error_code is not None:
            bits.append(f"errorCode {_e(describe(c.error_code))}")
        text = f"{_e(c.action)}: {', '.join(bits)}"
        if c.error_message and c.error_message not in failure_message:
            text += f': <span class="msg">{_e(c.error_message)}</span>'
        lines.append(f"<li>{text}</li>")
    return f'<ul class="plain calls">{"".join(lines)}</ul>' if lines else ""


def _server_facts(t: TargetStatus, now: float) -> List[str]:
    """The server's version and host name, the last ones it sent: when the
    latest probe failed before createSession, from an earlier probe (said so)."""
    server = t.server
    if server is None:
        return []
    facts = []
    if server.version:
        facts.append(f'<span class="server-version">{_e(server.version)}</span>')
    if server.hostname:
        facts.append(f'host <span class="server-host">{_e(server.hostname)}</span>')
    if facts and t.latest is not None and t.latest.server is None and t.server_seen is not None:
        facts.append(f'<span class="muted">(as of {_e(_ago(now, t.server_seen))})</span>')
    return facts


def _target_html(t: TargetStatus, now: float) -> str:
    r = t.latest
    cells: List[str] = []
    name = (f'<strong class="name">{_e(t.name)}</strong><br><span class="muted endpoint">{_e(t.endpoint)}</span>'
            f'<br><a class="debug" href="{_e(debug_probe_url(t.name))}">debug probe</a>')
    cells.append(name)
    cells.append(f'<span class="state">{_e(_STATE_LABEL[t.state])}</span><br>'
                 f'<span class="for">for {_e(duration_text(now - t.since))}</span><br>'
                 f'<span class="muted since">since {_e(clock_text(t.since))}</span>')
    if r is None:
        cells.append('<span class="muted">never</span>')
        cells.extend(["", "", "", ""])
    else:
        cells.append(f'<span class="age" title="{_e(clock_text(r.ended))}">{_e(_ago(now, r.ended))}</span>'
                     f'<br><span class="muted took">took {_e(ms_text(r.duration))}</span>')
        if r.failure is not None:
            f = r.failure
            problem = (f'<span class="stage">{_e(f.stage)}</span>: <strong class="reason">{_e(f.reason)}</strong>'
                       f'<div class="msg message">{_e(f.message)}</div>')
        else:
            problem = '<span class="muted">none</span>'
        problem += _calls_html(r.calls, r.failure.message if r.failure is not None else "")
        if r.session_leaked:
            problem += '<div class="leak">\u26a0 a session could not be deleted</div>'
        cells.append(problem)
        steps = "".join(f"<li>{_e(step)} {_e(ms_text(sec))}</li>" for step, sec in r.steps)
        cells.append(f'<ul class="plain steps">{steps}</ul>')
        facts = _server_facts(t, now)
        if r.peer_address:
            facts.append(f'address <span class="peer">{_e(r.peer_address)}</span>')
        if r.tls_version:
            facts.append(f'<span class="tls">{_e(r.tls_version)}</span>'
                         + (f' <span class="muted">{_e(r.tls_cipher)}</span>' if r.tls_cipher else ""))
        if r.databases is not None:
            facts.append(f'<span class="databases">{_e(r.databases)}</span> databases')
        cells.append("<br>".join(facts) or '<span class="muted">unknown</span>')
        certs = "".join(_cert_html(c, now) for c in r.certs)
        cells.append(f'<ul class="plain certs">{certs}</ul>' if certs else '<span class="muted">none</span>')
    tds = "".join(f"<td>{c}</td>" for c in cells)
    row = f'<tr class="target {t.state}" data-target="{_e(t.name)}">{tds}</tr>'
    if t.listeners is not None:
        row += "".join(_listener_html(t.name, x, now) for x in t.listeners.results)
    return row


def _listener_html(target: str, x: ListenerResult, now: float) -> str:
    """A row under its target: the listener's handshake and certificates."""
    state = UP if x.up else DOWN
    cells = [
        f'<span class="muted">↳ listener</span> <strong class="listener">{_e(x.listener.name)}</strong><br>'
        f'<span class="muted">{_e(x.listener.protocol)}, port <span class="port">{_e(x.listener.port)}</span></span>',
        f'<span class="state">{_e(_STATE_LABEL[state])}</span>',
        f'<span class="age" title="{_e(clock_text(x.ended))}">{_e(_ago(now, x.ended))}</span>'
        f'<br><span class="muted took">took {_e(ms_text(x.duration))}</span>',
        ('<span class="muted">none</span>' if x.up else
         f'<strong class="reason">{_e(x.reason)}</strong><div class="msg message">{_e(x.message)}</div>'),
        '<span class="muted">TLS handshake</span>',
        f'<span class="tls">{_e(x.tls_version)}</span>' if x.tls_version else '<span class="muted">unknown</span>',
    ]
    certs = "".join(_cert_html(c, now) for c in x.certs)
    cells.append(f'<ul class="plain certs">{certs}</ul>' if certs else '<span class="muted">none</span>')
    tds = "".join(f"<td>{c}</td>" for c in cells)
    return (f'<tr class="listener {state}" data-target="{_e(target)}" '
            f'data-listener="{_e(x.listener.name)}">{tds}</tr>')


def _header_html(snap: StatusSnapshot) -> str:
    reload = snap.reload
    if reload.successful:
        when = "at start" if reload.last_attempt is None else _ago(snap.now, reload.last_attempt)
        banner = f'<p class="banner ok reload">config loaded {_e(when)}</p>'
    else:
        assert reload.last_attempt is not None
        banner = (f'<p class="banner fail reload" role="alert">\u2716 config reload failed '
                  f'{_e(_ago(snap.now, reload.last_attempt))}, running the config loaded '
                  f'{_e(_ago(snap.now, reload.last_success))}: <span class="msg reload-error">'
                  f"{_e(reload.error)}</span></p>")
    return (
        '<header><h1>fcmon status</h1><div class="facts">'
        f'<span>fcmon <span class="version">{_e(snap.version)}</span></span>'
        f'<span>up <span class="uptime">{_e(duration_text(snap.uptime))}</span></span>'
        f'<span>targets up: <strong class="targets-up">{snap.targets_up} / {len(snap.targets)}</strong></span>'
        '<span><a href="/metrics">/metrics</a> <a href="/-/ready">/-/ready</a> '
        '<a href="/-/healthy">/-/healthy</a> <a href="/api/v1/status">/api/v1/status</a></span>'
        f"</div>{banner}</header>"
    )


def _events_html(snap: StatusSnapshot) -> str:
    if not snap.events:
        return '<p class="muted">No state change yet.</p>'
    items = "".join(
        f'<li class="ev-{_e(ev.kind)}"><span title="{_e(clock_text(ev.time))}">{_e(clock_text(ev.time))}</span> '
        f'<strong>{_e(ev.target)}</strong>: <span class="msg">{_e(ev.text)}</span></li>'
        for ev in snap.events
    )
    return f'<ol class="events">{items}</ol>'


def render_html(snap: StatusSnapshot) -> bytes:
    rows = "".join(_target_html(t, snap.now) for t in snap.targets)
    if not rows:
        rows = '<tr><td colspan="7" class="muted">No target configured.</td></tr>'
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fcmon: {snap.targets_up}/{len(snap.targets)} up</title>"
        f"<style>{_CSS}</style></head><body>"
        + _header_html(snap)
        + "<main><h2>Targets</h2><table><thead><tr>"
        "<th>target</th><th>state</th><th>last probe</th><th>failure</th><th>steps</th>"
        "<th>server</th><th>certificates</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
        + f'<h2>Events <span class="muted">(the last {MAX_EVENTS} state changes and failures, newest first)</span></h2>'
        + _events_html(snap)
        + f'<p class="muted">Certificates: \u26a0 under {CERT_WARN_DAYS:g} days (warning), '
          f"under {CERT_CRIT_DAYS:g} days (critical), as the alert rules. "
          f"This page refreshes every {REFRESH_SECONDS} s; rendered {_e(clock_text(snap.now))}.</p>"
        + "</main></body></html>\n"
    )
    return page.encode("utf-8")
