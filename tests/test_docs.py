"""The README stays true to the code: every metric fcmon exposes is documented
with its type, and every documented metric exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

from fcmon.metrics import FcmonCollector, MetricsStore

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `(fcmon_[a-z_]+)` \| (gauge|counter|histogram|info|summary) \|", re.M)


def _documented() -> Dict[str, str]:
    return dict(_ROW.findall(README.read_text()))


def _exposed() -> Dict[str, str]:
    out = {}
    for metric in FcmonCollector(MetricsStore()).collect():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        out[name] = metric.type
    return out


def test_readme_metric_table_matches_the_exposed_families() -> None:
    documented, exposed = _documented(), _exposed()
    assert len(documented) >= 20  # the table was found at all
    assert sorted(set(exposed) - set(documented)) == [], "exposed but not in README"
    assert sorted(set(documented) - set(exposed)) == [], "in README but not exposed"
    assert {n: t for n, t in documented.items() if exposed[n] != t} == {}, "type differs"
