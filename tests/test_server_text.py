"""Server text is cleaned once, where it enters a result: lone surrogates,
controls and bidi controls replaced, length capped; no renderer ever sees it
raw. Real TLS against the emulator; the daemon and `fcmon check` as processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from fcmon.emulator import Emulator, Fault, ListenerSpec
from fcmon.probe.run import Prober
from fcmon.probe.result import (
    CERT_NAME_MAX,
    ERROR_MESSAGE_MAX,
    FAILURE_MESSAGE_MAX,
    SERVER_FIELD_MAX,
    CallResult,
    CertInfo,
    Failure,
    ProbeResult,
    ServerInfo,
)
from fcmon.probe.servertext import ELLIPSIS, REPLACED, REPLACEMENT, clean

from support import PKI, FcmonProcess, make_target, run_fcmon, sample, target_section, wait_for, write_config


def is_clean(text: str) -> bool:
    """True when `text` holds nothing `clean` would replace."""
    return not any(ord(ch) in REPLACED for ch in text)


# Every kind of text a renderer must not see raw, in one string.
HOSTILE = "v\udfff\ud800\x00\x1b[31mred\x1b[0m\nFORGED ERROR fcmon: x\r\t\x7f\x85\x9b\u202e\u2066\u200f\u2028|z"


def test_clean_replaces_each_kind_and_keeps_plain_text() -> None:
    assert clean("FairCom EDGE 4.1 (x86) é 漢字 🙂", 100) == "FairCom EDGE 4.1 (x86) é 漢字 🙂"
    out = clean(HOSTILE, 1000)
    assert is_clean(out) and out.isprintable()
    assert out.startswith("v" + REPLACEMENT * 4 + "[31mred")
    assert "\n" not in out and " FORGED ERROR" in out  # a line break became a space
    out.encode("utf-8")  # a lone surrogate could not be encoded
    for code in (0x00, 0x1F, 0x7F, 0x80, 0x9F, 0xD800, 0xDFFF, 0x202A, 0x202E, 0x2066, 0x2069, 0x200E, 0x061C):
        assert code in REPLACED and clean(chr(code), 5) in (REPLACEMENT, " ")


def test_clean_caps_length_with_an_ellipsis() -> None:
    assert clean("x" * 10, 10) == "x" * 10
    cut = clean("x" * 11, 10)
    assert len(cut) == 10 and cut.endswith(ELLIPSIS)
    assert len(clean("\x00" * 100_000, 50)) == 50


def test_result_types_hold_no_raw_server_text() -> None:
    assert ServerInfo(HOSTILE, HOSTILE, HOSTILE).version == clean(HOSTILE, SERVER_FIELD_MAX)
    assert ServerInfo.from_result({"serverVersion": "\x00\n "}) == ServerInfo(REPLACEMENT)
    assert is_clean(CallResult("createSession", 0.1, 150, error_message=HOSTILE * 100).error_message or "")
    assert len(CallResult("x", 0, 1, error_message="e" * 10_000).error_message or "") == ERROR_MESSAGE_MAX
    assert len(Failure("connect", "api_error", HOSTILE * 1000).message) == FAILURE_MESSAGE_MAX
    cert = CertInfo("chain", "CN=" + HOSTILE * 1000, "1", 0.0, issuer=HOSTILE)
    assert len(cert.subject) == CERT_NAME_MAX and is_clean(cert.subject + cert.issuer)
    r = ProbeResult("t", 0, 0, 0, database_names=("ok", HOSTILE))
    assert r.database_names == ("ok", clean(HOSTILE, 200))


@pytest.fixture
def hostile_emulator(test_pki: PKI) -> Iterator[Emulator]:
    """Every server string hostile: serverVersion, hostname, hostUuid, a
    database name and a listener's serviceName (errorMessage: by a fault)."""
    listener = ListenerSpec("mq" + HOSTILE, "mqtts", test_pki.server.cert, test_pki.server.key)
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key, client_ca_file=test_pki.ca_file,
                  server_version=HOSTILE, hostname="h" + HOSTILE, host_uuid="u" + HOSTILE,
                  databases=("faircom", "db" + HOSTILE), listeners=[listener]) as emu:
        yield emu


