"""`fcmon check`: Nagios exit codes and the three formats, run as a process."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Dict

import pytest

from fcmon.emulator import Emulator

from support import PKI, fcmon_command, free_port, require_tool, sample, target_section

HEAD = "[fcmon]\ninterval = 60\ntimeout = 3\n"


def run_check(config, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(fcmon_command("check", "-c", str(config), *args),
                          capture_output=True, text=True, timeout=60)


def healthy_config(tmp_path, test_pki: PKI, emu: Emulator):  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emu))
    return config


def test_ok(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_check(healthy_config(tmp_path, test_pki, emulator))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("OK - prod: up")
    assert "'prod_list_databases'=" in first
    assert emulator.open_sessions() == 0


def test_certificate_inside_crit_days_is_critical(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The test certificates are valid about 365 days.
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--warn-days", "500", "--crit-days", "400")
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.startswith("CRITICAL")
    assert "days left" in proc.stdout and "expires in" not in proc.stdout  # whole days, the people rule


def test_certificate_inside_warn_days_is_warning(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--warn-days", "400", "--crit-days", "7")
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.startswith("WARNING")


def test_unreachable_is_critical_with_reason_in_json(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    section = target_section(test_pki, emulator).replace(emulator.url, f"https://localhost:{free_port()}/api")
    config.write_text(HEAD + section)
    proc = run_check(config, "--format", "json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["status"] == "CRITICAL" and doc["exit_code"] == 2
    (t,) = doc["targets"]
    last = t["last_probe"]
    assert (t["name"], t["state"], t["level"]) == ("prod", "down", "critical")
    assert {k: last["failure"][k] for k in ("stage", "reason")} == {"stage": "connect", "reason": "connect_refused"}
    assert last["failure"]["runbook"].endswith("/docs/runbook.md#connect_refused")
    assert {c["role"] for c in last["certificates"]} == {"client", "ca"}
    assert last["databases"] is None and last["database_names"] == []


def test_json_lists_databases(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--format", "json")
    assert proc.returncode == 0
    (t,) = json.loads(proc.stdout)["targets"]
    assert t["last_probe"]["databases"] == 2 and t["last_probe"]["database_names"] == ["ctreeSQL", "faircom"]


def test_prometheus_format_and_textfile(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    textfile = tmp_path / "fcmon.prom"
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--format", "prometheus",
                     "--textfile", str(textfile))
    assert proc.returncode == 0
    assert sample(proc.stdout, "fcmon_up", target="prod") == 1
    written = textfile.read_text()
    assert sample(written, "fcmon_up", target="prod") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fcmon.prom")]  # no temp file left
    promtool = require_tool("promtool")
    lint = subprocess.run([promtool, "check", "metrics"], input=written, capture_output=True, text=True)
    assert [l for l in (lint.stdout + lint.stderr).splitlines() if l.strip()] == [
        'fcmon_cert_expiry_days use base unit "seconds" instead of "days"']


def test_unknown_target_and_bad_config_are_unknown(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--target", "nope")
    assert proc.returncode == 3
    assert "nope" in proc.stdout
    bad = tmp_path / "bad.ini"
    bad.write_text("[fcmon]\nintervall = 5\n")
    proc = run_check(bad)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert "intervall" in proc.stderr


SECRET = "Hunter2-secret"
BROKEN = f"[fcmon]\ninterval = 5\ntimout = 3\n[target:a]\nendpiont = https://db.example.com/api\nusername = u\npassword = {SECRET}\n"


def test_invalid_config_is_one_unknown_line_on_stdout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Nagios shows stdout: the problem must be there, on the plugin's one line.
    missing = run_check(tmp_path / "nowhere.ini")
    assert missing.returncode == 3
    assert missing.stdout == f"UNKNOWN - invalid config: {tmp_path / 'nowhere.ini'}: cannot read config: No such file or directory\n"
    bad = tmp_path / "bad.ini"
    bad.write_text(BROKEN)
    proc = run_check(bad)
    assert proc.returncode == 3
    assert proc.stdout == (f"UNKNOWN - invalid config: {bad}: 2 problems: "
                           "[fcmon] timout: unknown key, did you mean timeout?; "
                           "[target:a] endpiont: unknown key, did you mean endpoint?\n")
    assert "timout" in proc.stderr  # the list for a person, as before
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_config_in_json_and_prometheus(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.ini"
    bad.write_text(BROKEN)
    proc = run_check(bad, "--format", "json")
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["status"] == "UNKNOWN" and doc["exit_code"] == 3 and doc["targets"] == []
    assert doc["message"].startswith("invalid config: ") and doc["schema"] == 1
    assert [p.split(": ", 1)[1] for p in doc["problems"]] == [
        "[fcmon] timout: unknown key, did you mean timeout?",
        "[target:a] endpiont: unknown key, did you mean endpoint?"]
    assert SECRET not in proc.stdout

    # A textfile left with the last good results would look current to node_exporter.
    textfile = tmp_path / "fcmon.prom"
    textfile.write_text('fcmon_up{target="a"} 1\n')
    proc = run_check(bad, "--format", "prometheus", "--textfile", str(textfile))
    assert proc.returncode == 3
    for text in (proc.stdout, textfile.read_text()):
        assert sample(text, "fcmon_config_last_reload_successful") == 0
        assert sample(text, "fcmon_up", target="a") is None
    assert proc.stdout.startswith("# fcmon check: UNKNOWN - invalid config: ")
    assert SECRET not in proc.stdout
    promtool = require_tool("promtool")
    lint = subprocess.run([promtool, "check", "metrics"], input=proc.stdout, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_unknown_target_in_json_is_json(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_check(healthy_config(tmp_path, test_pki, emulator), "--target", "nope", "--format", "json")
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["status"] == "UNKNOWN" and "nope" in doc["message"]


# Nagios plugin guidelines: 'label'=value[UOM];[warn];[crit];[min];[max], space
# separated; a label holds no `=` or `'` and is quoted when it has spaces; UOM
# is one of s us ms % B KB MB TB c; thresholds are ranges [@][start:][end].
_NUM = r"-?[0-9]+(?:\.[0-9]+)?"
_RANGE = rf"(?:@?(?:(?:~|{_NUM})?:)?(?:{_NUM})?)"
_PERF = re.compile(
    rf"(?:'(?P<quoted>[^'=]+)'|(?P<bare>[^'= ]+))=(?P<value>{_NUM})(?P<uom>s|us|ms|%|B|KB|MB|TB|c)?"
    rf"(?:;(?P<warn>{_RANGE}))?(?:;(?P<crit>{_RANGE}))?(?:;(?P<min>{_NUM})?)?(?:;(?P<max>{_NUM})?)?(?= |$)"
)


def parse_perfdata(line: str) -> Dict[str, Dict[str, str]]:
    """label -> fields of the perfdata after the first `|`; fails on anything not perfdata."""
    head, sep, perf = line.partition("|")
    assert sep and "|" not in perf, line
    out: Dict[str, Dict[str, str]] = {}
    pos = 0
    perf = perf.strip()
    while pos < len(perf):
        m = _PERF.match(perf, pos)
        assert m, f"not Nagios perfdata at {perf[pos:]!r}"
        label = m.group("quoted") or m.group("bare")
        assert label not in out, f"duplicate perfdata label {label!r}"
        out[label] = {k: v for k, v in m.groupdict().items() if v is not None}
        pos = m.end()
        if pos < len(perf):
            assert perf[pos] == " ", perf[pos:]
            pos += 1
    return out


def test_perfdata_parses_and_has_days_left_per_certificate(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = healthy_config(tmp_path, test_pki, emulator)
    doc = json.loads(run_check(config, "--format", "json").stdout)
    (t,) = doc["targets"]
    proc = run_check(config, "--warn-days", "45", "--crit-days", "10.5")
    assert proc.returncode == 0, proc.stdout
    perf = parse_perfdata(proc.stdout.splitlines()[0])
    assert {"prod_connect", "prod_list_databases", "prod_databases"} <= set(perf)
    certs = {k: v for k, v in perf.items() if "_cert_" in k}
    listed = t["last_probe"]["certificates"]
    roles = {c["role"] for c in listed}
    assert roles >= {"server", "client", "ca"}
    # one label per role, never a serial: a renewal continues the same series
    assert set(certs) == {f"prod_cert_{role}_days" for role in roles}
    for role in roles:
        field = certs[f"prod_cert_{role}_days"]
        soonest = min(c["days_left"] for c in listed if c["role"] == role)
        assert abs(float(field["value"]) - soonest) < 0.1
        # Nagios ranges: alert when days left fall below the threshold.
        assert (field["warn"], field["crit"]) == ("45:", "10.5:")
        assert "uom" not in field


def test_perfdata_parser_rejects_what_nagios_would() -> None:
    assert parse_perfdata("OK - x | 'a b'=1s;2;3 c=-2.5;30:;7:")["a b"]["uom"] == "s"
    for bad in ("OK | a b=1", "OK | 'a=b'=1", "OK | a=1 a=2", "OK | a=x", "OK | a=1;2;3;4;5;6"):
        with pytest.raises(AssertionError):
            parse_perfdata(bad)


def test_internal_failure_is_unknown_not_critical() -> None:
    """fcmon's own failure says nothing about the server (Nagios: UNKNOWN)."""
    from fcmon.commands.check import CRITICAL, UNKNOWN, judge
    from fcmon.probe.result import Failure, ProbeResult

    def verdict(reason: str) -> int:
        result = ProbeResult(target="prod", started=0.0, ended=0.0, duration=0.0,
                             failure=Failure("list_databases", reason, "..."))
        return judge(result, warn_days=30, crit_days=7, now=0.0).status

    assert verdict("internal") == UNKNOWN
    assert verdict("timeout") == CRITICAL


