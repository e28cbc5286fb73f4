"""`fcmon demo`: throw-away PKI, emulator, daemon; fcmon_up 1 within 15 s."""

from __future__ import annotations

import signal
import time

import pytest

from support import FcmonProcess, run_fcmon, sample, scrape, taken_port

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

        def listeners() -> bool:
            return sample(scrape(url), "fcmon_listeners", target="demo") == 2

        while not listeners():  # discovered with listServices, checked on their own cadence
            assert time.monotonic() < deadline + 10, fc.text()
            time.sleep(0.1)
        text = scrape(url)
        assert sample(text, "fcmon_listener_up", target="demo", listener="mqtts") == 1
        assert sample(text, "fcmon_listener_up", target="demo", listener="mqttwss") == 1
        # "5 days left" on the page, as the README says: whole days, rounded down
        assert 5 < sample(text, "fcmon_listener_cert_expiry_days", target="demo", listener="mqtts",  # type: ignore[operator]
                          cert="server") < 5.5
        assert fc.stop(signal.SIGINT) == 0
    assert "Traceback" not in fc.text()


def test_demo_on_a_taken_port_is_one_line_and_exit_1() -> None:
    with taken_port() as sock:
        port = sock.getsockname()[1]
        proc = run_fcmon("demo", "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # The emulator it started logs its stop; the last word is the reason.
    assert proc.stderr.splitlines()[-1] == (f"fcmon: cannot listen on 127.0.0.1:{port}: address already in use; "
                                            "choose another address with --listen HOST:PORT "
                                            "(e.g. fcmon demo --listen 127.0.0.1:9732)")
