"""The /metrics text and the Collector's samples for one realistic state,
byte for byte as they were before the metric families became one
specification (fcmon/export/metrics.py FAMILIES): several targets (healthy,
failed, never probed, only skipped), listeners, certificates shared and
expired, API errors, a session census, NaN, infinite and absent values,
names that need escaping. A change to a family shows here as a diff;
regenerate the golden files only for an intended change of the
exposition: `FCMON_WRITE_GOLDEN=1 pytest tests/test_exposition_golden.py`.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from fcmon.export.exposition import TextRenderer
from fcmon.export.metrics import FAMILIES, MetricsStore, expiry_samples, target_samples
from fcmon.probe.result import CallResult, CertInfo, Failure, ServerInfo, SessionCensus
from fcmon.web.httpd import REJECT_REASONS

from test_metrics import NOW, failed, healthy, listener_round, target

GOLDEN = Path(__file__).parent / "golden"
SCRAPED_AT = NOW + 3600.5


def golden_store() -> MetricsStore:
    store = MetricsStore()
    names = ["prod", "b", 'we"ird\\name', "new\nline", "never", "skipped-only", "census", "nan", "idle"]
    store.set_targets([replace(target(n), username=("" if i % 3 == 1 else "ADMIN")) for i, n in enumerate(names)])
    # a healthy target with listeners, probed twice (one failure between)
    store.record(healthy("prod", NOW - 60))
    store.record(failed("prod", NOW - 30))
    store.record(healthy("prod"))
    store.record_listeners(listener_round("prod"))
    store.record_listeners(listener_round("prod", gone=True))  # wss's series go, its failures too
    store.record_listeners(listener_round("prod"))
    store.record_skipped("prod", "missed")
    # failed last, a connect failure; no certificate; server info without host name
    store.record(replace(healthy("b"), server=ServerInfo("FairCom DB 13", None, None)))
    store.record(replace(failed("b"), steps=(("connect", 5.0),), calls=(), session_leaked=False,
                         failure=Failure("connect", "timeout", "connect: timed out")))
    store.record_skipped("b", "server_busy")
    store.record_skipped("b", "server_busy")
    # escaping everywhere; an expired certificate; no TLS cipher; listeners without discovery
    odd = CertInfo("server", 'CN=ü\\x,O="q"\nz', "ff", NOW - 2.5 * 86400)
    store.record(replace(healthy('we"ird\\name'), certs=(odd,) + healthy("x").certs[1:], tls_cipher=None,
                         server=ServerInfo(None, 'h"o\\st', None)))
    store.record_listeners(listener_round('we"ird\\name', discovery=None))
    # many calls, API errors by code, a session gone at deleteSession (not an API error)
    for k in range(12):
        store.record(replace(healthy("new\nline", NOW - k), duration=1e-7 * k,
                             calls=(CallResult("createSession", 0.001 * k, k % 3),
                                    CallResult("listDatabases", 3.0 * k, 451 if k % 4 else 0),
                                    CallResult("deleteSession", 20.0, 12031 if k == 11 else 0)),
                             session_gone=(k == 11)))
    store.record_listeners(listener_round("new\nline", discovery=False))
    # only skipped runs, and a target never probed at all
    store.record_skipped("skipped-only", "still_running")
    # the census: by user, reaped orphans; then one without idle time
    store.record(replace(healthy("census"), census=SessionCensus(46, 2, 50, 12.25, reaped=3,
                                                                  by_user=(("APP", 2), ('a"b\\c', 0)))))
    store.record(replace(healthy("census"), databases=0, census=SessionCensus(5, 1, 50, None, reaped=1)))
    store.record(replace(healthy("idle"), census=SessionCensus(1, 1, 0, 0.5, by_user=(("APP", 2), ('a"b\\c', 0)))))
    # values that are not numbers, or not finite
    store.record(replace(healthy("nan"), duration=float("nan"),
                         steps=(("connect", float("nan")), ("create_session", float("inf")),
                                ("list_databases", -0.0), ("delete_session", 1e-12)),
                         calls=(CallResult("createSession", float("inf"), 0),
                                CallResult("listDatabases", 1e21, 2 ** 40)),
                         databases=10 ** 16, tls_version="TLSv1.2"))
    store.record_lateness(0.3)
    store.record_lateness(12.0)
    store.record_reload(True, NOW - 100)
    store.record_reload(False, NOW - 10)
    store.set_lanes(["scrape", "pages"])
    store.set_reject_reasons(REJECT_REASONS)  # as the daemon does
    store.record_request_shed("pages")
    store.record_request_dropped("scrape")
    store.record_connection_rejected("per_client")
    store.record_auth_failure()
    store.record_probe_request_rejected()
    return store


def _exposition(store: MetricsStore) -> str:
    text = TextRenderer(store, CollectorRegistry(), clock=lambda: SCRAPED_AT).render().decode()
    # the build's version and Python vary by where the test runs
    return re.sub(r'^fcmon_build_info\{.*\} 1\.0$', 'fcmon_build_info{version="V",python="P"} 1.0', text,
                  flags=re.M)


def _samples(store: MetricsStore) -> str:
    # What the Collector adds to its families (/probe, `check`), in the
    # order it adds them: target by target, family by family.
    lines = []
    for name, state in store.snapshot().targets.items():
        by_family = target_samples(name, state)
        for family in FAMILIES:
            for sample in by_family.pop(family.name, []):
                lines.append(repr((family.name,) + sample))
        assert not by_family, f"families outside FAMILIES: {sorted(by_family)}"
        lines.extend(repr(s) for s in expiry_samples(name, state, SCRAPED_AT))
    return "\n".join(lines) + "\n"


def _compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("FCMON_WRITE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    assert text == path.read_text(encoding="utf-8")


def test_the_exposition_is_byte_identical_to_the_golden_file() -> None:
    _compare("exposition.txt", _exposition(golden_store()))


def test_the_collectors_samples_are_identical_to_the_golden_file() -> None:
    _compare("target_samples.txt", _samples(golden_store()))


def test_the_golden_state_covers_every_family() -> None:
    # a family without a series in the golden text would go unchecked
    text = _exposition(golden_store())
    for family in FAMILIES:
        sample = family.name + ("_total" if family.type == "counter" else "")
        assert f"\n{sample}{{" in text or f"\n{sample}_bucket{{" in text, family.name