def test_perfdata_labels_from_server_text_stay_perfdata() -> None:
    # A listener's name comes from the server: whatever it holds, the line parses.
    from fcmon.commands.check import _perf_label

    hostile = "mq tt='x'|y\nz\t"
    label = _perf_label("prod", "listener", hostile, "up")
    perf = parse_perfdata(f"OK - x | {label}=1;;1: 'prod_databases'=2")
    assert list(perf) == ["prod_listener_mq tt__x__y_z__up", "prod_databases"]


def test_server_text_with_a_pipe_cannot_start_perfdata(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fcmon.emulator import Fault

    config = tmp_path / "config.ini"
    config.write_text(HEAD + target_section(test_pki, emulator, "a") + target_section(test_pki, emulator, "b"))
    emulator.set_fault("createSession", Fault(error_code=12031, error_message="bad | worse\nnext", count=1))
    proc = run_check(config)
    assert proc.returncode == 2, proc.stdout
    first, *rest = proc.stdout.splitlines()
    assert {"a_connect", "b_connect"} <= set(parse_perfdata(first))
    assert "bad / worse next" in first  # the server's message, made plugin-safe
    assert rest and not [line for line in rest if "|" in line]


def test_ctrl_c_says_it_lets_the_probe_delete_its_session(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal

    from fcmon.emulator import Fault

    from support import wait_for

    emulator.set_fault("listDatabases", Fault(delay=2.0))
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\ntimeout = 8\n" + target_section(test_pki, emulator))
    proc = subprocess.Popen(fcmon_command("check", "-c", str(config)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: emulator.open_sessions() == 1, 20)  # createSession done, listDatabases held
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "interrupted; letting the probes in flight end and delete their sessions (at most 8 s)" in err
    assert "Traceback" not in err
    assert emulator.open_sessions() == 0  # the probe deleted its session before the exit
