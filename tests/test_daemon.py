"""`fcmon run` as a process: started, scraped over HTTP, reloaded, signalled."""

from __future__ import annotations

import signal
import time

import pytest

from fcmon.emulator import Emulator, Fault
from fcmon.web.httpd import REJECT_REASONS

from support import PKI, FcmonProcess, run_fcmon, sample, scrape, taken_port, target_section, wait_for

pytestmark = pytest.mark.slow

HEAD = """\
[fcmon]
listen = 127.0.0.1:0
interval = 2
timeout = 1.5
log_level = debug
"""


def test_run_scrape_sigterm(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator))
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        text = wait_for(lambda: (lambda t: t if sample(t, "fcmon_up", target="prod") == 1 else None)(scrape(url)))
        assert sample(text, "fcmon_databases", target="prod") == 2
        for step in ("connect", "create_session", "list_databases", "delete_session"):
            assert sample(text, "fcmon_step_duration_seconds", target="prod", step=step) is not None
        assert sample(text, "fcmon_config_last_reload_successful") == 1
        # Each reason the front door may refuse a connection is there from the start, at 0.
        for reason in REJECT_REASONS:
            assert sample(text, "fcmon_http_connections_rejected_total", reason=reason) == 0, reason
        assert sample(text, "process_resident_memory_bytes") is not None
        base = url.rsplit("/", 1)[0]
        assert scrape(base + "/-/healthy").strip() == "OK"
        assert scrape(base + "/-/ready").strip() == "OK"
        code = fc.stop(signal.SIGTERM)
        assert code == 0, fc.text()
    assert emulator.open_sessions() == 0
    assert "Traceback" not in fc.text()
    assert "ADMIN\n" not in fc.text()


def test_sigterm_during_slow_list_deletes_session(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    emulator.set_fault("listDatabases", Fault(delay=1.0))
    created = emulator.sessions_created()
    config = tmp_path / "config.ini"
    config.write_text(HEAD.replace("timeout = 1.5", "timeout = 1.8") + target_section(test_pki, emulator))
    with FcmonProcess("run", "-c", str(config)) as fc:
        fc.metrics_url()
        # Wait until a probe has created its session and sits in listDatabases.
        wait_for(lambda: emulator.sessions_created() > created and emulator.open_sessions() > 0)
        started = time.monotonic()
        code = fc.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
    assert code == 0, fc.text()
    assert elapsed < 1.8 + 5
    assert emulator.open_sessions() == 0


def test_sighup_reload_adds_removes_and_survives_bad_config(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator, "one"))
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        wait_for(lambda: sample(scrape(url), "fcmon_up", target="one") == 1)
        config.write_text(HEAD + target_section(test_pki, emulator, "two"))
        fc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sample(scrape(url), "fcmon_up", target="two") == 1)
        fc.wait_for_line(r"config reloaded: 1 target; added two; removed one$")
        text = scrape(url)
        assert 'target="one"' not in text
        fc.proc.send_signal(signal.SIGHUP)
        fc.wait_for_line(r"config reloaded: 1 target; no change to targets$")
        config.write_text(HEAD + "[target:three]\nendpont = https://x/api\n")
        fc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sample(scrape(url), "fcmon_config_last_reload_successful") == 0)
        # The reason is logged (before the gauge drops, but the test's reader
        # thread may not have read that line yet on a loaded machine).
        fc.wait_for_line(r"endpont")
        before = sample(scrape(url), "fcmon_probes_total", target="two") or 0
        wait_for(lambda: (sample(scrape(url), "fcmon_probes_total", target="two") or 0) > before)
        assert fc.stop() == 0
    assert emulator.open_sessions() == 0


def test_invalid_config_exits_nonzero_without_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\ninterval = soon\n[target:a]\nendpoint = http://x/api\n")
    with FcmonProcess("run", "-c", str(config)) as fc:
        code = fc.proc.wait(30)
        fc._reader.join(5)
    assert code != 0
    text = fc.text()
    assert "Traceback" not in text
    assert "[fcmon] interval" in text
    assert "[target:a] endpoint" in text


def test_taken_listen_port_is_one_line_and_exit_1(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with taken_port() as sock:
        port = sock.getsockname()[1]
        config = tmp_path / "config.ini"
        config.write_text(HEAD.replace("127.0.0.1:0", f"127.0.0.1:{port}") + target_section(test_pki, emulator))
        proc = run_fcmon("run", "-c", str(config))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"fcmon: cannot listen on 127.0.0.1:{port}: address already in use; "
                           f"set another address with `listen = HOST:PORT` in [fcmon] of {config}\n")
    assert emulator.open_sessions() == 0


def test_schedule_off_probes_only_on_request(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(HEAD.replace("interval = 2", "interval = 2\nschedule = false")
                      + target_section(test_pki, emulator, "one") + target_section(test_pki, emulator, "two"))
    created = emulator.sessions_created()
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        base = url.rsplit("/", 1)[0]
        assert scrape(base + "/-/ready").strip() == "OK"
        time.sleep(2.5)  # more than an interval: nothing may have been probed
        assert emulator.sessions_created() == created
        text = scrape(base + "/probe?target=two")
        assert sample(text, "fcmon_up", target="two") == 1
        assert 'target="one"' not in text
        assert emulator.sessions_created() == created + 1
        import requests

        s = requests.Session()
        s.trust_env = False
        for bad in ("three", "localhost:8443"):
            assert s.get(base + "/probe", params={"target": bad}, timeout=10).status_code == 404
        # no target at all: the caller's mistake, the parameter named
        assert s.get(base + "/probe", params={"target": ""}, timeout=10).status_code == 400
        assert s.get(base + "/probe", timeout=10).status_code == 400
        assert emulator.sessions_created() == created + 1
        assert fc.stop() == 0
    assert emulator.open_sessions() == 0


def test_a_hung_target_does_not_hold_up_the_others(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as hung:
        for action in ("createSession", "listDatabases", "deleteSession"):
            hung.set_fault(action, Fault(hang=True))
        config = tmp_path / "config.ini"
        config.write_text("[fcmon]\nlisten = 127.0.0.1:0\ninterval = 1\ntimeout = 0.8\n"
                          + target_section(test_pki, emulator, "healthy")
                          + target_section(test_pki, hung, "hung"))
        with FcmonProcess("run", "-c", str(config)) as fc:
            url = fc.metrics_url()
            wait_for(lambda: sample(scrape(url), "fcmon_up", target="healthy") == 1)
            first = sample(scrape(url), "fcmon_probes_total", target="healthy") or 0
            time.sleep(6)
            text = scrape(url)
            assert fc.stop() == 0
    # About one probe a second for the healthy target, none skipped; the hung
    # one times out every time and is skipped when its previous run overlaps.
    assert (sample(text, "fcmon_probes_total", target="healthy") or 0) - first >= 4
    assert sample(text, "fcmon_probes_skipped_total", target="healthy", reason="server_busy") == 0
    assert sample(text, "fcmon_up", target="healthy") == 1
    assert sample(text, "fcmon_probe_failures_total", target="hung", stage="create_session",
                  reason="timeout") is not None
    assert emulator.open_sessions() == 0
