"""The runbook's anchors, as the alert rules and the status page use them (fcmon/runbook.py)."""

from __future__ import annotations

import re

import pytest
import yaml

from fcmon import runbook
from fcmon.probe.listeners import LISTENER_REASONS
from fcmon.probe.result import CERT_ROLES, REASONS

from support import ROOT, markdown_anchors

RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()


def _rules() -> dict:
    doc = yaml.safe_load((ROOT / "prometheus" / "fcmon-alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _section(anchor: str) -> str:
    """The text under the heading whose anchor this is, up to the next heading."""
    parts = re.split(r"^(#{1,6} .*)$", RUNBOOK, flags=re.M)
    for i in range(1, len(parts), 2):
        if markdown_anchors(parts[i]) == [anchor]:
            return parts[i + 1]
    raise AssertionError(f"docs/runbook.md has no section #{anchor}")


def test_every_alert_links_to_its_section_with_the_shared_url() -> None:
    anchors = markdown_anchors(RUNBOOK)
    for alert, rule in _rules().items():
        assert rule["annotations"]["runbook_url"] == runbook.alert_url(alert), alert
        assert alert.lower() in anchors, alert


@pytest.mark.parametrize("reason", sorted(set(REASONS) | set(LISTENER_REASONS)))
def test_every_reason_has_a_section_that_says_its_first_check(reason: str) -> None:
    section = _section(reason)
    first = runbook.FIRST_CHECK[reason]
    assert f"**Check first:** {first}" in section, reason
    assert "\n" not in first and len(first) < 120  # one line on the page
    assert runbook.reason_url(reason) == f"{runbook.RUNBOOK_URL}#{reason}"


def test_certificate_levels_name_alerts_that_exist() -> None:
    rules = _rules()
    for role in CERT_ROLES:
        for level in ("warning", "critical", "expired"):
            for listener in (False, True):
                alert = runbook.cert_alert(role, level, listener)
                assert alert in rules, (role, level, listener)
                assert rules[alert]["labels"]["severity"] == ("warning" if level == "warning" else "critical")
        assert runbook.cert_alert(role, "ok") is None
    assert runbook.cert_alert("chain", "critical") == "FcmonServerCertExpiringCritical"
    assert runbook.cert_alert("server", "warning", listener=True) == "FcmonListenerCertExpiringSoon"
    for alert in (runbook.LISTENER_DOWN_ALERT, runbook.SESSIONS_LEAKING_ALERT, runbook.RELOAD_FAILED_ALERT,
                  "FcmonProbeFailing", "FcmonInternalError"):  # a failing target; reason internal
        assert alert in rules


def test_runbook_url_moves_every_link_of_the_page_and_the_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from fcmon.web import statuspage
    from fcmon.config import ConfigError, load_config
    from fcmon.export.status import StatusBoard

    from test_status import Clock, down, target

    base = "https://git.example.com/ops/fcmon/blob/v0.2.0/docs/runbook.md"
    config = tmp_path / "config.ini"
    config.write_text(f"[fcmon]\nrunbook_url = {base}\n[target:a]\nendpoint = https://db.example.com/api\n")
    assert load_config(config, {}).runbook_url == base
    for bad in ("git.example.com/runbook.md", f"{base}#x", "ftp://x/runbook.md", "https://x/a b"):
        config.write_text(f"[fcmon]\nrunbook_url = {bad}\n")
        with pytest.raises(ConfigError, match=r"\[fcmon\] runbook_url: .*expected the http\(s\) URL"):
            load_config(config, {})
    clock = Clock()
    board = StatusBoard("9.9.9", clock=clock)
    board.set_runbook_url(base)
    board.set_targets([target("a")])
    board.record(down("a", clock.now))
    body = statuspage.render_html(board.snapshot()).decode()
    assert f'href="{base}#connect_refused"' in body and runbook.RUNBOOK_URL not in body
    doc = json.loads(statuspage.render_json(board.snapshot()))
    assert doc["targets"][0]["last_probe"]["failure"]["runbook"] == f"{base}#connect_refused"
