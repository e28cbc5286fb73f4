"""The status board and its renderers (`/` and `/api/v1/status`), without a browser.

tests/test_status_browser.py drives the same page in a real chromium
against a running daemon.
"""

from __future__ import annotations

import base64
import html
import html.parser
import json
import re
from typing import Dict, List, Optional, Tuple

import pytest
import yaml

from fcmon import runbook
from fcmon.web import statuspage
from fcmon.probe.certs import CERT_CRIT_DAYS, CERT_WARN_DAYS
from fcmon.config import TargetConfig, WebConfig
from fcmon.probe.result import CallResult, CertInfo, Failure, ProbeResult, ServerInfo
from fcmon.export.status import MAX_EVENTS, StatusBoard, cert_level, one_line
from fcmon.web.app import App

from support import ROOT

HOSTILE = "<script>alert(1)</script>"
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def target(name: str = "prod", endpoint: str = "https://db1.example.com:8443/api") -> TargetConfig:
    return TargetConfig(name=name, endpoint=endpoint)


def up(name: str, at: float, **kw) -> ProbeResult:  # type: ignore[no-untyped-def]
    kw.setdefault("databases", 3)
    return ProbeResult(name, at - 0.05, at, 0.05, None, **kw)


def down(name: str, at: float, reason: str = "connect_refused", message: str = "connection refused",
         stage: str = "connect", **kw) -> ProbeResult:  # type: ignore[no-untyped-def]
    return ProbeResult(name, at - 0.05, at, 0.05, Failure(stage, reason, message), **kw)


def board_with(*names: str, clock: Optional[Clock] = None) -> Tuple[StatusBoard, Clock]:
    clock = clock or Clock()
    board = StatusBoard("9.9.9", clock=clock)
    board.set_targets([target(n) for n in names])
    return board, clock


# -- the board


def test_targets_start_not_yet_probed_and_keep_config_order() -> None:
    board, clock = board_with("b", "a", "c")
    snap = board.snapshot()
    assert [t.name for t in snap.targets] == ["b", "a", "c"]
    assert {t.state for t in snap.targets} == {"not_probed"}
    assert all(t.since == clock.now and t.latest is None for t in snap.targets)
    assert snap.targets_up == 0 and snap.events == ()


def test_state_since_and_events_follow_the_results() -> None:
    board, clock = board_with("prod")
    t0 = clock.now
    board.record(up("prod", t0 + 1))
    board.record(up("prod", t0 + 61))
    snap = board.snapshot()
    (t,) = snap.targets
    assert (t.state, t.since, t.latest.ended) == ("up", t0 + 1, t0 + 61)
    assert [(e.kind, e.text) for e in snap.events] == [("up", "up (3 databases)")]

    board.record(down("prod", t0 + 121))
    board.record(down("prod", t0 + 181))  # the same failure again: no new event
    board.record(down("prod", t0 + 182, message="connection reset"))  # nor in other words
    board.record(down("prod", t0 + 241, "tls_verify", "certificate has expired"))
    board.record(up("prod", t0 + 301))
    snap = board.snapshot()
    assert (snap.targets[0].state, snap.targets[0].since) == ("up", t0 + 301)
    assert [(e.time, e.kind) for e in snap.events] == [
        (t0 + 301, "up"), (t0 + 241, "failure"), (t0 + 121, "down"), (t0 + 1, "up")]
    assert snap.events[1].text == "down at connect: tls_verify: certificate has expired"
    assert snap.events[2].target == "prod"


def test_events_are_capped_at_50_newest_first() -> None:
    board, clock = board_with("flappy")
    for i in range(3 * MAX_EVENTS):
        at = clock.now + i
        board.record(up("flappy", at) if i % 2 else down("flappy", at))
    events = board.snapshot().events
    assert MAX_EVENTS == 50
    assert len(events) == 50
    assert [e.time for e in events] == [clock.now + i for i in range(3 * MAX_EVENTS - 1, 2 * MAX_EVENTS - 1, -1)]


