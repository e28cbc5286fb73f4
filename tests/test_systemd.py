"""systemd/fcmon.service: lint-clean, hardened, and wired to what the daemon does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from support import ROOT, require_tool

UNIT = ROOT / "systemd" / "fcmon.service"
EXEC_START = "/opt/fcmon/bin/fcmon run -c /etc/fcmon/config.ini"
MAX_EXPOSURE = 2.0

Unit = Dict[str, List[Tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> [(key, value)], in order; comments and blank lines dropped."""
    unit: Unit = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        assert section is not None, f"key outside a section: {raw}"
        assert "=" in line, f"not a key=value line: {raw}"
        key, value = line.split("=", 1)
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> List[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


def seconds(value: str) -> float:
    """A systemd time span with a single unit ("120s", "2min", "5")."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, f"unsupported time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def analyze_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(SYSTEMD_PAGER="cat", SYSTEMD_COLORS="0", SYSTEMD_LOG_COLOR="0", LC_ALL="C.UTF-8")
    return env


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with only ExecStart's binary changed to one that exists here.

    verify checks that ExecStart is executable; /opt/fcmon is not installed on
    a build host, and everything else must be checked exactly as shipped.
    """
    text = UNIT.read_text()
    assert text.count("/opt/fcmon/bin/fcmon") == 1, "only ExecStart should name the binary"
    fcmon = Path(sys.executable).parent / "fcmon"
    if not fcmon.exists():
        found = shutil.which("fcmon")
        assert found, "the fcmon console script is not installed (pip install -e .)"
        fcmon = Path(found)
    copy = tmp_path / "fcmon.service"  # verify derives the unit type from the name
    copy.write_text(text.replace("/opt/fcmon/bin/fcmon", str(fcmon)))
    return copy


def verify(path: Path) -> Tuple[int, str]:
    analyze = require_tool("systemd-analyze")
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          env=analyze_env(), timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# ---------------------------------------------------------------------------
# What the unit says (no tool needed)


def test_unit_runs_the_daemon_as_notify_service(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"  # fcmon runs no helper processes
    assert one(unit, "Service", "ExecStart") == EXEC_START
    reload = one(unit, "Service", "ExecReload")
    assert re.fullmatch(r"/(usr/)?bin/kill -(HUP|s HUP|SIGHUP) \$MAINPID", reload), reload
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) > 0
    assert "multi-user.target" in one(unit, "Install", "WantedBy")
    assert "network-online.target" in one(unit, "Unit", "After")


def test_watchdog_leaves_room_for_the_pings(unit: Unit) -> None:
    watchdog = seconds(one(unit, "Service", "WatchdogSec"))
    # fcmon pings every WatchdogSec/2 from a loop that ticks at most every
    # second: a short watchdog would kill a healthy daemon on a busy host.
    assert watchdog >= 30
    # ... and a long one would leave a wedged scheduler running for ages.
    assert watchdog <= 600


def test_unit_runs_unprivileged_and_writes_nothing(unit: Unit) -> None:
    s = "Service"
    assert one(unit, s, "DynamicUser") == "yes" or values(unit, s, "User") not in ([], ["root"])
    assert one(unit, s, "CapabilityBoundingSet") == ""
    assert one(unit, s, "NoNewPrivileges") == "yes"
    assert one(unit, s, "ProtectSystem") == "strict"
    for key in ("ReadWritePaths", "StateDirectory", "LogsDirectory", "CacheDirectory", "RuntimeDirectory"):
        assert not values(unit, s, key), f"{key}= given, but fcmon writes nothing"


def test_unit_keeps_what_the_daemon_needs(unit: Unit) -> None:
    s = "Service"
    # Outbound TCP to the servers and the listen port; AF_UNIX for $NOTIFY_SOCKET.
    families = one(unit, s, "RestrictAddressFamilies").split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert values(unit, s, "PrivateNetwork") in ([], ["no"])
    assert not values(unit, s, "IPAddressDeny"), "the servers to probe are site-specific: a drop-in's job"
    # process_* metrics read /proc/stat, which ProcSubset=pid hides.
    assert values(unit, s, "ProcSubset") in ([], ["all"])
    # /etc/fcmon must stay readable.
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):
        for v in values(unit, s, key):
            assert "/etc" not in v, f"{key}={v} hides the config"


def test_unit_documents_load_credential() -> None:
    text = UNIT.read_text()
    # The worked example: the credential id in the unit and the path in the config match.
    m = re.search(r"LoadCredential=([\w.-]+):(/etc/fcmon/\S+)", text)
    assert m, "a LoadCredential= example"
    assert f"password_file = $CREDENTIALS_DIRECTORY/{m.group(1)}" in text
    assert m.group(1) == "prod-east.password"


# ---------------------------------------------------------------------------
# systemd-analyze


@pytest.mark.slow
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    code, output = verify(verifiable_copy(tmp_path))
    # verify exits 0 on unknown keys and bad values: any output is a failure.
    assert output == "", output
    assert code == 0


@pytest.mark.slow
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The silence above means something: verify does report a broken copy."""
    copy = verifiable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestrat=always"))
    _, output = verify(copy)
    assert "Restrat" in output


@pytest.mark.slow
def test_security_exposure_is_at_most_2() -> None:
    analyze = require_tool("systemd-analyze")
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, env=analyze_env(), timeout=120)
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    m = re.search(r"Overall exposure level for fcmon\.service:\s*(\d+(?:\.\d+)?)", out)
    assert m, out
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, out
    # What stays open is what the daemon needs, and nothing it could do without.
    open_items = {line.split()[1] for line in out.splitlines() if line.startswith("✗")}
    assert "User=/DynamicUser=" not in open_items
    assert "NoNewPrivileges=" not in open_items
    assert "MemoryDenyWriteExecute=" not in open_items


def test_descriptor_limit_covers_the_connection_cap_and_the_probes_reserve(unit: Unit) -> None:
    from fcmon.config import Config
    from fcmon.web.httpd import BASE_FD_RESERVE, MAX_CONNECTIONS, connection_cap
    from fcmon.service.scheduler import MAX_WORKERS

    limit = int(one(unit, "Service", "LimitNOFILE"))
    # The largest reserve fcmon keeps (daemon.fd_reserve): a full scheduler
    # pool and /probe's default cap, two descriptors per probe, and a full
    # listener pool, one per round.
    reserve = BASE_FD_RESERVE + 2 * (MAX_WORKERS + Config().max_probe_requests) + MAX_WORKERS // 4
    assert limit >= MAX_CONNECTIONS + reserve
    assert connection_cap(reserve, limit) == MAX_CONNECTIONS  # the cap binds, not the limit
