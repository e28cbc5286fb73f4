"""The fast /metrics renderer says exactly what the Collector says, and
re-renders only the targets whose state changed."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fcmon.exposition import TextRenderer
from fcmon.metrics import FcmonCollector, MetricsStore
from fcmon.result import CertInfo

from support import require_tool
from test_metrics import NOW, failed, healthy, target


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> list:
    return [(f.name, f.type, f.documentation) for f in text_string_to_metric_families(text)]


def make_store() -> MetricsStore:
    store = MetricsStore()
    store.set_targets([target("a"), target("b"), target("c"), target('we"ird\\name')])
    store.record(healthy("a"))
    store.record(failed("b"))
    store.record(healthy("b", NOW - 30))
    store.record_skipped("c")
    store.record_reload(True, NOW - 100)
    return store


def test_renderer_matches_collector() -> None:
    store = make_store()
    reg = CollectorRegistry()
    reg.register(FcmonCollector(store, clock=lambda: NOW))
    reference = generate_latest(reg).decode()
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW).render().decode()
    assert samples(text) == samples(reference)
    assert families(text) == families(reference)
    assert len(samples(text)) > 100


def test_only_changed_targets_are_rendered_again() -> None:
    store = make_store()
    clock = [NOW]
    renderer = TextRenderer(store, CollectorRegistry(), clock=lambda: clock[0])
    first = samples(renderer.render().decode())
    assert renderer.rendered_targets == 4
    clock[0] += 86400  # a day later, nothing probed: only the expiry days move
    second = samples(renderer.render().decode())
    assert renderer.rendered_targets == 4
    key = ("fcmon_cert_expiry_days", tuple(sorted({"target": "a", "cert": "server", "subject": "CN=db1",
                                                   "serial": "1a"}.items())))
    assert second[key] == first[key] - 1
    store.record(failed("a"))
    third = samples(renderer.render().decode())
    assert renderer.rendered_targets == 5
    assert third[("fcmon_up", (("target", "a"),))] == 0
    store.set_targets([target("a")])
    fourth = renderer.render().decode()
    assert 'target="b"' not in fourth


def test_promtool_is_silent_on_the_renderer_output() -> None:
    promtool = require_tool("promtool")
    store = make_store()
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW).render()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    lines = [line for line in (proc.stdout + proc.stderr).decode().splitlines() if line.strip()]
    assert lines == ['fcmon_cert_expiry_days use base unit "seconds" instead of "days"']


def test_expiry_of_a_cert_with_odd_subject_is_escaped() -> None:
    store = MetricsStore()
    store.set_targets([target("a")])
    r = healthy("a")
    from dataclasses import replace

    store.record(replace(r, certs=(CertInfo("server", 'CN=a\\b,O="x"', "1", NOW + 86400),)))
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW).render().decode()
    assert samples(text)[("fcmon_cert_expiry_days", tuple(sorted(
        {"target": "a", "cert": "server", "subject": 'CN=a\\b,O="x"', "serial": "1"}.items())))] == 1