def test_reload_adds_removes_and_resets_a_moved_target() -> None:
    board, clock = board_with("keep", "gone", "moved")
    for name in ("keep", "gone", "moved"):
        board.record(up(name, clock.now + 1))
    clock.now += 100
    board.set_targets([target("keep"), target("moved", "https://db9.example.com/api"), target("new")])
    snap = board.snapshot()
    states = {t.name: (t.state, t.since) for t in snap.targets}
    assert states == {"keep": ("up", clock.now - 99), "moved": ("not_probed", clock.now),
                      "new": ("not_probed", clock.now)}
    kinds = {(e.target, e.kind) for e in snap.events if e.time == clock.now}
    assert kinds == {("gone", "removed"), ("moved", "added"), ("new", "added")}
    board.record(up("gone", clock.now + 1))  # its probe was still running: ignored
    assert "gone" not in {t.name for t in board.snapshot().targets}


def test_reload_status_keeps_the_error_until_a_reload_succeeds() -> None:
    board, clock = board_with("prod")
    start = clock.now
    snap = board.snapshot()
    assert (snap.reload.successful, snap.reload.last_attempt, snap.reload.error) == (True, None, None)
    clock.now += 50
    board.record_reload(False, "[fcmon] timout: unknown key (did you mean timeout?)")
    r = board.snapshot().reload
    assert (r.successful, r.last_attempt, r.last_success) == (False, start + 50, start)
    assert r.error == "[fcmon] timout: unknown key (did you mean timeout?)"
    clock.now += 50
    board.record_reload(True)
    r = board.snapshot().reload
    assert (r.successful, r.last_attempt, r.last_success, r.error) == (True, start + 100, start + 100, None)


def test_one_line_joins_problems_and_counts_the_rest() -> None:
    assert one_line(["[fcmon] timout: unknown key", "[target:a]\n  endpoint: missing"]) == (
        "[fcmon] timout: unknown key; [target:a] endpoint: missing")
    line = one_line([f"[target:t{i}] endpoint: missing, give one" for i in range(100)], limit=120)
    shown = line.count("[target:")
    assert "\n" not in line and 1 <= shown < 5 and line.startswith("[target:t0]")
    assert line.endswith(f"give one (and {100 - shown} more)") and len(line) < 120 + len(" (and 99 more)")
    assert one_line([]) == "reload failed"
    assert one_line(["/etc/fcmon/config.ini: [fcmon] timout: unknown key",
                     "/etc/fcmon/config.ini: line 9: cannot parse"]) == (
        "/etc/fcmon/config.ini: [fcmon] timout: unknown key; line 9: cannot parse")
    assert len(one_line(["x" * 1000], limit=100)) == 100


# -- thresholds


@pytest.mark.parametrize("days, level", [
    (400, "ok"), (30.0, "ok"), (29.99, "warning"), (7.0, "warning"), (6.99, "critical"),
    (0.0, "critical"), (-0.01, "expired"), (-400, "expired"),
])
def test_cert_level_at_the_alert_thresholds(days: float, level: str) -> None:
    assert cert_level(days) == level


