"""The /metrics text, rendered fast enough for fleets.

prometheus_client formats every sample on every scrape, with label
validation and escaping: about 2 s for 3,000 targets (200,000 lines). Here
each target's lines are rendered once per change of its state and reused
until it changes again; only the time-dependent `fcmon_cert_expiry_days`
lines are formatted on every scrape. The samples come from the same
`metrics.target_samples` the Collector uses, so both say the same thing
(tests/test_exposition.py compares them).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from .metrics import (
    EXPIRY_DAYS,
    FAMILIES,
    Family,
    MetricsStore,
    Sample,
    _global_families,
    expiry_samples,
    target_samples,
)


def _escape(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # the common case, three scans instead of three copies
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(value: float) -> str:
    # Counters and codes are ints; floatToGoString would make them "3.0" too.
    if type(value) is int and -(10**15) < value < 10**15:
        return f"{value}.0"
    return floatToGoString(value)


def _line(sample: Sample) -> str:
    name, labels, value = sample
    if labels:
        inner = ",".join([f'{k}="{_escape(v)}"' for k, v in labels])
        return f"{name}{{{inner}}} {_value(value)}\n"
    return f"{name} {_value(value)}\n"


def _header(family: Family) -> str:
    name = family.name + "_total" if family.type == "counter" else family.name
    return f"# HELP {name} {family.help}\n# TYPE {name} {family.type}\n"


# per target: (state version, family -> rendered lines, state for expiry)
_Entry = Tuple[int, Dict[str, str], object]


class TextRenderer:
    """Prometheus text format 0.0.4 of a MetricsStore plus extra registries."""

    def __init__(self, store: MetricsStore, extra: CollectorRegistry,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._extra = extra
        self._clock = clock
        self._cache: Dict[str, _Entry] = {}
        # Concurrent scrapes render one after the other and share the cache.
        self._lock = threading.Lock()
        self.rendered_targets = 0  # targets re-rendered, for tests of the mechanism

    def render(self) -> bytes:
        with self._lock:
            known = {name: entry[0] for name, entry in self._cache.items()}
            snap = self._store.snapshot(known)
            cache: Dict[str, _Entry] = {}
            for name, state in snap.targets.items():
                if state is None:
                    cache[name] = self._cache[name]
                    continue
                lines = {fam: "".join(_line(s) for s in samples)
                         for fam, samples in target_samples(name, state).items()}
                cache[name] = (state.version, lines, state)
                self.rendered_targets += 1
            self._cache = cache
            now = self._clock()
            parts: List[str] = []
            for family in FAMILIES:
                parts.append(_header(family))
                if family.name == EXPIRY_DAYS:
                    for name, (_, _, state) in cache.items():
                        parts.extend(_line(s) for s in expiry_samples(name, state, now))  # type: ignore[arg-type]
                else:
                    parts.extend(entry[1].get(family.name, "") for entry in cache.values())
            for metric in _global_families(snap):
                parts.append(_header(Family(metric.name, metric.type, metric.documentation)))
                parts.extend(_line((s.name, tuple(s.labels.items()), s.value)) for s in metric.samples)
        return "".join(parts).encode() + generate_latest(self._extra)

