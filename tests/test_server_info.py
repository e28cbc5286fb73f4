"""The server's identity from createSession (fcmon_server_info), and the
known FairCom error codes in failure messages: real TLS against the emulator."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fcmon.probe import codes
from fcmon.config import load_config
from fcmon.service.daemon import Daemon
from fcmon.emulator import Emulator, Fault
from fcmon.export.exposition import TextRenderer
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober
from fcmon.probe.result import SERVER_FIELD_MAX, ServerInfo

from support import PKI, make_target, sample, target_section

VERSION = "FairCom EDGE Server 4.1.2.133 (test)"
HOST = "db1.test.example"


@pytest.fixture
def named_emulator(test_pki: PKI) -> Iterator[Emulator]:
    """An emulator of its own: the tests change the version it reports."""
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, server_version=VERSION, hostname=HOST,
                  host_uuid="0f6c3b52-1111-4a8e-9c1e-2b7d6a3f0c11") as emu:
        yield emu


def test_probe_reports_what_create_session_said(test_pki: PKI, named_emulator: Emulator) -> None:
    result = Prober().probe(make_target(test_pki, named_emulator))
    assert result.up, result.failure
    assert result.server == ServerInfo(VERSION, HOST, "0f6c3b52-1111-4a8e-9c1e-2b7d6a3f0c11")
    assert [c.http_status for c in result.calls] == [200, 200, 200]
    assert result.peer_address == f"127.0.0.1:{named_emulator.port}"


def test_server_info_series_appears_after_first_session_and_is_kept(
        test_pki: PKI, named_emulator: Emulator) -> None:
    target = make_target(test_pki, named_emulator)
    prober = Prober()
    store = MetricsStore()
    store.set_targets([target])
    renderer = TextRenderer(store)

    def series(text: str):  # type: ignore[no-untyped-def]
        return [(s.labels, s.value) for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "fcmon_server_info"]

    def both() -> list:
        reg = CollectorRegistry()
        reg.register(FcmonCollector(store, only_target="prod"))
        collected = series(generate_latest(reg).decode())
        rendered = series(renderer.render().decode())
        assert collected == rendered  # the two renderers agree
        return rendered

    named_emulator.set_fault("createSession", Fault(error_code=451))
    failed = prober.probe(target)
    assert failed.failure is not None and failed.server is None
    store.record(failed)
    assert both() == []  # no series before the first successful createSession

    named_emulator.clear_faults()
    store.record(prober.probe(target))
    text = renderer.render().decode()
    assert sample(text, "fcmon_server_info", target="prod", version=VERSION, hostname=HOST) == 1
    assert len(both()) == 1

    named_emulator.set_fault("createSession", Fault(error_code=12015))
    store.record(prober.probe(target))  # a later failure keeps the last identity
    assert sample(renderer.render().decode(), "fcmon_server_info", target="prod", version=VERSION,
                  hostname=HOST) == 1
    assert len(both()) == 1


def test_only_the_fields_sent_become_labels() -> None:
    assert ServerInfo.from_result({"hostname": "db2"}) == ServerInfo(None, "db2", None)
    # non-strings and blanks are ignored; a hostile length is capped
    hostile = ServerInfo.from_result({"serverVersion": 4, "hostname": ["x"], "hostUuid": " ",
                                      "unrelated": "y"})
    assert hostile == ServerInfo(None, None, None)
    long = ServerInfo.from_result({"serverVersion": "v" * 100_000})
    assert long.version is not None and len(long.version) == SERVER_FIELD_MAX
    assert ServerInfo.from_result("not an object") == ServerInfo()

    from fcmon.export.metrics import server_labels
    assert server_labels(ServerInfo(None, "db2", "u")) == (("hostname", "db2"),)
    assert server_labels(ServerInfo()) == ()


def test_version_change_is_logged_once(test_pki: PKI, named_emulator: Emulator, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\nlisten = 127.0.0.1:0\nschedule = false\nprobe_reuse_window = 0\n"
                      + target_section(test_pki, named_emulator))
    daemon = Daemon(load_config(config, {}), {})
    try:
        with caplog.at_level(logging.INFO, logger="fcmon.service.daemon"):
            assert daemon.probe_now("prod") is not None
            assert daemon.probe_now("prod") is not None
            named_emulator.api.server_version = "FairCom EDGE Server 4.2.0 (test)"
            assert daemon.probe_now("prod") is not None
            assert daemon.probe_now("prod") is not None
        changes = [r.getMessage() for r in caplog.records if "server version changed" in r.getMessage()]
        assert changes == [f"target prod: server version changed from {VERSION!r} to "
                           "'FairCom EDGE Server 4.2.0 (test)'"]
        assert all(r.levelno == logging.INFO for r in caplog.records if "server version" in r.getMessage())
    finally:
        daemon.web.stop()


def test_known_codes_are_described() -> None:
    assert codes.describe(12031) == "12031 (authToken matches no session)"
    assert codes.describe(0) == "0 (success)"
    assert codes.describe(451) == "451 (invalid password)"
    assert codes.describe(12033) == "12033 (invalid password, candidate)"
    assert codes.describe(424242) == "424242"
    assert codes.describe(-7) == "-7"
    assert codes.meaning(424242) is None and codes.meaning(None) is None
    for code in (0, 12031, -1, 84, 450, 451, 12033, 12015, 967, 968, 984, 14700, 14701, 14702,
                 12025, 12012, 12030, 150):
        assert codes.meaning(code), code


def test_api_error_names_the_code_and_keeps_the_server_message(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(error_code=12031, http_status=400))
    result = Prober().probe(make_target(test_pki, emulator))
    assert result.failure is not None and result.failure.reason == "api_error"
    assert result.failure.message == (
        "listDatabases: errorCode 12031 (authToken matches no session): "
        "emulator: injected errorCode 12031 for listDatabases")
    listed = result.calls[1]
    assert (listed.action, listed.http_status, listed.error_code) == ("listDatabases", 400, 12031)
    assert listed.error_message == "emulator: injected errorCode 12031 for listDatabases"
    assert result.calls[0].error_message is None  # errorMessage "" is no message