def test_thresholds_are_the_alert_rules() -> None:
    rules = yaml.safe_load((ROOT / "prometheus" / "fcmon-alerts.yml").read_text())
    exprs = {r["alert"]: " ".join(r["expr"].split()) for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for role in ("Server", "Client", "CA"):
        assert exprs[f"Fcmon{role}CertExpiringSoon"].endswith(
            f"< {CERT_WARN_DAYS:g} * 86400 >= {CERT_CRIT_DAYS:g} * 86400")
        assert exprs[f"Fcmon{role}CertExpiringCritical"].endswith(f"< {CERT_CRIT_DAYS:g} * 86400 >= 0")


@pytest.mark.parametrize("days, text", [
    (364.9, "364 days left"), (1.5, "1 day left"), (0.4, "less than a day left"),
    (-0.2, "expired less than a day ago"), (-1.7, "expired 1 day ago"), (-12.3, "expired 12 days ago"),
])
def test_days_wording(days: float, text: str) -> None:
    assert statuspage.days_text(days) == text


# -- HTML


class _Page(html.parser.HTMLParser):
    """The page as a browser's parser sees it: elements, text, attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.text: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> _Page:
    page = _Page()
    page.feed(body.decode("utf-8"))
    page.close()
    return page


def hostile_board() -> Tuple[StatusBoard, Clock]:
    clock = Clock()
    board = StatusBoard("9.9.9", clock=clock)
    board.set_targets([target('ev"il<b>&', f"https://{HOSTILE}/api"), target("fine"), target("fresh")])
    certs = (
        CertInfo("server", f"CN={HOSTILE}", "aa", clock.now - 3.5 * DAY),
        CertInfo("client", "CN=ADMIN", "bb", clock.now + 20.5 * DAY),
        CertInfo("ca", "CN=fcmon test CA", "cc", clock.now + 3.5 * DAY),
        CertInfo("chain", "CN=intermediate", "dd", clock.now + 200 * DAY),
    )
    board.record(down('ev"il<b>&', clock.now - 30, "api_error", f"listDatabases: errorCode 12031: {HOSTILE}",
                      "list_databases", certs=certs, tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384",
                      steps=(("connect", 0.0031), ("create_session", 0.0042), ("list_databases", 0.002)),
                      calls=(CallResult("createSession", 0.0042, 0, 200),
                             CallResult("listDatabases", 0.002, 12031, 400, HOSTILE)),
                      server=ServerInfo(f"FairCom DB {HOSTILE}", "<img src=x onerror=alert(2)>", "u-1"),
                      peer_address="127.0.0.1:8443"))
    board.record(up("fine", clock.now - 5, tls_version="TLSv1.3", steps=(("connect", 0.003),)))
    board.record_reload(False, f"[target:{HOSTILE}] endpoint: missing")
    clock.now += 1
    return board, clock


def test_everything_from_servers_and_config_is_escaped() -> None:
    board, _ = hostile_board()
    body = statuspage.render_html(board.snapshot())
    page = parse(body)
    assert [t for t, _ in page.tags if t in ("script", "b", "iframe", "img", "object")] == []
    assert b"<script" not in body.lower()
    text = "".join(page.text)
    # The hostile strings are there as text: in the message, subject, endpoint, reload error, event.
    assert text.count(HOSTILE) >= 5
    assert 'ev"il<b>&' in text
    # Attribute values cannot be broken out of either.
    rows = [a for t, a in page.tags if t == "tr" and a.get("data-target")]
    assert [a["data-target"] for a in rows] == ['ev"il<b>&', "fresh", "fine"]  # worst first
    links = [a["href"] for t, a in page.tags if t == "a" and "debug" in (a.get("class") or "")]
    assert links == ["/probe?target=ev%22il%3Cb%3E%26&debug=true", "/probe?target=fresh&debug=true",
                     "/probe?target=fine&debug=true"]


def test_page_states_certificates_and_header() -> None:
    board, clock = hostile_board()
    body = statuspage.render_html(board.snapshot())
    page = parse(body)
    text = " ".join(" ".join(page.text).split())
    assert ('meta', {"http-equiv": "refresh", "content": "15"}) in page.tags
    assert ('meta', {"charset": "utf-8"}) in page.tags
    assert "fcmon 9.9.9" in text and "targets up: 1 / 3" in text
    assert "config reload failed" in text
    for path in ("/metrics", "/-/ready", "/-/healthy", "/api/v1/status"):
        assert ("a", {"href": path}) in page.tags
    # state as words and symbols, not colour alone
    assert "\u2716 down" in text and "\u2714 up" in text and "\u2026 not yet probed" in text
    assert "list_databases: api_error" in text
    # certificates: role, subject, days, level at the alert thresholds
    levels = [a.get("data-level") for t, a in page.tags if t == "span" and a.get("data-level")]
    assert levels == ["expired", "warning", "critical", "ok"]
    assert "expired 3 days ago" in text and "20 days left" in text and "3 days left" in text
    assert "TLSv1.3" in text and "connect 3.1 ms" in text
    assert "listDatabases: HTTP 400, errorCode 12031 (authToken matches no session)" in text
    assert f"FairCom DB {HOSTILE}" in text and "host <img src=x onerror=alert(2)>" in text
    assert "address 127.0.0.1:8443" in text
    # no JS, no external asset
    assert not [a for t, a in page.tags if t in ("link", "script", "img")]
    assert b"http://" not in body and b"https://db1" in body  # only the endpoints are URLs


def test_server_identity_outlives_a_probe_that_failed_before_it() -> None:
    board, clock = board_with("prod")
    identity = ServerInfo("FairCom DB 13.0.2", "db1", "u-1")
    board.record(up("prod", clock.now - 120, server=identity))
    board.record(down("prod", clock.now - 1))  # connect refused: no identity this time
    (t,) = board.snapshot().targets
    assert (t.server, t.server_seen) == (identity, clock.now - 120)
    text = " ".join(" ".join(parse(statuspage.render_html(board.snapshot())).text).split())
    assert "FairCom DB 13.0.2 host db1 (as of 2 min ago)" in text
    data = json.loads(statuspage.render_json(board.snapshot()))["targets"][0]
    assert data["server"]["hostname"] == "db1" and data["last_probe"]["server"] is None
    board.set_targets([target("prod", "https://elsewhere.example.com/api")])
    assert board.snapshot().targets[0].server is None  # another server now


def test_not_yet_probed_row() -> None:
    board, _ = board_with("fresh")
    body = statuspage.render_html(board.snapshot())
    text = " ".join(" ".join(parse(body).text).split())
    assert "\u2026 not yet probed" in text and "never" in text and "targets up: 0 / 1" in text
    assert "No state change yet." in text


def test_json_has_the_documented_shape() -> None:
    board, clock = hostile_board()
    data = json.loads(statuspage.render_json(board.snapshot()))
    assert set(data) == {"schema", "fcmon", "now", "summary", "reload", "cert_thresholds_days",
                         "targets", "events"}
    assert data["schema"] == 1
    assert set(data["fcmon"]) == {"version", "started", "uptime_seconds"}
    assert (data["summary"]["up"], data["summary"]["targets"]) == (1, 3)
    assert data["reload"]["successful"] is False and HOSTILE in data["reload"]["error"]
    assert data["cert_thresholds_days"] == {"warning": 30.0, "critical": 7.0}
    bad, fresh, fine = data["targets"]  # worst first: down, not yet probed, up
    assert bad["server"] == {"version": f"FairCom DB {HOSTILE}", "hostname": "<img src=x onerror=alert(2)>",
                             "uuid": "u-1"}
    assert bad["server_seen"] == bad["last_probe"]["ended"]
    assert (bad["name"], bad["state"]) == ('ev"il<b>&', "down")
    assert fresh["state"] == "not_probed" and fresh["last_probe"] is None
    last = bad["last_probe"]
    assert last["server"] == bad["server"] and last["peer_address"] == "127.0.0.1:8443"
    assert last["failure"] == {"stage": "list_databases", "reason": "api_error",
                               "message": f"listDatabases: errorCode 12031: {HOSTILE}",
                               "first_check": runbook.FIRST_CHECK["api_error"],
                               "runbook": "https://fcmon.example/docs/runbook.md#api_error"}
    assert last["steps"][0] == {"step": "connect", "seconds": 0.0031}
    assert last["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    assert [(c["role"], c["level"]) for c in last["certificates"]] == [
        ("server", "expired"), ("client", "warning"), ("ca", "critical"), ("chain", "ok")]
    assert last["certificates"][0]["days_left"] == pytest.approx(-3.5, abs=0.01)
    assert last["certificates"][0]["alert"] == "FcmonServerCertExpired"
    assert last["certificates"][0]["runbook"] == "https://fcmon.example/docs/runbook.md#fcmonservercertexpired"
    assert last["calls"][1] == {"action": "listDatabases", "seconds": 0.002, "http_status": 400, "error_code": 12031,
                                "error_message": HOSTILE, "error_meaning": "12031 (authToken matches no session)"}
    assert last["calls"][0]["error_code"] == 0 and last["calls"][0]["error_meaning"] is None
    assert fresh["server"] is None
    assert fine["last_probe"]["failure"] is None
    assert [e["kind"] for e in data["events"]] == ["up", "down"]
    assert set(data["events"][0]) == {"time", "target", "kind", "text"}


# -- through the WSGI app: headers, and [web] basic auth like every path


def call(app: App, path: str, auth: Optional[str] = None) -> Tuple[str, Dict[str, str], bytes]:
    got: Dict[str, object] = {}

    def start_response(status: str, headers: List[Tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    environ = {"PATH_INFO": path, "QUERY_STRING": "", "REQUEST_METHOD": "GET"}
    if auth is not None:
        environ["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(auth.encode()).decode()
    body = b"".join(app(environ, start_response))
    return str(got["status"]), got["headers"], body  # type: ignore[return-value]


def make_app(board: StatusBoard, web: WebConfig = WebConfig()) -> App:
    return App(lambda: b"", lambda: True, lambda: True, lambda name: None, web, status=board.snapshot)


def test_app_serves_the_page_and_the_json_with_their_types() -> None:
    board, _ = hostile_board()
    status, headers, body = call(make_app(board), "/")
    assert status == "200 OK" and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert int(headers["Content-Length"]) == len(body) and b"fcmon status" in body
    status, headers, body = call(make_app(board), "/api/v1/status")
    assert status == "200 OK" and headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body)["summary"]["targets"] == 3


def test_page_and_json_need_basic_auth_when_configured() -> None:
    board, _ = hostile_board()
    app = make_app(board, WebConfig(basic_auth_username="prometheus", basic_auth_password="s3cret-x"))
    for path in ("/", "/api/v1/status"):
        status, headers, body = call(app, path)
        assert status == "401 Unauthorized" and HOSTILE.encode() not in body
        assert call(app, path, "prometheus:wrong")[0] == "401 Unauthorized"
        assert call(app, path, "prometheus:s3cret-x")[0] == "200 OK"


def test_large_fleet_renders() -> None:
    clock = Clock()
    board = StatusBoard("9.9.9", clock=clock)
    board.set_targets([target(f"t{i:04d}") for i in range(3000)])
    for i in range(3000):
        board.record(up(f"t{i:04d}", clock.now) if i % 7 else down(f"t{i:04d}", clock.now))
    body = statuspage.render_html(board.snapshot())
    assert len(re.findall(rb'<tr class="target ', body)) == 3000


def test_page_and_json_are_gzipped_when_asked() -> None:
    import gzip

    board, _ = hostile_board()
    app = make_app(board)
    for path in ("/", "/api/v1/status"):
        got: Dict[str, object] = {}
        environ = {"PATH_INFO": path, "QUERY_STRING": "", "REQUEST_METHOD": "GET",
                   "HTTP_ACCEPT_ENCODING": "gzip, deflate, br"}
        body = b"".join(app(environ, lambda status, headers: got.update(headers=dict(headers))))
        headers = got["headers"]
        assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"  # type: ignore[index]
        assert gzip.decompress(body) == call(app, path)[2]


def test_reload_error_line_holds_no_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the page shows of a rejected config: its problems on one line,
    never a value that may be a password."""
    from fcmon.config import ConfigError, load_config

    secret = "hunter2-Pa55-xyz"
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\ntimout = 3\n\n[target:prod]\nendpoint = https://db1.example.com/api\n"
                      f"password = {secret}\npassword = {secret}\nbad line {secret}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, {})
    line = one_line(err.value.problems)
    assert "\n" not in line and "duplicate key" in line and "timout" in line
    assert secret not in line


# -- one rule at the thresholds, for check, page, perfdata and the JSON


@pytest.mark.parametrize("days, level, nagios", [
    (30.0, "ok", "OK"), (29.999, "warning", "WARNING"), (7.0, "warning", "WARNING"),
    (6.999, "critical", "CRITICAL"), (0.0, "critical", "CRITICAL"), (-0.001, "expired", "CRITICAL"),
])
def test_the_threshold_boundary_is_the_same_everywhere(days: float, level: str, nagios: str) -> None:
    from fcmon.commands import check

    now = 1_800_000_000.0
    cert = CertInfo("server", "CN=db1", "aa", now + days * DAY)
    r = ProbeResult("t", now - 1, now, 0.01, None, certs=(cert,), databases=1)
    assert cert_level(days) == level
    assert check.STATUS_NAMES[check.judge(r, CERT_WARN_DAYS, CERT_CRIT_DAYS, now).status] == nagios
    # perfdata: `7:` alerts below 7, as the level does
    (perf,) = check.cert_perfdata(r, CERT_WARN_DAYS, CERT_CRIT_DAYS, now)
    value = float(perf.split("=")[1].split(";")[0])
    assert perf == f"'t_cert_server_days'={value:.2f};30:;7:" and value <= days < value + 0.01
    # what Nagios makes of the value agrees with the plugin's own status
    assert (value < 30, value < 7) == (level != "ok", level in ("critical", "expired"))
    # the page's badge and the JSON's level
    board, clock = board_with("t", clock=Clock(now))
    board.record(r)
    page = parse(statuspage.render_html(board.snapshot()))
    assert [a.get("data-level") for t, a in page.tags if t == "span" and a.get("data-level")] == [level]
    doc = json.loads(statuspage.render_json(board.snapshot()))
    assert doc["targets"][0]["last_probe"]["certificates"][0]["level"] == level


@pytest.mark.parametrize("days, text, level", [
    (7.0, "7 days left", "warning"), (6.99, "6 days left", "critical"), (29.99, "29 days left", "warning"),
    (30.0, "30 days left", "ok"),
])
def test_whole_days_never_cross_a_threshold_the_level_did_not(days: float, text: str, level: str) -> None:
    assert (statuspage.days_text(days), cert_level(days)) == (text, level)


def summary_board() -> Tuple[StatusBoard, Clock]:
    """Config order: ok, warning, down, critical (listener down), not probed."""
    from test_schema import _listener_round

    board, clock = board_with("fine", "renewal", "gone", "mqtt", "fresh")
    now = clock.now
    board.record(up("fine", now - 1, certs=(CertInfo("server", "CN=a", "1", now + 100 * DAY),)))
    board.record(up("renewal", now - 1, certs=(CertInfo("server", "CN=b", "2", now + 20 * DAY),)))
    board.record(down("gone", now - 1, certs=(CertInfo("client", "CN=c", "3", now - 2 * DAY),)))
    board.record(up("mqtt", now - 1))
    board.record_listeners(_listener_round("mqtt", now))
    return board, clock


def test_rows_are_worst_first_on_the_page_and_in_the_json() -> None:
    board, _ = summary_board()
    snap = board.snapshot()
    page = parse(statuspage.render_html(snap))
    rows = [a["data-target"] for t, a in page.tags if t == "tr" and "target" in (a.get("class") or "").split()]
    order = ["gone", "mqtt", "renewal", "fresh", "fine"]
    assert rows == order
    assert [t["name"] for t in json.loads(statuspage.render_json(snap))["targets"]] == order
    levels = {a["data-target"]: a["data-level"] for t, a in page.tags
              if t == "tr" and "target" in (a.get("class") or "").split()}
    assert levels == {"gone": "critical", "mqtt": "critical", "renewal": "warning", "fresh": "unknown",
                      "fine": "ok"}


def test_summary_and_title_say_what_is_wrong() -> None:
    board, clock = summary_board()
    board.record_reload(False, "[fcmon] timout: unknown key")
    page = parse(statuspage.render_html(board.snapshot()))
    text = " ".join(" ".join(page.text).split())
    items = [a["class"] for t, a in page.tags if t == "li" and "sum-" in (a.get("class") or "")]
    assert items == ["bad sum-down", "crit sum-cert-critical", "warn sum-cert-warning", "bad sum-listeners-down",
                     "bad sum-reload"]
    # the listener's certificate has 3 days left, the client's expired 2 days ago
    for said in ("\u2716 1 down", "\u203c 2 certificates critical (1 expired)", "\u26a0 1 certificate warning",
                 "\u2716 1 listener down", "\u2716 config reload failed"):
        assert said in text
    title = re.search(r"<title>(.*)</title>", statuspage.render_html(board.snapshot()).decode()).group(1)
    assert html.unescape(title) == ("fcmon: 1 down, 2 certificates critical (1 expired), 1 certificate warning, "
                     "1 listener down, config reload failed \u00b7 3/5 up")
    all_good, _ = board_with("a")
    all_good.record(up("a", clock.now))
    assert "<title>fcmon: 1/1 up</title>" in statuspage.render_html(all_good.snapshot()).decode()


def test_failures_and_alerts_link_to_their_runbook_sections() -> None:
    board, _ = summary_board()
    page = parse(statuspage.render_html(board.snapshot()))
    links = [a["href"] for t, a in page.tags if t == "a" and a.get("class") in ("runbook", "alert")]
    base = runbook.RUNBOOK_URL
    assert f"{base}#connect_refused" in links  # gone's reason and mqtt's listener wss9002
    assert f"{base}#fcmonclientcertexpired" in links  # gone's client certificate
    assert f"{base}#fcmonservercertexpiringsoon" in links  # renewal's server certificate, 20 days
    assert f"{base}#fcmonlistenercertexpiringcritical" in links  # mqtt's listener, 3 days
    assert f"{base}#fcmonlistenerdown" in links
    text = " ".join(" ".join(page.text).split())
    assert f"First check: {runbook.FIRST_CHECK['connect_refused']}" in text
    # critical and warning differ by symbol and word, not only colour
    assert "\u203c critical" in text and "\u26a0 warning" in text
