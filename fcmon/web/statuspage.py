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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import runbook
from ..probe.codes import describe
from ..probe.levels import CRITICAL, WARNING, Judgement, days_left, days_text, judge, rank
from ..probe.listeners import ListenerResult
from ..probe.result import CallResult, CertInfo
from ..export.schema import debug_probe_url, document, target_doc
from ..export.status import (
    CERT_CRIT_DAYS,
    CERT_WARN_DAYS,
    DOWN,
    MAX_EVENTS,
    NOT_PROBED,
    UP,
    StatusSnapshot,
    TargetStatus,
    cert_level,
)

__all__ = ["render_html", "render_json", "status_json", "days_text", "debug_probe_url"]

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

# State and level: symbol and word, so colour is never the only signal.
_STATE_LABEL = {UP: "\u2714 up", DOWN: "\u2716 down", NOT_PROBED: "\u2026 not yet probed"}
_LEVEL_LABEL = {CRITICAL: "\u203c critical", WARNING: "\u26a0 warning"}
_CERT_LABEL = {"ok": "", "warning": "\u26a0 warning: ", "critical": "\u203c critical: ", "expired": "\u2716 "}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


# -- plain values for people


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


# -- JSON: the shared schema (fcmon/export/schema.py), plus what only the daemon knows


def _target_json(t: TargetStatus, now: float, base: str) -> Dict[str, Any]:
    return target_doc(t.name, t.endpoint, t.latest, t.listeners, now, state=t.state, since=t.since,
                      server=t.server, server_seen=t.server_seen, census=t.census, reaped_total=t.reaped,
                      base=base)


def status_json(snap: StatusSnapshot) -> Dict[str, Any]:
    doc = document([_target_json(t, snap.now, snap.runbook_url) for t in snap.targets], snap.now)
    doc["summary"]["reload_successful"] = snap.reload.successful
    return {
        "schema": doc.pop("schema"),
        "fcmon": {"version": snap.version, "started": snap.started, "uptime_seconds": snap.uptime},
        **doc,
        "reload": {
            "successful": snap.reload.successful,
            "last_attempt": snap.reload.last_attempt,
            "last_success": snap.reload.last_success,
            "error": snap.reload.error,
            "runbook": None if snap.reload.successful else runbook.alert_url(runbook.RELOAD_FAILED_ALERT,
                                                                             snap.runbook_url),
        },
        "events": [{"time": ev.time, "target": ev.target, "kind": ev.kind, "text": ev.text} for ev in snap.events],
    }


