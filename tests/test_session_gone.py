"""deleteSession answering 12031 (as the errorCode, or errorCode 0 with a
12031 warning in either documented shape) means the session is already gone:
not a leak, not a down target, logged once per target. Real TLS against the
emulator, whose `session_gone` fault ends the session after listDatabases."""

from __future__ import annotations

import logging

import pytest

from fcmon.emulator import Emulator, Fault
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober

from support import PKI, make_target, sample

SHAPES = {
    "error": Fault(session_gone=True, delete_gone_as_error=True),
    "warning-code-message": Fault(session_gone=True),
    "warning-warningCode": Fault(session_gone=True, warning_code_keys=True),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_session_already_gone_is_not_a_leak_nor_a_failure(
        shape: str, test_pki: PKI, emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    target = make_target(test_pki, emulator)
    prober = Prober()
    store = MetricsStore()
    store.set_targets([target])
    fault = SHAPES[shape]
    if fault.delete_gone_as_error or fault.warning_code_keys:
        # the answer variant applies to deleteSession's answer
        emulator.set_fault("deleteSession", Fault(delete_gone_as_error=fault.delete_gone_as_error,
                                                  warning_code_keys=fault.warning_code_keys))
    emulator.set_fault("listDatabases", Fault(session_gone=True))
    with caplog.at_level(logging.WARNING, logger="fcmon.probe.run"):
        results = [prober.probe(target) for _ in range(3)]
    for r in results:
        assert r.up, r.failure
        assert r.session_gone and not r.session_leaked
        store.record(r)
    assert emulator.open_sessions() == 0  # the fault really ended them
    delete = [c for c in results[0].calls if c.action == "deleteSession"][0]
    assert delete.error_code == (12031 if shape == "error" else 0)
    gone = [r for r in caplog.records if "already gone" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.WARNING  # once per target
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    text = generate_latest(registry).decode()
    assert sample(text, "fcmon_up", target="prod") == 1.0
    assert sample(text, "fcmon_session_leaks_total", target="prod") == 0.0
    assert sample(text, "fcmon_api_errors_total", target="prod", action="deleteSession", code="12031") is None


def test_other_delete_errors_are_still_failures(test_pki: PKI) -> None:
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as emu:  # its own: the session leaks
        emu.set_fault("deleteSession", Fault(error_code=12012, count=1))
        r = Prober().probe(make_target(test_pki, emu))
        assert r.failure is not None and r.failure.stage == "delete_session" and r.session_leaked
        assert not r.session_gone and emu.open_sessions() == 1
