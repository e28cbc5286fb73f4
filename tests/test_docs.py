"""The README stays true to the code: every metric fcmon exposes is documented
with its type, and every documented metric exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

from fcmon.export.metrics import FcmonCollector, MetricsStore

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


# --------------------------------------------------------------------------
# The install steps, the shipped config.ini and the unit tell the same story.

import configparser  # noqa: E402

ROOT = README.parent
CONFIG = ROOT / "config.ini"
UNIT = ROOT / "systemd" / "fcmon.service"


def _pairs(text: str) -> Dict[tuple, str]:
    """(section, key) -> value of an INI text, read as fcmon reads config.ini."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       default_section="\x00")
    parser.read_string(text)
    return {(s, k): v for s in parser.sections() for k, v in parser.items(s, raw=True)}


def _install_section() -> str:
    return README.read_text().split("## Install as a service", 1)[1].split("\n## ", 1)[0]


def test_readme_config_snippets_agree_with_config_ini() -> None:
    shipped = _pairs(CONFIG.read_text())
    blocks = [b for b in re.findall(r"```ini\n(.*?)```", README.read_text(), re.S) if "[target:" in b]
    assert len(blocks) >= 2, "the worked example and the configuration summary"
    for block in blocks:
        pairs = _pairs(block)
        shared = [sk for sk in pairs if sk in shipped]
        assert shared, block
        for sk in shared:
            assert pairs[sk] == shipped[sk], f"README says {sk} = {pairs[sk]}, config.ini says {shipped[sk]}"


def test_install_steps_match_the_shipped_config() -> None:
    install, shipped, unit = _install_section(), CONFIG.read_text(), UNIT.read_text()
    targets = len(re.findall(r"^\[target:[^\]]+\]$", shipped, re.M))
    noun = "target" if targets == 1 else "targets"
    assert f'Status: "{targets} {noun}, {targets} up"' in install
    # Secrets: every credential config.ini reads is installed root-only and
    # loaded by the drop-in, in the README and in the unit's worked example.
    creds = set(re.findall(r"^\w+ = \$CREDENTIALS_DIRECTORY/([\w.-]+)$", shipped, re.M))
    assert "client.key" in creds
    m = re.search(r"^install -m 0600 (.+) /etc/fcmon/secrets/$", install, re.M)
    assert m and set(m.group(1).split()) == creds
    for text in (install, unit):
        loaded = set(re.findall(r"LoadCredential=([\w.-]+):/etc/fcmon/secrets/\1$", text, re.M))
        assert loaded == creds, loaded
    # Certificates: what config.ini names under certs/ is what step 2 installs, and no key.
    certs = set(re.findall(r"^\w+ = certs/([\w.-]+)$", shipped, re.M))
    m = re.search(r"^install -m 0644 (.+) /etc/fcmon/certs/$", install, re.M)
    assert m and set(m.group(1).split()) == certs
    assert not [c for c in certs if "key" in c], "a private key among world-readable certificates"
    # The loopback default, and what to change for a Prometheus elsewhere.
    assert re.search(r"^listen = 127\.0\.0\.1:9731$", shipped, re.M)
    for text in (install, shipped):
        assert "another host" in text and "0.0.0.0:9731" in text and "[::]:9731" in text
