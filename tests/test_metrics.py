"""The collector: every series of the contract, promtool-clean, removed targets vanish."""

from __future__ import annotations

import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from fcmon.config import TargetConfig
from fcmon.probe.listeners import Listener, ListenerResult, ListenerRound
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.result import CallResult, CertInfo, Failure, ProbeResult, ServerInfo

from support import require_tool

NOW = 1_800_000_000.0


def target(name: str) -> TargetConfig:
    return TargetConfig(name=name, endpoint=f"https://{name}.example:8443/api", username="ADMIN",
                        password="hunter2-secret")


def healthy(name: str, ended: float = NOW) -> ProbeResult:
    return ProbeResult(
        target=name, started=ended - 0.02, ended=ended, duration=0.02,
        steps=(("connect", 0.004), ("create_session", 0.006), ("list_databases", 0.005),
               ("delete_session", 0.005)),
        calls=(CallResult("createSession", 0.006, 0), CallResult("listDatabases", 0.005, 0),
               CallResult("deleteSession", 0.005, 0)),
        databases=3,
        certs=(CertInfo("server", "CN=db1", "1a", NOW + 10 * 86400),
               CertInfo("chain", "CN=Intermediate", "2b", NOW + 100 * 86400),
               CertInfo("client", "CN=ADMIN", "3c", NOW + 30 * 86400),
               CertInfo("ca", "CN=Root", "4d", NOW + 3650 * 86400)),
        tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384",
        server=ServerInfo('FairCom EDGE "4.1"', f"{name}-host", "uuid-1"),
    )


def failed(name: str, ended: float = NOW) -> ProbeResult:
    return ProbeResult(
        target=name, started=ended - 0.5, ended=ended, duration=0.5,
        failure=Failure("list_databases", "api_error", "listDatabases: errorCode 12031"),
        steps=(("connect", 0.004), ("create_session", 0.006), ("list_databases", 0.005),
               ("delete_session", 0.3)),
        calls=(CallResult("createSession", 0.006, 0), CallResult("listDatabases", 0.005, 12031),
               CallResult("deleteSession", 0.3, None)),
        session_leaked=True,
    )


def listener_round(name: str, discovery: object = True, gone: bool = False) -> ListenerRound:
    """mqtts up with a certificate expiring in 5 days, wss refused (tls_verify,
    expired 2 days ago); `gone`: mqtts alone, wss no longer discovered."""
    mqtts = ListenerResult(Listener("mqtts8883", 8883, "mqtts"), NOW, 0.01, certs=(
        CertInfo("server", "CN=db1", "5e", NOW + 5 * 86400), CertInfo("chain", 'CN="odd\\ca"', "6f", NOW + 900 * 86400)),
        tls_version="TLSv1.3")
    wss = ListenerResult(Listener('w"ss', 9002, "mqttwss"), NOW, 0.02, "tls_verify", "expired",
                         certs=(CertInfo("server", "CN=db1", "7a", NOW - 2 * 86400),))
    return ListenerRound(name, discovery, "", (mqtts,) if gone else (mqtts, wss), NOW)  # type: ignore[arg-type]


def registry_for(store: MetricsStore, **kwargs) -> CollectorRegistry:  # type: ignore[no-untyped-def]
    reg = CollectorRegistry()
    reg.register(FcmonCollector(store, clock=lambda: NOW, **kwargs))
    return reg


