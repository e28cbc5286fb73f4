"""The shipped Prometheus files: alert rules (promtool check + promtool unit
tests), the example scrape config, the Grafana dashboard.

The end-to-end test compares the rules read here with the rules as the real
Prometheus loaded them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from support import ROOT, markdown_anchors, require_tool

PROM_DIR = ROOT / "prometheus"
RULES = PROM_DIR / "fcmon-alerts.yml"
RULE_TESTS = PROM_DIR / "fcmon-alerts.test.yml"
EXAMPLE = PROM_DIR / "prometheus.example.yml"
DASHBOARD = ROOT / "grafana" / "fcmon-dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

#: Every runbook_url starts with this base; docs/runbook.md and the rule file's
#: header tell the operator to replace it (one sed) with where they publish it.
RUNBOOK_BASE = "https://fcmon.example/docs/runbook.md"

#: Alerts about an fcmon instance or job rather than one FairCom target.
NOT_PER_TARGET = {"FcmonDown", "FcmonAbsent", "FcmonConfigReloadFailed"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------
# Helpers shared with test_prometheus_e2e.py


def alert_rules() -> Dict[str, Dict[str, Any]]:
    """Alert name -> rule, from the shipped rule file."""
    doc = load_yaml(RULES)
    rules: Dict[str, Dict[str, Any]] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert "alert" in rule, f"recording rule in the alert file: {rule}"
            assert rule["alert"] not in rules, f"duplicate alert {rule['alert']}"
            rules[rule["alert"]] = rule
    return rules


#: What Grafana substitutes in the dashboard's queries, with stand-ins that
#: select everything (the dashboard's "All" is ".*").
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${job}": ".*",
    "${target}": ".*",
    "$job": ".*",
    "$target": ".*",
}


def grafana_substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def dashboard() -> Dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> List[Tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every panel target."""
    out: List[Tuple[str, str]] = []

    def walk(panels: List[Dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((panel["title"], grafana_substitute(target["expr"])))

    walk(dashboard()["panels"])
    return out


def dashboard_variable_queries() -> List[Tuple[str, str, str]]:
    """(variable name, series selector, label) for every label_values() variable."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.match(r"^label_values\((.+),\s*(\w+)\)$", query)
        assert m, f"variable {var['name']}: unexpected query {query!r}"
        out.append((var["name"], grafana_substitute(m.group(1)), m.group(2)))
    return out


def run_tool(*args: str, cwd: Path = PROM_DIR, stdin: Optional[str] = None) -> Tuple[int, str]:
    proc = subprocess.run(list(args), cwd=str(cwd), input=stdin, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


# --------------------------------------------------------------------------
# The reader itself


# --------------------------------------------------------------------------
# Alert rules


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    code, out = run_tool(promtool, "check", "rules", str(RULES))
    assert code == 0, out
    m = re.search(r"SUCCESS: (\d+) rules found", out)
    assert m, out
    assert int(m.group(1)) == len(alert_rules()), out


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    code, out = run_tool(promtool, "test", "rules", RULE_TESTS.name)
    assert code == 0, out
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_required_alerts_exist() -> None:
    rules = alert_rules()
    for role in ("Server", "Client", "CA"):
        for level in ("ExpiringSoon", "ExpiringCritical", "Expired"):
            assert f"Fcmon{role}Cert{level}" in rules
    for level in ("ExpiringSoon", "ExpiringCritical", "Expired"):
        assert f"FcmonListenerCert{level}" in rules
    for name in ("FcmonListenerDown", "FcmonProbeFailing", "FcmonProbesStale", "FcmonDown", "FcmonAbsent",
                 "FcmonSessionsLeaking", "FcmonApiErrors", "FcmonListDatabasesSlow",
                 "FcmonConfigReloadFailed", "FcmonInternalError"):
        assert name in rules
    assert NOT_PER_TARGET <= set(rules)


def test_every_alert_has_severity_summary_and_description() -> None:
    for name, rule in alert_rules().items():
        labels = rule.get("labels") or {}
        annotations = rule.get("annotations") or {}
        assert labels.get("severity") in ("warning", "critical"), name
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        summary, description = annotations["summary"], annotations["description"]
        assert "\n" not in summary, name
        if name in NOT_PER_TARGET:
            assert "$labels.instance" in summary or "job" in summary, name
        else:
            assert "{{ $labels.target }}" in summary, name
        if "fcmon_cert_not_after_timestamp_seconds" in rule["expr"]:
            assert "{{ $labels.subject }}" in summary, name
        assert "Check first:" in description, name
        assert isinstance(rule.get("for"), str), f"{name}: give `for:` explicitly"


def test_every_alert_links_its_runbook_section() -> None:
    doc = RUNBOOK.read_text()
    anchors = markdown_anchors(doc)
    assert len(anchors) == len(set(anchors)), "duplicate headings in docs/runbook.md"
    header = RULES.read_text().split("groups:")[0]
    assert RUNBOOK_BASE in header and "docs/runbook.md" in header, "the rule file must say how to rebase the links"
    assert RUNBOOK_BASE in doc
    for name, rule in alert_rules().items():
        url = (rule.get("annotations") or {}).get("runbook_url", "")
        # One base for all (a single sed rebases them), then the alert's own section.
        assert url == f"{RUNBOOK_BASE}#{name.lower()}", f"{name}: runbook_url {url!r}"
        assert name.lower() in anchors, f"{name}: no section '## {name}' in docs/runbook.md"
        section = doc.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means:**", "**Check first:**", "**Fixed when:**"):
            assert part in section, f"{name}: runbook section lacks {part}"
    # Links between sections stay valid too.
    for target in re.findall(r"\]\(#([^)]+)\)", doc):
        assert target in anchors, f"broken link #{target} in docs/runbook.md"


def test_markdown_anchors_follow_github() -> None:
    assert markdown_anchors("## FcmonProbeFailing\n### What it means, and why!\n") == [
        "fcmonprobefailing", "what-it-means-and-why"]


def test_certificate_alerts_use_the_base_unit_and_split_the_thresholds() -> None:
    rules = alert_rules()
    for name, rule in rules.items():
        assert "fcmon_cert_expiry_days" not in rule["expr"], name
    for role, selector in (("Server", 'cert=~"server|chain"'), ("Client", 'cert="client"'),
                           ("CA", 'cert="ca"')):
        soon = rules[f"Fcmon{role}CertExpiringSoon"]
        critical = rules[f"Fcmon{role}CertExpiringCritical"]
        expired = rules[f"Fcmon{role}CertExpired"]
        for rule in (soon, critical, expired):
            assert selector in rule["expr"], rule["alert"]
        assert "< 30 * 86400 >= 7 * 86400" in soon["expr"]
        assert "< 7 * 86400 >= 0" in critical["expr"]
        assert soon["labels"]["severity"] == "warning"
        assert critical["labels"]["severity"] == expired["labels"]["severity"] == "critical"


#: Certificate alert families: (alert name part, metric, extra labels), one per
#: cert label value the rules select.
CERT_FAMILIES = (
    ("Server", "fcmon_cert_not_after_timestamp_seconds", {"cert": "server"}),
    ("Server", "fcmon_cert_not_after_timestamp_seconds", {"cert": "chain"}),
    ("Client", "fcmon_cert_not_after_timestamp_seconds", {"cert": "client"}),
    ("CA", "fcmon_cert_not_after_timestamp_seconds", {"cert": "ca"}),
    ("Listener", "fcmon_listener_cert_not_after_timestamp_seconds",
     {"cert": "server", "listener": "mqtts8883", "port": "8883"}),
    ("Listener", "fcmon_listener_cert_not_after_timestamp_seconds",
     {"cert": "chain", "listener": "mqtts8883", "port": "8883"}),
)


def test_certificate_alerts_fire_at_the_level_fcmon_levels_gives(tmp_path: Path) -> None:
    """One rule (fcmon/probe/levels.py) for the alerts too: for every certificate
    family, at each threshold, one second either side and a little inside,
    the alert firing is the one for the level cert_level gives (none for
    ok). Each series keeps its seconds left constant (not_after grows with
    time()), so every `for:` has elapsed at 30m."""
    from fcmon.probe.levels import DEFAULT_THRESHOLDS, SECONDS_PER_DAY, cert_level

    promtool = require_tool("promtool")
    day = int(SECONDS_PER_DAY)
    warn, crit = int(DEFAULT_THRESHOLDS.warn_days * day), int(DEFAULT_THRESHOLDS.crit_days * day)
    lefts = [400 * day, warn + 1, warn, warn - 1, warn - day // 100, crit + 1, crit, crit - 1,
             crit - day // 100, 1, 0, -1, -crit]
    suffix = {"warning": "ExpiringSoon", "critical": "ExpiringCritical", "expired": "Expired"}
    rules = alert_rules()
    series, expected = [], []
    levels_seen = set()
    for f, (role, metric, extra) in enumerate(CERT_FAMILIES):
        for i, left in enumerate(lefts):
            labels = {"target": f"t{f}_{i}", "subject": "CN=x", "serial": f"s{f}_{i}", **extra}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append({"series": f"{metric}{{{text}}}", "values": f"{left}+60x40"})
            level = cert_level(left / SECONDS_PER_DAY)
            levels_seen.add((left, level))
            if level == "ok":
                continue
            name = f"Fcmon{role}Cert{suffix[level]}"
            severity = rules[name]["labels"]["severity"]
            expected.append({"labels": f'ALERTS{{alertname="{name}",alertstate="firing",severity="{severity}",{text}}}',
                             "value": 1})
    # the boundaries themselves: exactly 30 days ok, exactly 7 a warning, exactly 0 critical
    assert {(warn, "ok"), (warn - 1, "warning"), (crit, "warning"), (crit - 1, "critical"),
            (0, "critical"), (-1, "expired")} <= levels_seen
    doc = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'ALERTS{alertstate="firing",alertname=~"Fcmon(Server|Client|CA|Listener)Cert.*"}',
                "eval_time": "30m",
                "exp_samples": expected,
            }],
        }],
    }
    test_file = tmp_path / "levels.test.yml"
    test_file.write_text(yaml.safe_dump(doc))
    code, out = run_tool(promtool, "test", "rules", str(test_file), cwd=tmp_path)
    assert code == 0 and "SUCCESS" in out, out


def test_every_alert_fires_and_stays_silent_in_the_unit_tests() -> None:
    rules = alert_rules()
    doc = load_yaml(RULE_TESTS)
    assert doc["rule_files"] == [RULES.name]
    fired: Dict[str, int] = {}
    silent: Dict[str, int] = {}
    for test in doc["tests"]:
        for case in test.get("alert_rule_test") or []:
            name = case["alertname"]
            assert name in rules, f"unit test for unknown alert {name}"
            expected = case.get("exp_alerts") or []
            (fired if expected else silent)[name] = (fired if expected else silent).get(name, 0) + 1
            for alert in expected:
                assert alert["exp_labels"]["severity"] == rules[name]["labels"]["severity"]
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                assert alert["exp_annotations"]["runbook_url"] == rules[name]["annotations"]["runbook_url"]
    assert sorted(set(rules) - set(fired)) == [], "alerts never shown firing"
    assert sorted(set(rules) - set(silent)) == [], "alerts never shown silent"


# --------------------------------------------------------------------------
# Example scrape config


def test_example_config_is_valid() -> None:
    promtool = require_tool("promtool")
    code, out = run_tool(promtool, "check", "config", EXAMPLE.name)
    assert code == 0, out


def test_example_hashmod_shards_are_consistent() -> None:
    jobs = {j["job_name"]: j for j in load_yaml(EXAMPLE)["scrape_configs"]}
    assert {"fcmon", "fcmon-probe", "fcmon-shards"} <= set(jobs)
    probe = jobs["fcmon-probe"]
    assert probe["metrics_path"] == "/probe"
    hashmods = [r for r in probe["relabel_configs"] if r.get("action") == "hashmod"]
    assert len(hashmods) == 1 and hashmods[0]["source_labels"] == ["__address__"]
    modulus = hashmods[0]["modulus"]
    assert modulus >= 2
    shards = {r["regex"]: r["replacement"] for r in probe["relabel_configs"]
              if r.get("source_labels") == [hashmods[0]["target_label"]]}
    assert set(shards) == {str(i) for i in range(modulus)}
    shard_targets = [t for sc in jobs["fcmon-shards"]["static_configs"] for t in sc["targets"]]
    assert sorted(shard_targets) == sorted(shards.values())
    assert any(r.get("target_label") == "__param_target" for r in probe["relabel_configs"])
    assert any(r.get("target_label") == "instance" for r in probe["relabel_configs"])


# --------------------------------------------------------------------------
# Grafana dashboard


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    board = dashboard()
    titles = [p["title"] for p in board["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
    queries = dashboard_queries()
    exprs = " ".join(q for _, q in queries)
    for needed in ("fcmon_up", "fcmon_step_duration_seconds", "fcmon_cert_not_after_timestamp_seconds",
                   "fcmon_probe_failures_total"):
        assert needed in exprs
    # promtool parses PromQL offline as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, (_, q) in enumerate(queries)
    ] + [
        {"record": f"dashboard:variable_{name}", "expr": selector}
        for name, selector, _ in dashboard_variable_queries()
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    code, out = run_tool(promtool, "check", "rules", str(path))
    assert code == 0, out


def test_dashboard_colours_certificates_as_levels_does() -> None:
    """Grafana colours a value by the last step at or below it: red below 7
    days, orange from exactly 7 (a warning, as fcmon/probe/levels.py says) and
    green from exactly 30 (ok). Every panel showing days left uses these."""
    from fcmon.probe.levels import DEFAULT_THRESHOLDS

    def walk(panels: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return [q for p in panels for q in [p] + walk(p.get("panels", []))]

    days_panels = [p for p in walk(dashboard()["panels"])
                   if any("cert_not_after_timestamp_seconds" in t["expr"] and "/ 86400" in t["expr"]
                          for t in p.get("targets", []))]
    assert len(days_panels) >= 2, "server and listener certificates"
    for panel in days_panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]
        assert steps["mode"] == "absolute", panel["title"]
        assert [(s["color"], s["value"]) for s in steps["steps"]] == [
            ("red", None), ("orange", DEFAULT_THRESHOLDS.crit_days), ("green", DEFAULT_THRESHOLDS.warn_days)
        ], panel["title"]