def render_json(snap: StatusSnapshot) -> bytes:
    # Compact: 3,000 targets are megabytes; `| jq .` shows it indented.
    return (json.dumps(status_json(snap), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


# -- HTML

_COLUMNS = ("target", "state", "last probe", "failure", "steps", "server", "certificates")

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
header{background:#1d2b3a;color:#fff;padding:.8em 1.2em}
header h1{margin:0 0 .2em;font-size:1.3em}
header a{color:#bcd7ff}
header .facts{display:flex;flex-wrap:wrap;gap:.2em 1.4em}
header .facts span{white-space:nowrap}
ul.summary{list-style:none;margin:.6em 0 0;padding:0;display:flex;flex-wrap:wrap;gap:.4em}
ul.summary li{padding:.25em .6em;border-radius:3px;background:#2c3e51;color:#d6dde5;white-space:nowrap}
ul.summary li.bad{background:#b3261e;color:#fff;font-weight:700}
ul.summary li.crit{background:#c4541a;color:#fff;font-weight:700}
ul.summary li.warn{background:#fff4d6;color:#5c3c00;font-weight:700}
ul.summary li.good{background:#e3f5ea;color:#11693a}
main{padding:1em 1.2em}
h2{font-size:1.1em;margin:1.2em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d8dde3;padding:.35em .5em;vertical-align:top;text-align:left;overflow-wrap:break-word}
th{background:#e9edf2;font-weight:600}
.state{font-weight:700;white-space:nowrap}
tr.up .state{color:#11693a;background:#e3f5ea}
tr.down .state{color:#fff;background:#b3261e}
tr.not_probed .state{color:#5b6570;background:#eceff2}
.level{display:inline-block;margin-top:.2em;font-weight:700;padding:0 .25em;white-space:nowrap}
.level-critical{color:#fff;background:#c4541a}
.level-warning{color:#5c3c00;background:#fff4d6;outline:1px solid #d9a400}
tr.down td:first-child{box-shadow:inset 6px 0 #b3261e}
tr.row-critical td:first-child{box-shadow:inset 6px 0 #c4541a}
tr.row-warning td:first-child{box-shadow:inset 6px 0 #d9a400}
tr.target td:first-child{padding-left:.9em}
tr.listener td{background:#fafbfc;font-size:.95em}
tr.listener td:first-child{padding-left:1.6em}
.muted{color:#5b6570}
.msg{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.first-check{margin:.2em 0;padding:.15em .4em;border-left:3px solid #c4541a;background:#fdf3ec}
ul.plain{list-style:none;margin:0;padding:0}
ul.steps li,.age,.took,.for{white-space:nowrap}
ul.certs li{margin-bottom:.15em}
.role{font-weight:600}
a.alert{text-decoration:none}
.cert-ok{color:#11693a}
.cert-warning{color:#5c3c00;background:#fff4d6;outline:1px solid #d9a400}
.account-sessions.high{color:#5c3c00;background:#fff4d6;outline:1px solid #d9a400}
.cert-critical{color:#fff;background:#c4541a}
.cert-expired{color:#fff;background:#b3261e}
.days{font-weight:600;padding:0 .25em;white-space:nowrap}
.banner{padding:.5em .8em;margin:.5em 0 0}
.banner.fail{background:#b3261e;color:#fff}
.banner.fail a{color:#fff}
.banner.ok{color:#bde5c8}
ol.events{background:#fff;border:1px solid #d8dde3;margin:0;padding:.4em .4em .4em 2.4em;overflow-wrap:anywhere}
ol.events li{padding:.15em 0}
.ev-up{color:#11693a}.ev-down,.ev-failure{color:#b3261e}
@media (max-width:1100px){
table,tbody,tr,td{display:block}
thead{display:none}
tr.target,tr.listener{display:flex;flex-wrap:wrap;border:1px solid #d8dde3;margin:.8em 0 0;background:#fff}
tr.listener{margin:0 0 0 1em;border-top:0}
tr.down{border-left:6px solid #b3261e}
tr.row-critical{border-left:6px solid #c4541a}
tr.row-warning{border-left:6px solid #d9a400}
tr td:first-child,tr.target td:first-child{box-shadow:none;padding-left:.5em}
td{flex:1 1 11em;min-width:0;border:0;border-top:1px solid #eef0f3;overflow-wrap:anywhere}
td:nth-child(1),td:nth-child(4){flex-basis:100%}
td:nth-child(7){flex:2 1 18em;order:1}
td:nth-child(5),td:nth-child(6){order:2}
td:nth-child(4).none{display:none}
td::before{display:block;font-size:.8em;color:#5b6570}
""" + "".join(f'td:nth-child({i})::before{{content:"{name}"}}\n' for i, name in enumerate(_COLUMNS, 1) if i > 1) + """
main{padding:.6em}
header{padding:.6em}
}
"""



def _ago(now: float, ts: float) -> str:
    return f"{duration_text(now - ts)} ago"


def _link(href: str, text: str, cls: str, title: str = "") -> str:
    t = f' title="{_e(title)}"' if title else ""
    return f'<a class="{cls}" href="{_e(href)}"{t}>{text}</a>'


def _cert_html(c: CertInfo, now: float, base: str, listener: bool = False) -> str:
    d = days_left(c, now)
    level = cert_level(d)
    badge = (f'<span class="days cert-{level}" data-level="{level}" title="{level}">'
             f"{_CERT_LABEL[level]}{_e(days_text(d))}</span>")
    alert = runbook.cert_alert(c.role, level, listener)
    if alert is not None:
        badge = _link(runbook.alert_url(alert, base), badge, "alert", f"{alert}: what to do (runbook)")
    return f'<li>{badge} <span class="role">{_e(c.role)}</span> <span class="subject">{_e(c.subject)}</span></li>'


def _reason_html(reason: str, message: str, base: str) -> str:
    """The reason, linked to its runbook section, the first thing to check, the message."""
    first = runbook.first_check(reason)
    out = _link(runbook.reason_url(reason, base), f'<strong class="reason">{_e(reason)}</strong>', "runbook",
                f"runbook: {reason}")
    if first:
        out += f'<div class="first-check">First check: {_e(first)}</div>'
    return out + f'<div class="msg message">{_e(message)}</div>'


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


_NONE = '<span class="muted">none</span>'


def _row(cls: str, attrs: str, cells: Sequence[str]) -> str:
    # a cell that says only "none" is left out of the stacked layout (narrow screens)
    # Cells are told apart by position (the stylesheet labels them in the
    # stacked layout): no attribute per cell, 15 % less page at 3,000 targets.
    tds = "".join('<td class="none">' + c + "</td>" if c == _NONE else "<td>" + c + "</td>" for c in cells)
    return f'<tr class="{cls}" {attrs}>{tds}</tr>'


def _level_html(j: Judgement, state: str) -> str:
    """For a target that is not down: how bad it is, in symbol and word."""
    if state == DOWN or j.level not in _LEVEL_LABEL:
        return ""
    return f'<br><span class="level level-{j.level}" title="{_e(j.why)}">{_LEVEL_LABEL[j.level]}</span>'


def _target_html(t: TargetStatus, j: Judgement, now: float, base: str) -> str:
    r = t.latest
    cells: List[str] = []
    cells.append(f'<strong class="name">{_e(t.name)}</strong><br><span class="muted endpoint">{_e(t.endpoint)}</span>'
                 f'<br><a class="debug" href="{_e(debug_probe_url(t.name))}">debug probe</a>')
    cells.append(f'<span class="state">{_e(_STATE_LABEL[t.state])}</span>{_level_html(j, t.state)}<br>'
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
            problem = f'<span class="stage">{_e(f.stage)}</span>: ' + _reason_html(f.reason, f.message, base)
        else:
            problem = _NONE
        problem += _calls_html(r.calls, r.failure.message if r.failure is not None else "")
        if r.session_leaked:
            problem += ('<div class="leak">\u26a0 a session could not be deleted ('
                        + _link(runbook.alert_url(runbook.SESSIONS_LEAKING_ALERT, base), "runbook", "runbook")
                        + ")</div>")
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
        census = _census_html(t, base)
        if census is not None:
            facts.append(census)
        cells.append("<br>".join(facts) or '<span class="muted">unknown</span>')
        certs = "".join(_cert_html(c, now, base) for c in r.certs)
        cells.append(f'<ul class="plain certs">{certs}</ul>' if certs else '<span class="muted">none</span>')
    row = _row(f"target {t.state} row-{j.level}", f'data-target="{_e(t.name)}" data-level="{j.level}"', cells)
    if t.listeners is not None:
        row += "".join(_listener_html(t.name, x, now, base) for x in t.listeners.results)
    return row


def _census_html(t: TargetStatus, base: str) -> Optional[str]:
    """"sessions 46 of 50 (1 fcmon's, 2 reaped)" from the last census, marked
    and linked to its runbook section above 80 % of the limit (where
    FcmonAccountSessionsHigh fires)."""
    c = t.census
    if c is None:
        return None
    high = c.limit > 0 and c.sessions > 0.8 * c.limit
    extra = f"{c.fcmon} fcmon's" + (f", {t.reaped} reaped" if t.reaped else "")
    text = (f'<span class="account-sessions{" high" if high else ""}" title="live sessions of the account '
            f'(describeSessions), fcmon\'s own included">sessions {_e(c.sessions)} of {_e(c.limit)}</span>'
            f' <span class="muted">({_e(extra)})</span>')
    if high:
        text += " " + _link(runbook.alert_url("FcmonAccountSessionsHigh", base), "runbook", "runbook")
    return text


def _listener_html(target: str, x: ListenerResult, now: float, base: str) -> str:
    """A row under its target: the listener's handshake and certificates."""
    state = UP if x.up else DOWN
    certs = "".join(_cert_html(c, now, base, listener=True) for c in x.certs)
    cells = [
        f'<span class="muted">\u21b3 listener</span> <strong class="listener">{_e(x.listener.name)}</strong><br>'
        f'<span class="muted">{_e(x.listener.protocol)}, port <span class="port">{_e(x.listener.port)}</span></span>',
        f'<span class="state">{_e(_STATE_LABEL[state])}</span>',
        f'<span class="age" title="{_e(clock_text(x.ended))}">{_e(_ago(now, x.ended))}</span>'
        f'<br><span class="muted took">took {_e(ms_text(x.duration))}</span>',
        (_NONE if x.up else
         _reason_html(x.reason or "", x.message, base)
         + f'<div>{_link(runbook.alert_url(runbook.LISTENER_DOWN_ALERT, base), "listener down: runbook", "runbook")}</div>'),
        '<span class="muted">TLS handshake</span>',
        f'<span class="tls">{_e(x.tls_version)}</span>' if x.tls_version else '<span class="muted">unknown</span>',
        f'<ul class="plain certs">{certs}</ul>' if certs else '<span class="muted">none</span>',
    ]
    return _row(f"listener {state}", f'data-target="{_e(target)}" data-listener="{_e(x.listener.name)}"', cells)


def judged(snap: StatusSnapshot) -> List[Tuple[TargetStatus, Judgement]]:
    """Every target with its judgement, worst first (the JSON's order: fcmon/probe/levels.py)."""
    pairs = [(t, judge(t.latest, t.listeners, snap.now)) for t in snap.targets]
    return sorted(pairs, key=lambda p: rank(p[0].state, p[1].level))


def _plural(n: int, word: str, many: str = "") -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _summary_items(snap: StatusSnapshot, pairs: Sequence[Tuple[TargetStatus, Judgement]]) -> List[Tuple[str, str, str]]:
    """(class, kind, text) for the summary line and the tab title."""
    down = sum(1 for t, _ in pairs if t.state == DOWN)
    levels = {"expired": 0, "critical": 0, "warning": 0}
    listeners_down = 0
    for t, _ in pairs:
        certs = list(t.latest.certs) if t.latest is not None else []
        if t.listeners is not None:
            listeners_down += sum(1 for x in t.listeners.results if not x.up)
            certs += [c for x in t.listeners.results for c in x.certs]
        for c in certs:
            level = cert_level(days_left(c, snap.now))
            if level in levels:
                levels[level] += 1
    critical = levels["critical"] + levels["expired"]
    expired = f" ({levels['expired']} expired)" if levels["expired"] else ""
    return [
        ("bad" if down else "good", "down", f"\u2716 {down} down" if down else "\u2714 0 down"),
        ("crit" if critical else "good", "cert-critical",
         f"\u203c {_plural(critical, 'certificate')} critical{expired}"),
        ("warn" if levels["warning"] else "good", "cert-warning",
         f"\u26a0 {_plural(levels['warning'], 'certificate')} warning"),
        ("bad" if listeners_down else "good", "listeners-down",
         f"\u2716 {_plural(listeners_down, 'listener')} down" if listeners_down else "\u2714 0 listeners down"),
        ("good", "reload", "\u2714 config loaded") if snap.reload.successful
        else ("bad", "reload", "\u2716 config reload failed"),
    ]


def _title(snap: StatusSnapshot, items: Sequence[Tuple[str, str, str]]) -> str:
    """The tab: what is wrong first (a tab is narrow), then up / total."""
    wrong = [text.split(" ", 1)[1] for cls, kind, text in items if cls != "good"]
    up = f"{snap.targets_up}/{len(snap.targets)} up"
    return f"fcmon: {', '.join(wrong)} \u00b7 {up}" if wrong else f"fcmon: {up}"


def _header_html(snap: StatusSnapshot, items: Sequence[Tuple[str, str, str]]) -> str:
    reload = snap.reload
    if reload.successful:
        when = "at start" if reload.last_attempt is None else _ago(snap.now, reload.last_attempt)
        banner = f'<p class="banner ok reload">config loaded {_e(when)}</p>'
    else:
        assert reload.last_attempt is not None
        banner = (f'<p class="banner fail reload" role="alert">\u2716 config reload failed '
                  f'{_e(_ago(snap.now, reload.last_attempt))}, running the config loaded '
                  f'{_e(_ago(snap.now, reload.last_success))}: <span class="msg reload-error">'
                  f"{_e(reload.error)}</span> "
                  + _link(runbook.alert_url(runbook.RELOAD_FAILED_ALERT, snap.runbook_url), "runbook", "runbook")
                  + "</p>")
    summary = "".join(f'<li class="{cls} sum-{kind}">{_e(text)}</li>' for cls, kind, text in items)
    return (
        '<header><h1>fcmon status</h1><div class="facts">'
        f'<span>fcmon <span class="version">{_e(snap.version)}</span></span>'
        f'<span>up <span class="uptime">{_e(duration_text(snap.uptime))}</span></span>'
        f'<span>targets up: <strong class="targets-up">{snap.targets_up} / {len(snap.targets)}</strong></span>'
        '<span><a href="/metrics">/metrics</a> <a href="/-/ready">/-/ready</a> '
        '<a href="/-/healthy">/-/healthy</a> <a href="/api/v1/status">/api/v1/status</a></span>'
        f'</div><ul class="summary" aria-label="summary">{summary}</ul>{banner}</header>'
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
    """The page: a pure function of the snapshot."""
    pairs = judged(snap)
    items = _summary_items(snap, pairs)
    rows = "".join(_target_html(t, j, snap.now, snap.runbook_url) for t, j in pairs)
    if not rows:
        rows = '<tr><td colspan="7" class="muted">No target configured.</td></tr>'
    head = "".join(f"<th>{name}</th>" for name in _COLUMNS)
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(_title(snap, items))}</title>"
        f"<style>{_CSS}</style></head><body>"
        + _header_html(snap, items)
        + f"<main><h2>Targets <span class=\"muted\">(worst first)</span></h2><table><thead><tr>{head}</tr></thead><tbody>"
        + rows
        + "</tbody></table>"
        + f'<h2>Events <span class="muted">(the last {MAX_EVENTS} state changes and failures, newest first)</span></h2>'
        + _events_html(snap)
        + f'<p class="muted legend">Certificates: \u203c critical under {CERT_CRIT_DAYS:g} days, '
          f"\u26a0 warning under {CERT_WARN_DAYS:g} days (at exactly {CERT_CRIT_DAYS:g} days: warning), "
          "as the alert rules; days left are whole days, rounded down. "
          f"This page refreshes every {REFRESH_SECONDS} s; rendered {_e(clock_text(snap.now))}.</p>"
        + "</main></body></html>\n"
    )
    return page.encode("utf-8")
