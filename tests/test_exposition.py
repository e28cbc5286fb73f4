"""The fast /metrics renderer says exactly what the Collector says; a
target is rendered when its state changes (in the recording thread), never
by a scrape; a scrape holds no lock that record() needs while it formats;
the body goes out in blocks, never joined whole."""

from __future__ import annotations

import subprocess
import threading
import zlib
from dataclasses import replace

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fcmon.export.exposition as exposition
from fcmon.export.exposition import TextRenderer
from fcmon.export.metrics import FAMILIES, FcmonCollector, MetricsStore
from fcmon.probe.result import CallResult, CertInfo, Failure, SessionCensus

from support import require_tool
from test_metrics import NOW, failed, healthy, listener_round, target


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
    store.record_skipped("c", "still_running")
    store.record_listeners(listener_round("a"))
    store.record_listeners(listener_round('we"ird\\name', discovery=None))
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
    assert renderer.rendered_targets == 4  # each target once, when the renderer is installed
    first = samples(renderer.render().decode())
    assert renderer.rendered_targets == 4
    clock[0] += 86400  # a day later, nothing probed: only the expiry days move
    second = samples(renderer.render().decode())
    assert renderer.rendered_targets == 4
    key = ("fcmon_cert_expiry_days", tuple(sorted({"target": "a", "cert": "server", "subject": "CN=db1",
                                                   "serial": "1a"}.items())))
    assert second[key] == first[key] - 1
    store.record(failed("a"))
    assert renderer.rendered_targets == 5  # rendered by record(), before any scrape
    third = samples(renderer.render().decode())
    assert renderer.rendered_targets == 5
    assert third[("fcmon_up", (("target", "a"),))] == 0
    store.set_targets([target("a")])
    fourth = renderer.render().decode()
    assert 'target="b"' not in fourth
    assert renderer.rendered_targets == 5


def test_each_change_renders_its_own_target_only() -> None:
    store = make_store()
    seen = []
    renderer = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW)
    render = exposition.render_target
    store.set_renderer(lambda name, state: seen.append(name) or render(name, state))
    seen.clear()
    store.record(healthy("c"))
    store.record_skipped("a", "still_running")
    store.record_lateness(0.2)
    store.record_reload(True, NOW)
    assert seen == ["c", "a"]
    store.set_targets([target("a"), target("b"), target("c"), target('we"ird\\name')])  # unchanged
    assert seen == ["c", "a"]
    store.set_targets([replace(target("a"), endpoint="https://moved.example:8443/api"), target("d")])
    assert seen == ["c", "a", "a", "d"]
    renderer.body()
    renderer.render()
    assert seen == ["c", "a", "a", "d"]  # scrapes render nothing
    text = renderer.render().decode()
    assert 'endpoint="https://moved.example:8443/api"' in text and 'target="d"' in text


def test_a_scrape_in_progress_does_not_block_record() -> None:
    store = make_store()
    renderer = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW)
    body = renderer.body()
    blocks = iter(body)
    first = next(blocks)  # the scrape is under way: fragments collected, not all sent
    done = threading.Event()

    def probe_finishes() -> None:
        store.record(failed("a"))
        store.record_skipped("b", "still_running")
        done.set()

    thread = threading.Thread(target=probe_finishes, daemon=True)
    thread.start()
    assert done.wait(10), "record() waited for a scrape"
    text = (first + b"".join(blocks)).decode()
    # The scrape says what the store held when it began, consistently.
    assert samples(text)[("fcmon_up", (("target", "a"),))] == 1
    assert samples(renderer.render().decode())[("fcmon_up", (("target", "a"),))] == 0


def test_a_scrape_formats_without_the_store_lock() -> None:
    store = make_store()
    recorded = []

    def clock() -> float:  # called while the scrape formats the certificate values
        thread = threading.Thread(target=lambda: recorded.append(store.record(failed("c"))), daemon=True)
        thread.start()
        thread.join(10)
        assert recorded, "record() waited for a scrape that was formatting"
        return NOW

    renderer = TextRenderer(store, CollectorRegistry(), clock=clock)
    renderer.render()
    assert recorded


