"""Failed basic auth: counted, logged without secrets, slowed per address
(fcmon/web/authguard.py), the wait spent on the event loop, not a thread."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from typing import List

import pytest

import fcmon.web.authguard as authguard
from fcmon.web.authguard import AuthGuard
from fcmon.config import WebConfig
from fcmon.web.app import App, WebServer

from support import wait_for

PASSWORD = "right-Pa55"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_free_failures_then_one_request_per_penalty_then_429() -> None:
    clock = _Clock()
    counted: List[int] = []
    guard = AuthGuard(lambda: counted.append(1), clock)
    for _ in range(authguard.FREE_FAILURES):
        assert guard.admit("10.0.0.1") == 0.0
        guard.failed("10.0.0.1")
    waits = [guard.admit("10.0.0.1") for _ in range(int(authguard.MAX_WAIT / authguard.PENALTY) + 3)]
    assert waits[0] == 0.0 and waits[1] == authguard.PENALTY  # queued one per PENALTY
    assert waits[-1] is None  # beyond MAX_WAIT: 429
    assert guard.admit("10.0.0.2") == 0.0  # another address is not affected
    assert len(counted) == authguard.FREE_FAILURES
    clock.now += authguard.WINDOW + 1  # a quiet window forgives
    assert guard.admit("10.0.0.1") == 0.0


def test_success_clears_and_addresses_are_bounded() -> None:
    clock = _Clock()
    guard = AuthGuard(clock=clock)
    for _ in range(authguard.FREE_FAILURES + 1):
        guard.failed("a")
    guard.succeeded("a")
    assert guard.admit("a") == 0.0
    for i in range(authguard.MAX_ADDRESSES + 10):
        guard.failed(f"k{i}")
    assert len(guard._records) == authguard.MAX_ADDRESSES


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _ask(source: str, port: int, password: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  f"Authorization: Basic {_basic('prometheus', password)}\r\n\r\n".encode())
        return s.recv(100)


def test_guesser_is_slowed_and_others_are_not(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(authguard, "PENALTY", 0.2)
    monkeypatch.setattr(authguard, "MAX_WAIT", 1.0)
    failures: List[int] = []
    web_config = WebConfig(basic_auth_username="prometheus", basic_auth_password=PASSWORD)
    app = App(lambda: b"fcmon_up 1\n", lambda: True, lambda: True, lambda name: None, web_config,
              on_auth_failure=lambda: failures.append(1))
    web = WebServer(app, "127.0.0.1", 0, None)
    web.start()
    try:
        caplog.set_level(logging.WARNING, logger="fcmon.web.authguard")
        # One guess after another: FREE_FAILURES at once, then one a PENALTY.
        started = time.monotonic()
        for i in range(8):
            assert _ask("127.0.0.2", web.port, f"guess{i}").startswith(b"HTTP/1.1 401 ")
        assert time.monotonic() - started >= 0.2 * (8 - authguard.FREE_FAILURES - 1)
        # Then 40 at once: those that would wait beyond MAX_WAIT get 429 at once.
        answers: List[bytes] = []
        guessers = [threading.Thread(target=lambda i=i: answers.append(_ask("127.0.0.2", web.port, f"guess{i}")))
                    for i in range(40)]
        for g in guessers:
            g.start()
        # Meanwhile the right credentials from another address: answered, not queued.
        for _ in range(5):
            assert _ask("127.0.0.1", web.port, PASSWORD).startswith(b"HTTP/1.1 200 ")
        for g in guessers:
            g.join(30)
        elapsed = time.monotonic() - started
        statuses = [a[9:12].decode() for a in answers]
        assert set(statuses) <= {"401", "429"}
        assert statuses.count("401") <= int(1.0 / 0.2) + 2
        assert len(failures) == 8 + statuses.count("401")
        lines = [r.getMessage() for r in caplog.records if r.name == "fcmon.web.authguard"]
        assert lines and "127.0.0.2" in lines[0]
        assert len(lines) <= 1 + int(elapsed / authguard.LOG_EVERY)  # rate-limited
        assert not any("guess" in line or PASSWORD in line or "prometheus" in line for line in lines)
    finally:
        web.stop()
