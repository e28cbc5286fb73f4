"""The runbook's anchors, as the alert rules and the status page use them (fcmon/runbook.py)."""

from __future__ import annotations

import re

import pytest
import yaml

from fcmon import runbook
from fcmon.listeners import LISTENER_REASONS
from fcmon.result import CERT_ROLES, REASONS

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
                  runbook.target_alert("connect_refused"), runbook.target_alert("internal")):
        assert alert in rules
