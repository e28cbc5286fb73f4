"""A real Prometheus scraping a real `fcmon run` probing the emulator.

- The shipped alert rules (with `for:` shortened to 0s) raise the
  certificate alert and the probe-failing alert for the right targets, and
  every dashboard query evaluates.
- The shipped hashmod example, with its addresses replaced by real fcmon
  instances: every target is probed by exactly one instance.
- `promtool check metrics` is silent (but for its note on days) on scrapes
  taken while targets fail.

The Prometheus configs are generated from prometheus/prometheus.example.yml
(only addresses, target lists and intervals are replaced), so the example
is what is tested.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import subprocess
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests

from fcmon import pki
from fcmon.emulator import Emulator, Fault, ListenerSpec

from support import PKI, FcmonProcess, free_port, require_tool, sample, scrape, target_section, wait_for
from test_alerts import (
    EXAMPLE,
    RULES,
    alert_rules,
    dashboard_queries,
    dashboard_variable_queries,
    load_yaml,
    run_tool,
)

pytestmark = pytest.mark.slow

DAYS_NOTE = 'fcmon_cert_expiry_days use base unit "seconds" instead of "days"'
LISTENER_DAYS_NOTE = 'fcmon_listener_cert_expiry_days use base unit "seconds" instead of "days"'


def fcmon_config(*sections: str, interval: float = 2, timeout: float = 1.5, schedule: bool = True) -> str:
    head = (
        "[fcmon]\n"
        "listen = 127.0.0.1:0\n"
        f"interval = {interval}\n"
        f"timeout = {timeout}\n"
        f"schedule = {'true' if schedule else 'false'}\n"
        "log_level = debug\n"
    )
    return head + "".join(sections)


def unreachable() -> Any:
    """Stands in for an emulator in target_section(): nothing listens there."""
    return types.SimpleNamespace(url=f"https://localhost:{free_port()}/api")


def host_port(metrics_url: str) -> str:
    m = re.match(r"^https?://([^/]+)/", metrics_url)
    assert m, metrics_url
    return m.group(1)


def example_jobs() -> Dict[str, Dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(EXAMPLE)["scrape_configs"]}


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' relabel `hashmod`: the last 8 bytes of the MD5, big-endian, mod modulus."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


class Prometheus:
    """`prometheus` as a process on loopback, with its own storage in tmp_path."""

    def __init__(self, binary: str, directory: Path, config: Dict[str, Any]):
        directory.mkdir(parents=True, exist_ok=True)
        self.config_file = directory / "prometheus.yml"
        # JSON is YAML: Prometheus reads it as its config.
        self.config_file.write_text(json.dumps(config, indent=2))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_file = directory / "prometheus.log"
        self._log = self.log_file.open("wb")
        self.session = requests.Session()
        self.session.trust_env = False
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(directory),
        )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-5000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.session.get(self.base + "/-/ready", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout, interval=0.2)

    def api(self, path: str, **params: Any) -> Any:
        r = self.session.get(self.base + "/api/v1/" + path, params=params, timeout=30)
        body = r.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> List[Dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.session.close()

    def __enter__(self) -> "Prometheus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prometheus_config(jobs: List[Dict[str, Any]], rule_files: Optional[List[str]] = None) -> Dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files or [],
        "scrape_configs": jobs,
    }


def rules_with_short_for(directory: Path) -> Path:
    """The shipped rule file, byte for byte but every `for:` set to 0s."""
    text, n = re.subn(r"(?m)^(\s+)for: \S+$", r"\g<1>for: 0s", RULES.read_text())
    assert n == len(alert_rules())
    path = directory / "fcmon-alerts.yml"
    path.write_text(text)
    return path


def firing(prom: Prometheus) -> List[Dict[str, Any]]:
    return [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]


# --------------------------------------------------------------------------


def test_alerts_fire_for_the_right_targets_and_dashboard_queries_evaluate(
    test_pki: PKI, emulator: Emulator, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    short = pki.make_server(test_pki.ca, days=3).write(tmp_path, "short")
    mqtts = pki.make_server(test_pki.ca, days=5).write(tmp_path, "mqtts")
    # Two listeners that listServices names: an MQTTS one whose certificate
    # expires in 5 days, and one that resets every handshake.
    listeners = [ListenerSpec("mqtts8883", "mqtts", mqtts.cert, mqtts.key),
                 ListenerSpec("mqttwss9002", "mqttwss", short.cert, short.key, mode="reset")]
    with Emulator(cert_file=short.cert, key_file=short.key, client_ca_file=test_pki.ca_file,
                  listeners=listeners) as short_emu:
        config = tmp_path / "fcmon.ini"
        config.write_text(fcmon_config(
            target_section(test_pki, short_emu, "short"),
            target_section(test_pki, emulator, "healthy"),
            target_section(test_pki, unreachable(), "down"),
            interval=3, timeout=2.5,
        ))
        with FcmonProcess("run", "-c", str(config)) as fc:
            address = host_port(fc.metrics_url())
            job = copy.deepcopy(example_jobs()["fcmon"])
            job["static_configs"] = [{"targets": [address]}]
            job["scrape_interval"] = "1s"
            rules = rules_with_short_for(tmp_path)
            with Prometheus(binary, tmp_path / "prom", prometheus_config([job], [str(rules)])) as prom:
                prom.wait_ready()

                def both_firing() -> Optional[List[Dict[str, Any]]]:
                    alerts = firing(prom)
                    names = {(a["labels"]["alertname"], a["labels"].get("target")) for a in alerts}
                    if {("FcmonServerCertExpiringCritical", "short"), ("FcmonProbeFailing", "down"),
                            ("FcmonListenerCertExpiringCritical", "short"), ("FcmonListenerDown", "short")} <= names:
                        return alerts
                    return None

                alerts = wait_for(both_firing, timeout=60, interval=0.5)

                cert = [a for a in alerts if a["labels"]["alertname"] == "FcmonServerCertExpiringCritical"]
                assert len(cert) == 1, cert
                labels = cert[0]["labels"]
                assert labels["target"] == "short" and labels["cert"] == "server"
                assert labels["severity"] == "critical" and labels["job"] == "fcmon"
                assert "CN=localhost" in labels["subject"]
                assert cert[0]["annotations"]["summary"].startswith(f"short: server certificate {labels['subject']} expires in 2d ")

                failing = [a for a in alerts if a["labels"]["alertname"] == "FcmonProbeFailing"]
                assert [a["labels"]["target"] for a in failing] == ["down"], failing
                labels = failing[0]["labels"]
                assert (labels["stage"], labels["reason"], labels["severity"]) == ("connect", "connect_refused", "critical")
                assert failing[0]["annotations"]["summary"] == "down: probe failing at connect (connect_refused)"
                assert "services.json" in failing[0]["annotations"]["description"]

                # The listener alerts name the discovered listener, its port and certificate.
                (lcert,) = [a for a in alerts if a["labels"]["alertname"] == "FcmonListenerCertExpiringCritical"]
                labels = lcert["labels"]
                assert (labels["listener"], labels["port"], labels["cert"]) == (
                    "mqtts8883", str(short_emu.listener("mqtts8883").port), "server"), labels
                assert lcert["annotations"]["summary"].startswith(
                    f"short: listener mqtts8883 ({labels['port']}) server certificate {labels['subject']} expires in 4d ")
                (ldown,) = [a for a in alerts if a["labels"]["alertname"] == "FcmonListenerDown"]
                assert (ldown["labels"]["listener"], ldown["labels"]["protocol"]) == ("mqttwss9002", "mqttwss")
                assert prom.query('fcmon_listener_failures_total{target="short",listener="mqttwss9002",'
                                  'reason="tls_handshake"} > 0')

                # The rules as Prometheus loaded them are what test_alerts.py checks.
                loaded = {r["name"]: r for g in prom.api("rules", type="alert")["groups"] for r in g["rules"]}
                shipped = alert_rules()
                assert set(loaded) == set(shipped)
                for name, rule in shipped.items():
                    assert loaded[name]["labels"] == rule["labels"], name
                    assert loaded[name]["annotations"] == rule["annotations"], name
                    assert loaded[name]["health"] == "ok", loaded[name]

                # Every dashboard query evaluates; all but the error panels have data here.
                empty = []
                for title, expr in dashboard_queries():
                    if not prom.query(expr):
                        empty.append(title)
                assert sorted(empty) == ["API errors"], empty
                for name, selector, label in dashboard_variable_queries():
                    values = prom.api(f"label/{label}/values", **{"match[]": selector})
                    expected = {"fcmon"} if name == "job" else {"short", "healthy", "down"}
                    assert set(values) == expected, (name, values)

                # Whatever else fired, nothing about the healthy target, and the
                # short-lived certificate's target only has its certificate alert.
                per_target = {(a["labels"]["alertname"], a["labels"]["target"])
                              for a in firing(prom) if "target" in a["labels"]}
                assert per_target == {("FcmonServerCertExpiringCritical", "short"),
                                      ("FcmonListenerCertExpiringCritical", "short"), ("FcmonListenerDown", "short"),
                                      ("FcmonProbeFailing", "down")}, prom.api("alerts")
            assert fc.stop() == 0, fc.text()
    assert emulator.open_sessions() == 0


def test_hashmod_example_probes_every_target_on_exactly_one_instance(
    test_pki: PKI, emulator: Emulator, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    jobs = example_jobs()
    probe_job, shards_job = copy.deepcopy(jobs["fcmon-probe"]), copy.deepcopy(jobs["fcmon-shards"])
    (rule,) = [r for r in probe_job["relabel_configs"] if r.get("action") == "hashmod"]
    modulus = int(rule["modulus"])
    shard_rules = {r["regex"]: r for r in probe_job["relabel_configs"]
                   if r.get("source_labels") == [rule["target_label"]] and r.get("target_label") == "__address__"}
    assert set(shard_rules) == {str(i) for i in range(modulus)}

    names = [f"db-{i}" for i in range(2 * modulus)]
    assert {hashmod(n, modulus) for n in names} == set(range(modulus)), "pick names that fill every shard"
    config = tmp_path / "fcmon.ini"
    config.write_text(fcmon_config(*(target_section(test_pki, emulator, n) for n in names), schedule=False))
    instances = [FcmonProcess("run", "-c", str(config)) for _ in range(modulus)]
    try:
        urls = [fc.metrics_url() for fc in instances]
        addresses = [host_port(u) for u in urls]
        for shard, r in shard_rules.items():
            r["replacement"] = addresses[int(shard)]
        probe_job["static_configs"] = [{"targets": names}]
        probe_job["scrape_interval"] = "2s"
        probe_job["scrape_timeout"] = "2s"
        shards_job["static_configs"] = [{"targets": addresses}]
        shards_job["scrape_interval"] = "1s"

        with Prometheus(binary, tmp_path / "prom", prometheus_config([probe_job, shards_job])) as prom:
            prom.wait_ready()

            def all_up() -> bool:
                up = prom.query('fcmon_up{job="fcmon-probe"}')
                shards_up = prom.query('up{job="fcmon-shards"} == 1')
                return (sorted(s["metric"]["target"] for s in up if s["value"][1] == "1") == sorted(names)
                        and len(shards_up) == modulus)

            wait_for(all_up, timeout=60, interval=0.5)
            for s in prom.query('fcmon_up{job="fcmon-probe"}'):
                assert s["metric"]["instance"] == s["metric"]["target"], s
            # Which instance Prometheus sends each name to is the hashmod of the name.
            active = [t for t in prom.api("targets", state="active")["activeTargets"]
                      if t["labels"]["job"] == "fcmon-probe"]
            assert sorted(t["labels"]["instance"] for t in active) == sorted(names)
            for t in active:
                name = t["labels"]["instance"]
                assert t["scrapeUrl"] == f"http://{addresses[hashmod(name, modulus)]}/probe?target={name}", t
            # The shards job keeps the instances' own series, not their per-target ones.
            assert prom.query('fcmon_up{job="fcmon-shards"}') == []
            assert len(prom.query('fcmon_build_info{job="fcmon-shards"}')) == modulus

        # Prometheus stopped: the counts are final.
        probes = [[sample(scrape(u), "fcmon_probes_total", target=n) or 0 for n in names] for u in urls]
        for j, name in enumerate(names):
            probed_by = [i for i in range(modulus) if probes[i][j] > 0]
            assert probed_by == [hashmod(name, modulus)], (name, probes)
        for fc in instances:
            assert fc.stop() == 0, fc.text()
    finally:
        for fc in instances:
            fc.__exit__()
    assert emulator.open_sessions() == 0


def test_promtool_check_metrics_is_silent_during_faults(test_pki: PKI, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    expired = pki.make_server(
        test_pki.ca, days=1, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    ).write(tmp_path, "expired")
    # Private emulators: the faults leak sessions, which must not reach the shared one.
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as faulty, \
            Emulator(cert_file=expired.cert, key_file=expired.key, client_ca_file=test_pki.ca_file) as old:
        faulty.set_fault("listDatabases", Fault(error_code=12013))
        # not 12031 for deleteSession: that one means the session is already gone, not a leak
        faulty.set_fault("deleteSession", Fault(error_code=12012))
        config = tmp_path / "fcmon.ini"
        config.write_text(fcmon_config(
            target_section(test_pki, faulty, "faulty"),
            target_section(test_pki, old, "expired"),
            target_section(test_pki, unreachable(), "down"),
        ))
        with FcmonProcess("run", "-c", str(config)) as fc:
            url = fc.metrics_url()
            base = url.rsplit("/", 1)[0]

            def during_faults() -> Optional[str]:
                text = scrape(url)
                if ((sample(text, "fcmon_session_leaks_total", target="faulty") or 0) > 0
                        and sample(text, "fcmon_api_errors_total", target="faulty", action="listDatabases") is not None
                        and sample(text, "fcmon_probe_failures_total", target="expired", reason="tls_verify") is not None
                        and sample(text, "fcmon_probe_failures_total", target="down", reason="connect_refused") is not None):
                    return text
                return None

            text = wait_for(during_faults, timeout=60, interval=0.2)
            assert (sample(text, "fcmon_cert_expiry_days", target="expired", cert="server") or 0) < 0
            scrapes: List[Tuple[str, str]] = [("/metrics", text)]
            for name in ("faulty", "expired", "down"):
                scrapes.append((f"/probe?target={name}", scrape(f"{base}/probe?target={name}")))
            for where, exposition in scrapes:
                _code, out = run_tool(promtool, "check", "metrics", stdin=exposition)
                lines = [line for line in out.splitlines() if line.strip()]
                # Client and CA certificates are reported even for "down".
                # (the listener note only where a listener certificate is reported)
                assert lines in ([DAYS_NOTE], [DAYS_NOTE, LISTENER_DAYS_NOTE]), (where, out)
            assert fc.stop() == 0, fc.text()
        assert "Traceback" not in fc.text()
