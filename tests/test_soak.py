"""Soak: a real `fcmon run` probing many targets while faults are switched
at random. Nothing may leak: sessions, threads, file descriptors, memory;
and the leak counter must count every session left behind.

`make test` runs it short (FCMON_SOAK_SECONDS, default 15: a 15 s warm-up,
then 15 s measured); `make chaos` runs it long too (SOAK_SECONDS, default
30: 30 s of warm-up, 30 s measured).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from fcmon.emulator import Emulator, Fault

from support import PKI, ROOT, FcmonProcess, scrape, target_section, wait_for

pytestmark = pytest.mark.slow

TARGETS = 80
INTERVAL = 2.0
TIMEOUT = 1.5
# The measured stretch, and as long a warm-up before it. The short form
# (`make test`) still catches a leak: 80 targets every 2 s make about 600
# probes in 15 s, each under one of the faults below, so a thread, a
# descriptor or a session left per probe -- even per hundred probes -- is far
# over the bounds asserted; memory over 5 MB means about 9 KB per probe.
# Tried on `fcmon run` with a leak put in Prober.probe: a descriptor per 100
# probes failed it (fds 12 -> 19), 10 KB per probe too (RSS +7.3 MB). A
# slower leak is the long form's job (`make chaos`, SOAK_SECONDS).
SOAK = float(os.environ.get("FCMON_SOAK_SECONDS", "15") or 15)
WARMUP = SOAK
# The probes a round of every target makes per second, and the share of it
# the asserts require (the bounds the test had at 30 + 30 s: 800 and 2000).
RATE = TARGETS / INTERVAL

# Faults whose effect on the server is known, so the leak count can be
# checked: none of these lets the server create a session whose token fcmon
# never sees, nor delete one whose deletion fcmon never hears of. A
# createSession without a usable answer is counted as a possible leak (no
# client can know whether the server acted), so the count is bounded from
# both sides rather than exact.
FAULTS: List[Tuple[str, Fault]] = [
    ("createSession", Fault(error_code=451)),
    ("createSession", Fault(http500_html=True)),
    ("createSession", Fault(limit_reached=True)),
    ("createSession", Fault(reset=True)),
    ("createSession", Fault(hang=True)),
    ("createSession", Fault(missing_auth_token=True)),
    ("listDatabases", Fault(delay=0.05)),
    ("listDatabases", Fault(delay=TIMEOUT + 0.5)),
    ("listDatabases", Fault(hang=True)),
    ("listDatabases", Fault(drip=True, drip_interval=0.3)),
    ("listDatabases", Fault(reset=True)),
    ("listDatabases", Fault(http500_html=True)),
    ("listDatabases", Fault(malformed_json=True)),
    ("listDatabases", Fault(non_object_json=True)),
    ("listDatabases", Fault(oversized=300_000)),
    ("listDatabases", Fault(error_code=12031)),
    ("listDatabases", Fault(error_code=12031, http_status=400)),
    ("deleteSession", Fault(hang=True)),
    ("deleteSession", Fault(reset=True)),
    ("deleteSession", Fault(error_code=99)),
    ("deleteSession", Fault(http500_html=True)),
]


def unit_environment() -> Dict[str, str]:
    env = {}
    for line in (ROOT / "systemd" / "fcmon.service").read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            env[key] = value
    assert "MALLOC_ARENA_MAX" in env
    return env


def proc_stats(pid: int) -> Dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "threads": int(fields["Threads"].strip()),
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def total(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def create_unanswered(text: str) -> float:
    """Failed createSession calls that may still have made a session."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "fcmon_probe_failures_total" and s.labels.get("stage") == "create_session"
               and s.labels.get("reason") not in ("api_error", "client_cert_rejected"))


def run_faults(emu: Emulator, rng: random.Random, seconds: float) -> int:
    """Switch a random fault every ~0.7 s, sometimes none; returns how many were set."""
    switched = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        emu.clear_faults()
        if rng.random() < 0.8:
            action, fault = rng.choice(FAULTS)
            emu.set_fault(action, fault)
            switched += 1
        time.sleep(0.7)
    emu.clear_faults()
    return switched


def test_soak(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(int(os.environ.get("FCMON_SOAK_SEED", "1234")))
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, max_sessions=100_000,
                  max_sessions_per_user=100_000, max_sessions_per_ip=100_000) as emu:
        sections = "".join(target_section(test_pki, emu, f"t{i:03d}", session_idle_timeout="5")
                           for i in range(TARGETS))
        config = tmp_path / "config.ini"
        config.write_text(f"[fcmon]\nlisten = 127.0.0.1:0\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\n"
                          + sections)
        # In the environment systemd/fcmon.service gives it (MALLOC_ARENA_MAX).
        with FcmonProcess("run", "-c", str(config), env=unit_environment()) as fc:
            url = fc.metrics_url()
            pid = fc.proc.pid
            # Warm-up under the same faults, ending with everything hanging for
            # a while so the worker pool reaches its full size.
            run_faults(emu, rng, WARMUP - 5)
            for action in ("createSession", "listDatabases", "deleteSession"):
                emu.set_fault(action, Fault(hang=True, count=TARGETS))
            time.sleep(5)
            emu.clear_faults()
            time.sleep(TIMEOUT + 2)
            start = proc_stats(pid)
            probes_before = total(scrape(url), "fcmon_probes_total")

            switched = run_faults(emu, rng, SOAK)

            # Let the probes in flight finish under no fault, then a quiet round.
            time.sleep(TIMEOUT + 1 + INTERVAL)
            end = proc_stats(pid)
            text = scrape(url)
            all_probes = total(text, "fcmon_probes_total")
            probes = all_probes - probes_before
            leaks = total(text, "fcmon_session_leaks_total")
            unanswered = create_unanswered(text)
            # orphans of fcmon's own that a later probe's census deleted
            reaped = total(text, "fcmon_sessions_reaped_total")
            assert fc.stop(signal.SIGTERM) == 0

        never_deleted = emu.open_sessions() + emu.sessions_expired()
        # Sessions left behind expire on the server (session_idle_timeout = 5).
        wait_for(lambda: emu.open_sessions() == 0, timeout=20)
    assert switched >= SOAK * 2 / 3  # a switch every 0.7 s, 4 in 5 a fault
    assert probes >= RATE * SOAK * 2 / 3, probes
    assert all_probes >= RATE * (WARMUP + SOAK) * 5 / 6, all_probes
    assert leaks > 0  # the faults did make fcmon leave sessions behind...
    # ...and it counted every one of them (still left, or reaped later by a
    # census: each a leak first), plus, at most, the createSession calls that
    # got no usable answer (a session fcmon cannot rule out; the emulator's
    # hang, reset and HTML faults make none).
    assert never_deleted + reaped <= leaks <= never_deleted + reaped + unanswered, (
        leaks, never_deleted, reaped, unanswered)
    assert "Traceback" not in fc.text()
    assert end["threads"] <= start["threads"], (start, end)
    assert end["fds"] <= start["fds"] + 2, (start, end)
    assert end["rss_kb"] - start["rss_kb"] < 5 * 1024, (start, end)
    print(f"\nsoak: {probes:.0f} probes, {switched} faults, {leaks:.0f} leaks counted ({reaped:.0f} reaped later), "
          f"start {start}, end {end}")