@pytest.mark.parametrize("field", ["serverVersion", "hostname", "errorMessage"])
def test_probe_result_from_a_hostile_server_is_clean(field: str, test_pki: PKI, hostile_emulator: Emulator) -> None:
    if field == "errorMessage":
        hostile_emulator.set_fault("createSession", Fault(error_code=150, error_message=HOSTILE))
    result = Prober().probe(make_target(test_pki, hostile_emulator))
    texts = [c.error_message or "" for c in result.calls] + list(result.database_names)
    if field == "errorMessage":
        assert result.failure is not None and result.failure.reason == "api_error"
        assert clean(HOSTILE, ERROR_MESSAGE_MAX) in result.failure.message
        texts.append(result.failure.message)
    else:
        assert result.up, result.failure
        assert result.server is not None and result.server.version == clean(HOSTILE, SERVER_FIELD_MAX)
        texts += [result.server.version or "", result.server.hostname or "", result.server.uuid or ""]
    assert texts and all(is_clean(t) for t in texts)


def _raw_in(text: str) -> str:
    """The characters of `text` (split into lines) that clean() would have replaced."""
    return "".join(ch for line in text.split("\n") for ch in line if ord(ch) in REPLACED)


def test_daemon_with_every_server_field_hostile(test_pki: PKI, hostile_emulator: Emulator, tmp_path: Path) -> None:
    """The issue's case, with the daemon as a process: a lone surrogate (and
    controls, bidi controls) in serverVersion, hostname, a database name, a
    listener's serviceName, then in errorMessage with errorCode 150. The
    target's state keeps updating (up, then down), the pages answer 200, the
    log forges no line, and nothing rendered holds a raw character."""
    config = write_config(tmp_path / "config.ini", "[fcmon]\nlisten = 127.0.0.1:0\n"
                          "[defaults]\ninterval = 2\ntimeout = 1\n" + target_section(test_pki, hostile_emulator))
    with FcmonProcess("run", "--config", str(config)) as proc:
        url = proc.metrics_url()
        base = url[: -len("/metrics")]

        def up() -> object:
            return sample(requests.get(url, timeout=10).text, "fcmon_up", target="prod")

        assert wait_for(lambda: up() == 1.0)
        listener = wait_for(lambda: "mq" in requests.get(url, timeout=10).text
                            and 'listener="mq' in requests.get(url, timeout=10).text)
        assert listener
        hostile_emulator.set_fault("createSession", Fault(error_code=150, error_message=HOSTILE))
        assert wait_for(lambda: up() == 0.0)  # the state updates: down while the server fails
        pages = {path: requests.get(base + path, timeout=10) for path in ("/metrics", "/", "/api/v1/status")}
        assert {p: r.status_code for p, r in pages.items()} == {"/metrics": 200, "/": 200, "/api/v1/status": 200}
        status = pages["/api/v1/status"].json()
        assert REPLACEMENT in json.dumps(status, ensure_ascii=False)  # replaced, not dropped
        for path, r in pages.items():
            assert _raw_in(r.text) == "", path
        assert proc.stop() == 0
    log = proc.text()
    assert "FORGED ERROR" in log  # the text is there...
    assert not any(line.startswith("FORGED") for line in log.split("\n"))  # ...but never starts a line
    assert _raw_in(log) == ""


@pytest.mark.parametrize("fmt", ["text", "json", "prometheus"])
def test_check_with_every_server_field_hostile_exits_with_its_verdict(
        fmt: str, test_pki: PKI, hostile_emulator: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.ini", target_section(test_pki, hostile_emulator))
    textfile = tmp_path / "fcmon.prom"
    ok = run_fcmon("check", "--config", str(config), "--format", fmt, "--textfile", str(textfile))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    hostile_emulator.set_fault("createSession", Fault(error_code=150, error_message=HOSTILE))
    down = run_fcmon("check", "--config", str(config), "--format", fmt, "--textfile", str(textfile))
    assert down.returncode == 2, down.stdout + down.stderr  # CRITICAL, not a crash read as WARNING
    for out in (ok, down):
        assert _raw_in(out.stdout) == "" and _raw_in(out.stderr) == ""
    assert _raw_in(textfile.read_text("utf-8")) == ""
    if fmt == "text":
        first = down.stdout.split("\n")[0]
        assert first.startswith("CRITICAL") and "\x00" not in first and "\x1b" not in first
        assert "FORGED" in first  # the message stays on the Nagios line


def test_list_services_error_text_is_clean_before_it_is_logged() -> None:
    from fcmon.probe.listeners import DiscoveryUnsupported, parse_listeners

    with pytest.raises(DiscoveryUnsupported) as err:
        parse_listeners({"errorCode": 14701, "errorMessage": HOSTILE}, 8443)
    assert is_clean(str(err.value)) and "FORGED" in str(err.value)
