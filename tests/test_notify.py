"""The systemd notify protocol: the pure watchdog decision, Notifier, and the
real `fcmon run` talking to a datagram socket the test owns (as systemd would)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from fcmon.config import load_config
from fcmon.service.daemon import Daemon
from fcmon.emulator import Emulator
from fcmon.service.notify import (
    STALL_SLACK,
    Notifier,
    notify_address,
    probes_keep_completing,
    stall_limit,
    watchdog_interval,
    watchdog_ping_due,
)

from support import PKI, FcmonProcess, free_port, sample, scrape, target_section, wait_for

# ---------------------------------------------------------------------------
# A stand-in for systemd's notify socket


@dataclass(frozen=True)
class Message:
    fields: Tuple[str, ...]
    pid: Optional[int]  # the sender, from SCM_CREDENTIALS

    def has(self, field: str) -> bool:
        return field in self.fields

    def value(self, key: str) -> Optional[str]:
        for f in self.fields:
            if f.startswith(key + "="):
                return f[len(key) + 1:]
        return None


class NotifySocket:
    """A bound AF_UNIX datagram socket that records every message and its sender's pid."""

    def __init__(self, address: str):
        self.address = address  # as in $NOTIFY_SOCKET: a path or @name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # systemd checks the sender's pid (NotifyAccess=main); so can the test.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._messages: List[Message] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        ucred = struct.calcsize("3i")
        while not self._closed.is_set():
            try:
                data, ancdata, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(ucred))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:ucred])[0]
            with self._lock:
                self._messages.append(Message(tuple(data.decode().split("\n")), pid))

    def messages(self) -> List[Message]:
        with self._lock:
            return list(self._messages)

    def count(self, field: str) -> int:
        return sum(1 for m in self.messages() if m.has(field))

    def wait(self, field: str, timeout: float = 30.0, after: int = 0) -> Message:
        """The first message with `field` (exact, or a prefix ending in '=') at index >= after."""

        def found() -> Optional[Message]:
            for m in self.messages()[after:]:
                if m.has(field) or (field.endswith("=") and m.value(field[:-1]) is not None):
                    return m
            return None

        return wait_for(found, timeout)  # type: ignore[no-any-return]

    def wait_status(self, text: str, timeout: float = 30.0, after: int = 0) -> Message:
        """The first message at index >= after whose STATUS= contains `text`."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: next((m for m in self.messages()[after:] if text in (m.value("STATUS") or "")), None),
            timeout)

    def last_status(self) -> Optional[str]:
        statuses = [m.value("STATUS") for m in self.messages() if m.value("STATUS") is not None]
        return statuses[-1] if statuses else None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="fcmon-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = str(short_dir / "notify.sock")
    else:
        address = f"@fcmon-test-{uuid.uuid4().hex}"
    ns = NotifySocket(address)
    yield ns
    ns.close()


# ---------------------------------------------------------------------------
# The watchdog decision (pure)

LIMIT = 75.0  # interval 60 + timeout 10 + slack 5


def keep(**kw: object) -> bool:
    args: dict = dict(scheduler_running=True, scheduled_targets=1, last_completion=None,
                      since=1000.0, now=1000.0, limit=LIMIT)
    args.update(kw)
    return probes_keep_completing(**args)


def test_watchdog_fresh_start_is_healthy_until_the_limit() -> None:
    assert keep(now=1000.0)
    assert keep(now=1000.0 + LIMIT - 1)
    # Nothing ever completed since the start: the scheduler never got going.
    assert not keep(now=1000.0 + LIMIT)
    assert not keep(now=1000.0 + 10 * LIMIT)


def test_watchdog_wedged_scheduler_stops_the_pings() -> None:
    # Probes completed, then nothing for longer than the limit: wedged.
    assert keep(last_completion=2000.0, now=2000.0 + LIMIT - 0.5)
    assert not keep(last_completion=2000.0, now=2000.0 + LIMIT + 0.5)
    # ... and pinging resumes as soon as a probe completes again.
    assert keep(last_completion=2100.0, now=2100.5)


def test_watchdog_scheduler_not_running_is_never_healthy() -> None:
    assert not keep(scheduler_running=False, last_completion=1000.0, now=1000.1)
    assert not keep(scheduler_running=False, scheduled_targets=0)


def test_watchdog_nothing_scheduled_cannot_stall() -> None:
    # [fcmon] schedule = false: probes run only through /probe?target=.
    assert keep(scheduled_targets=0, now=1e9)


def test_watchdog_reload_restarts_the_clock() -> None:
    # A reload rescheduled the jobs at 5000: an old last completion is no stall yet.
    assert keep(last_completion=1000.0, since=5000.0, now=5000.0 + LIMIT - 1)
    assert not keep(last_completion=1000.0, since=5000.0, now=5000.0 + LIMIT + 1)


def test_stall_limit_is_longest_interval_plus_timeout_plus_slack() -> None:
    assert stall_limit([60.0], [10.0]) == 75.0
    assert stall_limit([30.0, 120.0], [5.0, 20.0]) == 120.0 + 20.0 + STALL_SLACK
    assert stall_limit([], []) > 0


@pytest.mark.parametrize("interval,timeout", [(60.0, 10.0), (2.0, 1.5), (1.0, 0.9), (300.0, 299.0)])
def test_stall_limit_exceeds_the_worst_healthy_gap(interval: float, timeout: float) -> None:
    """Simulate one target's schedule in the worst case and find the longest
    gap between completions: a healthy daemon must never look wedged."""
    deadline = timeout + 1.0  # a probe ends within timeout + 1 s
    limit = stall_limit([interval], [timeout])
    completions: List[float] = []
    busy_until = -1.0
    for k in range(50):
        start = k * interval
        if start < busy_until:
            continue  # max_instances=1: skipped while the previous run overruns
        # Alternate the quickest and the slowest possible probe.
        end = start + (0.0 if k % 2 == 0 else deadline)
        completions.append(end)
        busy_until = end
    worst = max(b - a for a, b in zip(completions, completions[1:]))
    assert worst < limit
    assert limit - worst >= STALL_SLACK - 1.0  # room for scheduling latency


def test_ping_due_at_half_the_watchdog_interval() -> None:
    assert watchdog_ping_due(10.0, None, 120.0)
    assert not watchdog_ping_due(10.0 + 59.0, 10.0, 120.0)
    assert watchdog_ping_due(10.0 + 60.0, 10.0, 120.0)
    assert watchdog_ping_due(10.0 + 500.0, 10.0, 120.0)


# ---------------------------------------------------------------------------
# Notifier: addresses, environment, sending


def test_notify_address_parsing() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"
    assert notify_address("@x") == "\0x"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("relative/notify.sock") is None


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}) == 120.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, pid=4242) == 1.0
    # Meant for another process (an inherited environment): not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=4242) is None
    for bad in ("", "0", "-5", "soon", "1.5"):
        assert watchdog_interval({"WATCHDOG_USEC": bad}) is None
    assert watchdog_interval({}) is None


def test_notifier_disabled_without_notify_socket() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.watchdog_interval is None  # nobody to ping
    assert n.send("READY=1") is False


def test_notifier_sends_to_path_and_abstract_sockets(short_dir: Path) -> None:
    for address in (str(short_dir / "n.sock"), f"@fcmon-unit-{uuid.uuid4().hex}"):
        ns = NotifySocket(address)
        try:
            n = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
            assert n.enabled and n.address == address
            assert n.watchdog_interval == 2.0
            assert n.send("READY=1", "STATUS=2 targets, 1 up")
            m = ns.wait("READY=1", timeout=10)
            assert m.fields == ("READY=1", "STATUS=2 targets, 1 up")
            assert m.pid == os.getpid()
        finally:
            ns.close()


def test_notifier_failure_is_logged_once_and_recovers(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    address = str(short_dir / "later.sock")
    n = Notifier({"NOTIFY_SOCKET": address})
    with caplog.at_level(logging.INFO, logger="fcmon.service.notify"):
        assert n.send("WATCHDOG=1") is False
        assert n.send("WATCHDOG=1") is False
        ns = NotifySocket(address)
        try:
            assert n.send("WATCHDOG=1") is True
            ns.wait("WATCHDOG=1", timeout=10)
        finally:
            ns.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and address in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# The daemon's main loop with a wedged scheduler (in-process)


class WedgedScheduler:
    """Runs, but no probe ever completes (a dead worker pool, a stuck thread)."""

    running = True
    first_round_done = False
    last_completion: Optional[float] = None

    def start(self, targets: object) -> None:
        pass

    def update(self, targets: object) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        self.running = False


def test_main_loop_stops_pinging_when_probes_stop_completing(  # type: ignore[no-untyped-def]
        test_pki: PKI, emulator: Emulator, tmp_path, short_dir: Path, caplog) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\nlisten = 127.0.0.1:0\ninterval = 2\ntimeout = 1\n"
                      + target_section(test_pki, emulator))
    ns = NotifySocket(str(short_dir / "notify.sock"))
    env = {"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": "400000"}
    daemon = Daemon(load_config(config, env), env)
    wedged = WedgedScheduler()
    daemon.scheduler = wedged  # type: ignore[assignment]
    limit = 2 + 1 + STALL_SLACK
    daemon._started = time.monotonic() - limit - 1  # started long ago, nothing completed since
    codes: List[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="fcmon.service.daemon"):
            thread.start()
            ns.wait("READY=1")
            stalled = ns.wait_status("probes stalled")
            # Many ticks (0.1 s each) later: still not a single ping.
            time.sleep(1.5)
            assert ns.count("WATCHDOG=1") == 0
            assert not daemon.healthy()
            assert any("no probe completed" in r.getMessage() and "systemd will restart" in r.getMessage()
                       for r in caplog.records)
            # A probe completes: the pings resume and the status clears.
            before = len(ns.messages())
            wedged.last_completion = time.monotonic()
            ns.wait("WATCHDOG=1", after=before)
            assert ns.wait_status("1 target", after=before).value("STATUS") == "1 target, 0 up"
            assert stalled.value("STATUS") == "1 target, 0 up; probes stalled"
            daemon.request_stop()
            ns.wait("STOPPING=1")
            thread.join(20)
            assert codes == [0]
    finally:
        daemon.request_stop()
        thread.join(20)
        ns.close()


# ---------------------------------------------------------------------------
# The real `fcmon run` as systemd would run it

HEAD = """\
[fcmon]
listen = 127.0.0.1:0
interval = 2
timeout = 1.5
"""


@pytest.mark.slow
def test_run_speaks_the_notify_protocol(  # type: ignore[no-untyped-def]
        test_pki: PKI, emulator: Emulator, tmp_path, notify_socket: NotifySocket) -> None:
    ns = notify_socket
    dead = free_port()  # nothing listens here: that target stays down
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator, "live")
                      + target_section(test_pki, emulator, "dead").replace(
                          emulator.url, f"https://127.0.0.1:{dead}/api"))
    env = {"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": ""}
    with FcmonProcess("run", "-c", str(config), env=env) as fc:
        ready = ns.wait("READY=1")
        # READY=1 promises a listening endpoint: one scrape, no retry.
        url = fc.metrics_url()
        assert sample(scrape(url), "fcmon_build_info") is not None
        assert (ready.value("STATUS") or "").startswith("2 targets, ")
        # Every message so far came from the main process (NotifyAccess=main).
        status = ns.wait_status("2 targets, 1 up")
        assert status.pid == fc.proc.pid
        # Both probed (the second target starts half an interval later): one up, one down.
        wait_for(lambda: sample(scrape(url), "fcmon_up", target="dead") == 0, timeout=30)
        assert sample(scrape(url), "fcmon_up", target="live") == 1
        wait_for(lambda: ns.last_status() == "2 targets, 1 up", timeout=30)
        # Pings keep coming while probes keep completing.
        pings = ns.count("WATCHDOG=1")
        wait_for(lambda: ns.count("WATCHDOG=1") >= pings + 3, timeout=30)
        probes = sample(scrape(url), "fcmon_probes_total", target="live") or 0
        wait_for(lambda: (sample(scrape(url), "fcmon_probes_total", target="live") or 0) > probes, timeout=30)
        wait_for(lambda: ns.count("WATCHDOG=1") >= pings + 6, timeout=30)
        assert all(m.pid == fc.proc.pid for m in ns.messages())
        code = fc.stop(signal.SIGTERM)
        assert code == 0, fc.text()
    # Tolerate a datagram still in flight when the process exited.
    wait_for(lambda: ns.count("STOPPING=1") == 1, timeout=10)
    fields = [f for m in ns.messages() for f in m.fields]
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert "WATCHDOG=1" not in fields[fields.index("STOPPING=1"):]
    assert "Traceback" not in fc.text()
    assert emulator.open_sessions() == 0


@pytest.mark.slow
def test_run_reload_notifies_and_reports_a_broken_config(  # type: ignore[no-untyped-def]
        test_pki: PKI, emulator: Emulator, tmp_path, short_dir: Path) -> None:
    ns = NotifySocket(str(short_dir / "notify.sock"))
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator, "one"))
    env = {"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": ""}
    try:
        with FcmonProcess("run", "-c", str(config), env=env) as fc:
            ns.wait_status("1 target, 1 up")
            config.write_text(HEAD + "[target:three]\nendpont = https://x/api\n")
            before = len(ns.messages())
            fc.proc.send_signal(signal.SIGHUP)
            reloading = ns.wait("RELOADING=1", after=before)
            assert (reloading.value("MONOTONIC_USEC") or "").isdigit()
            ready = ns.wait("READY=1", after=before)
            # The old config keeps running, and `systemctl status` says why it is old.
            assert ready.value("STATUS") == "1 target, 1 up; config reload failed, running the previous config"
            pings = ns.count("WATCHDOG=1")
            wait_for(lambda: ns.count("WATCHDOG=1") >= pings + 2, timeout=30)
            # A good config again: the note goes away.
            config.write_text(HEAD + target_section(test_pki, emulator, "one")
                              + target_section(test_pki, emulator, "two"))
            fc.proc.send_signal(signal.SIGHUP)
            ns.wait_status("2 targets, 2 up")
            assert fc.stop() == 0, fc.text()
    finally:
        ns.close()
    assert emulator.open_sessions() == 0


@pytest.mark.slow
def test_run_without_systemd_sends_nothing(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator))
    env = {"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "1000000"}
    with FcmonProcess("run", "-c", str(config), env=env) as fc:
        url = fc.metrics_url()
        wait_for(lambda: sample(scrape(url), "fcmon_up", target="prod") == 1)
        assert fc.stop() == 0, fc.text()
    assert "sd_notify" not in fc.text()
    assert "Traceback" not in fc.text()
