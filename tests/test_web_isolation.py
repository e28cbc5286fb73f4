"""Callers of the HTTP endpoint cannot make `fcmon run` (as a process) log
in to FairCom faster than once per probe_reuse_window per target, and page
pollers do not hold up scrapes. Figures for many pollers and thousands of
targets are bench/'s (`python -m bench --only hostile`); what the front
door's lanes do with a held page is test_lanes.py's."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List

import pytest
import requests

from fcmon.emulator import Emulator, Fault
from fcmon.web.app import PAGE_LANE, PROBE_LANE, SCRAPE_LANE

from support import PKI, FcmonProcess, sample, target_section, wait_for


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _start(tmp_path: Path, test_pki: PKI, emu: Emulator, fcmon: str, targets: int = 1) -> FcmonProcess:
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\nlisten = 127.0.0.1:0\n" + fcmon + "\n"
                      + "".join(target_section(test_pki, emu, name="prod" if i == 0 else f"t{i}")
                                for i in range(targets)))
    return FcmonProcess("run", "-c", str(config))


def _creates(emu: Emulator) -> int:
    return sum(1 for r in emu.requests_seen() if isinstance(r, dict) and r.get("api") == "admin"
               and r.get("action") == "createSession")


def test_back_to_back_probe_calls_log_in_once_per_window(tmp_path: Path, test_pki: PKI, emulator: Emulator) -> None:
    window = 1.0
    with _start(tmp_path, test_pki, emulator, f"schedule = false\nprobe_reuse_window = {window:g}") as fc:
        base = fc.metrics_url().rsplit("/", 1)[0]
        s = _session()  # one keep-alive connection, one call after the other
        created0 = emulator.sessions_created()
        calls, ages = 0, []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            r = s.get(base + "/probe?target=prod", timeout=10)
            assert r.status_code == 200
            calls += 1
            ages.append(int(r.headers["Age"]))
            assert "\n# fcmon: this probe ended " in r.text  # how old, as a comment line
            assert sample(r.text, "fcmon_up", target="prod") == 1.0  # still the text format
        elapsed = time.monotonic() - t0
        logins = emulator.sessions_created() - created0
        print(f"\n{calls} back-to-back /probe calls in {elapsed:.1f} s: {logins} FairCom logins "
              f"(window {window:g} s)")
        assert 1 <= logins <= elapsed / window + 1
        assert calls > logins
        assert all(0 <= a <= window for a in ages)
        assert fc.stop() == 0


def test_debug_probe_is_fresh_but_one_at_a_time(tmp_path: Path, test_pki: PKI, emulator: Emulator) -> None:
    with _start(tmp_path, test_pki, emulator, "schedule = false\nprobe_reuse_window = 30") as fc:
        base = fc.metrics_url().rsplit("/", 1)[0]
        assert _session().get(base + "/probe?target=prod", timeout=10).status_code == 200
        plain_created = emulator.sessions_created()
        # A plain call now reuses that result; a debug call probes afresh.
        assert _session().get(base + "/probe?target=prod", timeout=10).status_code == 200
        assert emulator.sessions_created() == plain_created
        emulator.set_fault("createSession", Fault(delay=3.0, count=1))
        seen = _creates(emulator)
        first: List[requests.Response] = []
        t = threading.Thread(target=lambda: first.append(
            _session().get(base + "/probe?target=prod&debug=true", timeout=30)))
        t.start()
        wait_for(lambda: _creates(emulator) > seen)  # its createSession is held by the emulator
        second = _session().get(base + "/probe?target=prod&debug=true", timeout=10)
        assert second.status_code == 503 and second.headers["Retry-After"]
        t.join(30)
        assert first[0].status_code == 200 and "ended" not in first[0].text.splitlines()[0]
        assert emulator.sessions_created() == plain_created + 1
        # Within the window, another debug call is the latest result, with its age.
        third = _session().get(base + "/probe?target=prod&debug=true", timeout=10)
        assert third.status_code == 200 and third.text.startswith("# This probe ended ")
        assert emulator.sessions_created() == plain_created + 1
        text = _session().get(base + "/metrics", timeout=10).text
        assert sample(text, "fcmon_probe_requests_rejected_total") == 1.0
        assert fc.stop() == 0


@pytest.mark.slow
def test_page_pollers_do_not_hold_up_scrapes(tmp_path: Path, test_pki: PKI, emulator: Emulator) -> None:
    """20 pollers of the status page and its JSON at 200 targets: every
    scrape and health check answers meanwhile, the pollers get the shared
    rendering (the same bytes within a period), and the lanes' counters are
    exported."""
    with _start(tmp_path, test_pki, emulator, "interval = 5\ntimeout = 2", targets=200) as fc:
        base = fc.metrics_url().rsplit("/", 1)[0]
        wait_for(lambda: _session().get(base + "/-/ready", timeout=10).status_code == 200, timeout=60)
        stop = threading.Event()
        answers: List[int] = []

        def poll(path: str) -> None:
            s = _session()
            while not stop.is_set():
                try:
                    answers.append(s.get(base + path, timeout=30).status_code)
                except requests.RequestException:
                    answers.append(0)

        pollers = [threading.Thread(target=poll, args=("/" if i % 2 else "/api/v1/status",)) for i in range(20)]
        for p in pollers:
            p.start()
        try:
            wait_for(lambda: len(answers) > 40, timeout=60)
            for _ in range(10):
                for path in ("/metrics", "/-/healthy", "/-/ready"):
                    assert _session().get(base + path, timeout=30).status_code == 200
        finally:
            stop.set()
            for p in pollers:
                p.join(30)
        assert set(answers) <= {200, 503}, set(answers)
        assert answers.count(200) > 0
        # One rendering, shared: two calls in a row give the same bytes (and its age).
        a = _session().get(base + "/api/v1/status", timeout=10)
        b = _session().get(base + "/api/v1/status", timeout=10)
        if int(b.headers["Age"]) >= int(a.headers["Age"]):  # not rebuilt in between
            assert a.content == b.content
        text = _session().get(base + "/metrics", timeout=10).text
        for lane in (SCRAPE_LANE.name, PAGE_LANE.name, PROBE_LANE.name):
            assert sample(text, "fcmon_http_requests_shed_total", lane=lane) is not None
            assert sample(text, "fcmon_http_requests_dropped_total", lane=lane) is not None
        assert sample(text, "fcmon_http_requests_shed_total", lane=SCRAPE_LANE.name) == 0
        assert fc.stop() == 0
    assert "Traceback" not in fc.text()
