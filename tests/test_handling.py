"""A failure while handling a result (metrics store, renderer, status board,
log) is a failure of that target: reason `internal`, logged at error level
with its traceback once, the target's state updated; never a swallowed error
and a frozen series. The daemon in-process against the emulator; the failure
is forced in the exposition renderer, standing for a bug there."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fcmon.export import exposition
from fcmon.config import load_config
from fcmon.service.daemon import Daemon
from fcmon.emulator import Emulator, Fault
from fcmon.service.handling import internal_result
from fcmon.probe.result import Failure, ProbeResult

from support import PKI, sample, target_section, write_config


def _exposition(daemon: Daemon) -> str:
    return b"".join(daemon.renderer.body()).decode()


def test_a_failure_while_handling_a_result_is_the_targets_internal(
        test_pki: PKI, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # probe_reuse_window 0: each probe_now() probes (no result served again)
    config = write_config(tmp_path / "config.ini", "[fcmon]\nlisten = 127.0.0.1:0\nschedule = false\n"
                          "probe_reuse_window = 0\n" + target_section(test_pki, emulator, listeners="none"))
    daemon = Daemon(load_config(config, {}), {})
    try:
        real = exposition.render_target

        def broken(name: str, state):  # type: ignore[no-untyped-def]
            latest = state.latest
            if latest is not None and (latest.failure is None or latest.failure.reason != "internal"):
                raise RuntimeError("a bug in the renderer")
            return real(name, state)

        assert daemon.probe_now("prod") is not None
        assert sample(_exposition(daemon), "fcmon_up", target="prod") == 1.0
        monkeypatch.setattr(exposition, "render_target", broken)
        with caplog.at_level(logging.ERROR, logger="fcmon.service.handling"):
            emulator.set_fault("createSession", Fault(error_code=150))  # the server now fails...
            assert daemon.probe_now("prod") is not None
            assert daemon.probe_now("prod") is not None
        text = _exposition(daemon)
        # ...and the series do not freeze at up: the target is down, internal
        assert sample(text, "fcmon_up", target="prod") == 0.0
        assert sample(text, "fcmon_probe_failures_total", target="prod", stage="create_session",
                      reason="internal") == 2.0
        assert sample(text, "fcmon_probes_total", target="prod") == 3.0  # each probe counted once
        status = {t.name: t for t in daemon.board.snapshot().targets}["prod"]
        assert status.state == "down" and status.latest is not None
        assert status.latest.failure is not None and status.latest.failure.reason == "internal"
        errors = [r for r in caplog.records if r.name == "fcmon.service.handling"]
        assert [r.levelno for r in errors] == [logging.ERROR, logging.ERROR]
        assert errors[0].exc_info is not None and "RuntimeError" in caplog.text  # the traceback, once
        assert errors[1].exc_info is None and "traceback logged before" in errors[1].getMessage()
        monkeypatch.setattr(exposition, "render_target", real)
        emulator.clear_faults()
        assert daemon.probe_now("prod") is not None
        assert sample(_exposition(daemon), "fcmon_up", target="prod") == 1.0
    finally:
        daemon.web.stop()  # its listening socket, bound at construction


def test_internal_result_keeps_the_target_and_drops_the_server_data() -> None:
    result = ProbeResult("t", 1.0, 2.0, 1.0, failure=Failure("list_databases", "api_error", "x"),
                         steps=(("connect", 0.1),), database_names=("a",), session_leaked=True)
    out = internal_result(result, KeyError("boom"))
    assert out.failure == Failure("list_databases", "internal",
                                  "internal error handling the probe's result: KeyError")
    assert (out.target, out.started, out.ended, out.steps, out.session_leaked) == ("t", 1.0, 2.0,
                                                                                    (("connect", 0.1),), True)
    assert out.database_names == () and out.server is None and out.certs == ()


@pytest.mark.parametrize("fmt", ["text", "json", "prometheus"])
def test_a_failure_while_rendering_check_output_is_unknown_not_a_crash(
        fmt: str, test_pki: PKI, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """`fcmon check` exits 3 UNKNOWN naming an internal error (a crash would
    exit 1, which Nagios reads as WARNING); the traceback goes to stderr."""
    from fcmon.commands import check
    from fcmon import cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the renderer")

    if fmt == "prometheus":  # the store under the exposition (UNKNOWN renders through it too, empty)
        monkeypatch.setattr(check.MetricsStore, "record", broken)
    else:
        monkeypatch.setattr(check, {"text": "render_text", "json": "render_json"}[fmt], broken)
    config = write_config(tmp_path / "config.ini", target_section(test_pki, emulator, listeners="none"))
    code = cli.main(["check", "--config", str(config), "--format", fmt], {})
    out, err = capsys.readouterr()
    assert code == 3
    assert "internal error in fcmon while handling the results: RuntimeError" in out
    assert "Traceback" in err and "Traceback" not in out