def test_healthy_series() -> None:
    store = MetricsStore()
    store.set_targets([target("a")])
    store.record(healthy("a"))
    store.record_reload(True, NOW - 5)
    reg = registry_for(store)
    v = reg.get_sample_value
    assert v("fcmon_up", {"target": "a"}) == 1
    assert v("fcmon_probe_duration_seconds", {"target": "a"}) == pytest.approx(0.02)
    assert v("fcmon_step_duration_seconds", {"target": "a", "step": "list_databases"}) == 0.005
    assert v("fcmon_databases", {"target": "a"}) == 3
    assert v("fcmon_probes_total", {"target": "a"}) == 1
    assert v("fcmon_last_probe_timestamp_seconds", {"target": "a"}) == NOW
    assert v("fcmon_last_success_timestamp_seconds", {"target": "a"}) == NOW
    labels = {"target": "a", "cert": "server", "subject": "CN=db1", "serial": "1a"}
    assert v("fcmon_cert_expiry_days", labels) == pytest.approx(10)
    assert v("fcmon_cert_not_after_timestamp_seconds", labels) == NOW + 10 * 86400
    assert v("fcmon_tls_info", {"target": "a", "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}) == 1
    assert v("fcmon_server_info", {"target": "a", "version": 'FairCom EDGE "4.1"', "hostname": "a-host"}) == 1
    assert v("fcmon_target_info", {"target": "a", "endpoint": "https://a.example:8443/api", "username": "ADMIN"}) == 1
    assert v("fcmon_request_duration_seconds_bucket", {"target": "a", "action": "createSession", "le": "0.005"}) == 0
    assert v("fcmon_request_duration_seconds_bucket", {"target": "a", "action": "createSession", "le": "0.01"}) == 1
    assert v("fcmon_request_duration_seconds_bucket", {"target": "a", "action": "createSession", "le": "+Inf"}) == 1
    assert v("fcmon_config_last_reload_successful", {}) == 1
    assert v("fcmon_config_last_reload_success_timestamp_seconds", {}) == NOW - 5
    assert v("fcmon_session_leaks_total", {"target": "a"}) == 0
    assert v("fcmon_build_info", {"version": pytest.importorskip("fcmon").__version__,
                                  "python": __import__("platform").python_version()}) == 1
    # The password is no label value anywhere.
    assert b"hunter2-secret" not in generate_latest(reg)


def test_failure_series_and_counters() -> None:
    store = MetricsStore()
    store.set_targets([target("a")])
    store.record(healthy("a", NOW - 60))
    store.record(failed("a"))
    store.record_skipped("a", "still_running")
    reg = registry_for(store)
    v = reg.get_sample_value
    assert v("fcmon_up", {"target": "a"}) == 0
    assert v("fcmon_probe_failures_total", {"target": "a", "stage": "list_databases", "reason": "api_error"}) == 1
    assert v("fcmon_api_errors_total", {"target": "a", "action": "listDatabases", "code": "12031"}) == 1
    assert v("fcmon_api_error_code", {"target": "a", "action": "listDatabases"}) == 12031
    # deleteSession gave no errorCode this time: no stale value is shown.
    assert v("fcmon_api_error_code", {"target": "a", "action": "deleteSession"}) is None
    assert v("fcmon_session_leaks_total", {"target": "a"}) == 1
    assert v("fcmon_probes_total", {"target": "a"}) == 2
    assert v("fcmon_probes_skipped_total", {"target": "a", "reason": "still_running"}) == 1
    assert v("fcmon_last_success_timestamp_seconds", {"target": "a"}) == NOW - 60
    # The databases gauge keeps the last successful listing.
    assert v("fcmon_databases", {"target": "a"}) == 3
    # Certificates come from the last probe only.
    assert v("fcmon_cert_expiry_days", {"target": "a", "cert": "server", "subject": "CN=db1", "serial": "1a"}) is None


def test_listener_series() -> None:
    store = MetricsStore()
    store.set_targets([target("a")])
    store.record_listeners(listener_round("a"))
    store.record_listeners(listener_round("a"))
    text = generate_latest(registry_for(store)).decode()
    from support import sample

    assert sample(text, "fcmon_listener_up", target="a", listener="mqtts8883", port="8883", protocol="mqtts") == 1
    assert sample(text, "fcmon_listener_up", target="a", listener='w"ss', port="9002", protocol="mqttwss") == 0
    assert sample(text, "fcmon_listener_cert_expiry_days", target="a", listener="mqtts8883", port="8883",
                  cert="server", subject="CN=db1", serial="5e") == 5
    assert sample(text, "fcmon_listener_cert_not_after_timestamp_seconds", target="a", listener='w"ss',
                  cert="server") == NOW - 2 * 86400
    assert sample(text, "fcmon_listener_cert_expiry_days", target="a", listener='w"ss', cert="server") == -2
    assert sample(text, "fcmon_listener_failures_total", target="a", listener='w"ss', reason="tls_verify") == 2
    assert sample(text, "fcmon_listener_discovery_success", target="a") == 1
    assert sample(text, "fcmon_listeners", target="a") == 2
    store.record_listeners(listener_round("a", gone=True))
    text = generate_latest(registry_for(store)).decode()
    assert 'w\\"ss' not in text and sample(text, "fcmon_listeners", target="a") == 1


def test_removed_target_series_vanish() -> None:
    store = MetricsStore()
    store.set_targets([target("a"), target("b")])
    store.record(healthy("a"))
    store.record(failed("b"))
    store.set_targets([target("a")])
    store.record(healthy("b"))  # a probe of b that was in flight when it was removed
    text = generate_latest(registry_for(store)).decode()
    assert 'target="a"' in text
    assert 'target="b"' not in text


def test_only_target_limits_output() -> None:
    store = MetricsStore()
    store.set_targets([target("a"), target("b")])
    store.record(healthy("a"))
    store.record(healthy("b"))
    text = generate_latest(registry_for(store, only_target="b")).decode()
    assert 'target="b"' in text and 'target="a"' not in text
    assert "fcmon_build_info" not in text


def test_promtool_check_metrics_is_silent_but_for_days() -> None:
    promtool = require_tool("promtool")
    store = MetricsStore()
    store.set_targets([target("a"), target("b"), target("never")])
    store.record(healthy("a"))
    store.record(failed("b"))
    store.record_listeners(listener_round("a"))
    store.record_reload(False, NOW)
    text = generate_latest(registry_for(store))
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    lines = [l for l in (proc.stdout + proc.stderr).decode().splitlines() if l.strip()]
    # the two day families, named by the contract, are for people
    assert lines == ['fcmon_cert_expiry_days use base unit "seconds" instead of "days"',
                     'fcmon_listener_cert_expiry_days use base unit "seconds" instead of "days"'], lines


def test_render_thousand_targets_snapshot_is_consistent() -> None:
    store = MetricsStore()
    names = [f"t{i}" for i in range(1000)]
    store.set_targets([target(n) for n in names])
    for n in names:
        store.record(healthy(n, time.time()))
    text = generate_latest(registry_for(store)).decode()
    assert text.count("fcmon_up{") == 1000
