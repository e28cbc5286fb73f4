"""`fcmon demo`: throw-away PKI, emulator, daemon; fcmon_up 1 within 15 s."""

from __future__ import annotations

import signal
import time

import pytest

from support import FcmonProcess, sample, scrape

pytestmark = pytest.mark.slow


def test_demo_serves_up_within_15_seconds() -> None:
    started = time.monotonic()
    with FcmonProcess("demo", "--listen", "127.0.0.1:0") as fc:
        url = fc.metrics_url(timeout=15)

        def up() -> bool:
            return sample(scrape(url), "fcmon_up", target="demo") == 1

        deadline = started + 15
        while not up():
            assert time.monotonic() < deadline, fc.text()
            time.sleep(0.1)
        text = scrape(url)
        assert sample(text, "fcmon_cert_expiry_days", target="demo", cert="client") is not None
        assert fc.stop(signal.SIGINT) == 0
    assert "Traceback" not in fc.text()