def test_body_goes_out_in_blocks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = MetricsStore()
    names = [f"t{i}" for i in range(300)]
    store.set_targets([target(n) for n in names])
    for i, n in enumerate(names):
        store.record(healthy(n) if i % 3 else failed(n))
    renderer = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW)
    whole = renderer.render()
    monkeypatch.setattr(exposition, "BLOCK_BYTES", 16 * 1024)
    body = renderer.body()
    blocks = list(body)
    assert b"".join(blocks) == whole
    assert body.size == len(whole)
    assert len(blocks) > len(whole) // (32 * 1024)
    assert max(map(len, blocks)) <= 16 * 1024 + 8 * 1024  # a block ends with the part that crosses the limit


def test_histograms_are_kept_deflated() -> None:
    # The request-duration histograms are most of the text: a target keeps
    # them as a deflate segment, and segments concatenate into one stream.
    store = MetricsStore()
    store.set_targets([target("a"), target("b"), target("c")])
    store.record(healthy("a"))
    store.record(failed("b"))
    TextRenderer(store, CollectorRegistry(), clock=lambda: NOW)
    fragments, _ = store.rendered()
    i = [f.name for f in FAMILIES].index("fcmon_request_duration_seconds")
    segments = [f.parts[i] for f in fragments]
    text = zlib.decompressobj(-15).decompress(b"".join(segments)).decode()
    assert text.count("fcmon_request_duration_seconds_bucket{") == 2 * 3 * 12
    assert sum(f.histogram_size for f in fragments) == len(text)
    assert fragments[2].parts[i] == b"" and fragments[2].histogram_size == 0  # never probed
    assert len(segments[0]) < fragments[0].histogram_size / 3


def test_promtool_is_silent_on_the_renderer_output() -> None:
    promtool = require_tool("promtool")
    store = make_store()
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW).render()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    lines = [line for line in (proc.stdout + proc.stderr).decode().splitlines() if line.strip()]
    assert lines == ['fcmon_cert_expiry_days use base unit "seconds" instead of "days"',
                     'fcmon_listener_cert_expiry_days use base unit "seconds" instead of "days"']


def test_expiry_of_a_cert_with_odd_subject_is_escaped() -> None:
    store = MetricsStore()
    store.set_targets([target("a")])
    r = healthy("a")
    from dataclasses import replace

    store.record(replace(r, certs=(CertInfo("server", 'CN=a\\b,O="x"', "1", NOW + 86400),)))
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW).render().decode()
    assert samples(text)[("fcmon_cert_expiry_days", tuple(sorted(
        {"target": "a", "cert": "server", "subject": 'CN=a\\b,O="x"', "serial": "1"}.items())))] == 1


def test_renderer_matches_collector_on_varied_states() -> None:
    store = MetricsStore()
    names = ["plain", 'q"uote', "back\\slash", "new\nline", "ünïcode", "never", "skipped-only"]
    store.set_targets([replace(target(n), username=("" if i % 2 else "ADMIN")) for i, n in enumerate(names)])
    odd = CertInfo("server", 'CN=ü\\x,O="q"\nz', "ff", NOW - 2.5 * 86400)  # expired
    store.record(healthy("plain"))
    store.record(replace(healthy('q"uote'), certs=(odd,), tls_version=None))
    store.record(replace(failed("back\\slash"), steps=(), calls=(CallResult("createSession", 12.5, None),),
                         failure=Failure("connect", "timeout", "x")))
    for k in range(20):
        store.record(replace(healthy("new\nline", NOW - k), duration=1e-7 * k,
                             calls=(CallResult("createSession", 0.001 * k, k % 3),
                                    CallResult("listDatabases", 3.0 * k, 451 if k % 4 else 0))))
    store.record(replace(healthy("ünïcode"), databases=0, tls_cipher=None))
    store.record(replace(healthy("plain"), census=SessionCensus(46, 2, 50, 12.0, reaped=1)))
    store.record(replace(healthy('q"uote'), census=SessionCensus(3, 1, 10, by_user=(("APP", 2), ('a"b\\c', 0)))))
    store.record_skipped("skipped-only", "still_running")
    store.record_listeners(listener_round("plain"))
    store.record_listeners(listener_round("plain", gone=True))
    store.record_listeners(listener_round('q"uote', discovery=False))
    store.record_lateness(0.3)
    store.record_reload(False, NOW)
    reg = CollectorRegistry()
    reg.register(FcmonCollector(store, clock=lambda: NOW + 1.5))
    reference = generate_latest(reg).decode()
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: NOW + 1.5).render().decode()
    assert samples(text) == samples(reference)
    assert families(text) == families(reference)
