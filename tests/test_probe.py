"""The probe against the emulator over real mutual TLS on loopback."""

from __future__ import annotations

import logging
import ssl
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from fcmon import pki
from fcmon.probe.certs import load_pem_certificates
from fcmon.emulator import Emulator, Fault
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober

from support import PKI, free_port, make_target


def _registry(result, target):  # type: ignore[no-untyped-def]
    store = MetricsStore()
    store.set_targets([target])
    store.record(result)
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    return registry


def _expected_days(path) -> float:  # type: ignore[no-untyped-def]
    cert = load_pem_certificates(path)[0]
    return (cert.not_valid_after_utc.timestamp() - time.time()) / 86400


def test_healthy_target_reports_everything(test_pki: PKI) -> None:
    databases = ("ctreeSQL", "faircom", "sales")
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, databases=databases) as emu:
        target = make_target(test_pki, emu)
        result = Prober().probe(target)
        open_after = emu.open_sessions()
        created = emu.sessions_created()
    assert result.failure is None, result.failure
    assert [s for s, _ in result.steps] == ["connect", "create_session", "list_databases", "delete_session"]
    assert result.databases == len(databases)
    assert created == 1 and open_after == 0
    assert not result.session_leaked

    reg = _registry(result, target)
    assert reg.get_sample_value("fcmon_up", {"target": "prod"}) == 1
    for step in ("connect", "create_session", "list_databases", "delete_session"):
        value = reg.get_sample_value("fcmon_step_duration_seconds", {"target": "prod", "step": step})
        assert value is not None and 0 < value < 3
    assert reg.get_sample_value("fcmon_databases", {"target": "prod"}) == len(databases)
    for action in ("createSession", "listDatabases", "deleteSession"):
        assert reg.get_sample_value("fcmon_api_error_code", {"target": "prod", "action": action}) == 0
        assert reg.get_sample_value(
            "fcmon_request_duration_seconds_count", {"target": "prod", "action": action}) == 1

    roles = {c.role: c for c in result.certs}
    assert set(roles) >= {"server", "client", "ca"}
    for role, path in (("server", test_pki.server.cert), ("client", test_pki.client.cert),
                       ("ca", test_pki.ca_file)):
        c = roles[role]
        days = reg.get_sample_value("fcmon_cert_expiry_days",
                                    {"target": "prod", "cert": role, "subject": c.subject, "serial": c.serial})
        assert days == pytest.approx(_expected_days(path), abs=0.01), role
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")


def test_every_ca_certificate_in_ca_file_is_reported(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    extra = pki.make_ca("second CA", days=100)
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(test_pki.ca_file.read_bytes() + extra.cert_pem)
    result = Prober().probe(make_target(test_pki, emulator, ca_file=bundle))
    assert result.failure is None
    cas = [c for c in result.certs if c.role == "ca"]
    assert len(cas) == 2
    assert any("second CA" in c.subject for c in cas)


def test_wrong_password_is_api_error_at_create_session(test_pki: PKI, emulator: Emulator) -> None:
    result = Prober().probe(make_target(test_pki, emulator, password="not-the-password"))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("create_session", "api_error")
    assert "not-the-password" not in result.failure.message
    assert emulator.open_sessions() == 0


def test_refused_connection(test_pki: PKI, emulator: Emulator) -> None:
    target = make_target(test_pki, emulator, endpoint=f"https://localhost:{free_port()}/api")
    result = Prober().probe(target)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "connect_refused")
    # The certificates from the files are reported even though nothing answered.
    assert {c.role for c in result.certs} == {"client", "ca"}


def test_unresolvable_host_is_dns(test_pki: PKI, emulator: Emulator) -> None:
    target = make_target(test_pki, emulator, endpoint="https://no-such-host.invalid:8443/api")
    result = Prober().probe(target)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "dns")


def test_untrusted_server_certificate_is_tls_verify_and_still_reported(
    test_pki: PKI, emulator: Emulator, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-ca.crt"
    other.write_bytes(pki.make_ca("some other CA").cert_pem)
    created = emulator.sessions_created()
    seen = len(emulator.requests_seen())
    result = Prober().probe(make_target(test_pki, emulator, ca_file=other))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "tls_verify")
    # the message names the mismatch: who issued what the server presented, what ca_file holds
    assert result.failure.message.endswith(
        " (the server presented CN=localhost,O=fcmon test PKI, issued by CN=fcmon test CA,O=fcmon test PKI; "
        "ca_file holds CN=some other CA,O=fcmon test PKI)"), result.failure.message
    server = [c for c in result.certs if c.role == "server"]
    assert len(server) == 1
    assert server[0].not_after == pytest.approx(
        load_pem_certificates(test_pki.server.cert)[0].not_valid_after_utc.timestamp())
    # Nothing, certainly no credentials, went to the untrusted server.
    assert emulator.sessions_created() == created
    assert len(emulator.requests_seen()) == seen


def test_expired_server_certificate_reports_negative_days(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=12)
    expired = pki.make_server(test_pki.ca, days=2, not_before=start).write(tmp_path, "expired")
    with Emulator(cert_file=expired.cert, key_file=expired.key, client_ca_file=test_pki.ca_file) as emu:
        before = len(emu.requests_seen())
        result = Prober().probe(make_target(test_pki, emu))
        assert len(emu.requests_seen()) == before  # no request over the reporting handshake
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "tls_verify")
    reg = _registry(result, make_target(test_pki, emu))
    server = next(c for c in result.certs if c.role == "server")
    days = reg.get_sample_value("fcmon_cert_expiry_days", {
        "target": "prod", "cert": "server", "subject": server.subject, "serial": server.serial})
    assert days == pytest.approx(-10, abs=0.01)
    assert "the server presented" not in result.failure.message  # expiry, not the issuer: said already


def test_wrong_hostname_is_tls_verify(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    wrong = pki.make_server(test_pki.ca, hosts=("db.example.com",), common_name="db.example.com")
    files = wrong.write(tmp_path, "wrong-host")
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        result = Prober().probe(make_target(test_pki, emu))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "tls_verify")


def test_error_code_on_list_databases_still_deletes_session(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(error_code=12345))
    result = Prober().probe(make_target(test_pki, emulator))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("list_databases", "api_error")
    assert "12345" in result.failure.message
    assert [s for s, _ in result.steps][-1] == "delete_session"
    assert not result.session_leaked
    assert emulator.open_sessions() == 0
    reg = _registry(result, make_target(test_pki, emulator))
    assert reg.get_sample_value("fcmon_api_error_code", {"target": "prod", "action": "listDatabases"}) == 12345
    assert reg.get_sample_value("fcmon_api_errors_total",
                                {"target": "prod", "action": "listDatabases", "code": "12345"}) == 1
    assert reg.get_sample_value("fcmon_probe_failures_total",
                                {"target": "prod", "stage": "list_databases", "reason": "api_error"}) == 1
    assert reg.get_sample_value("fcmon_up", {"target": "prod"}) == 0


def test_json_error_code_wins_over_http_status(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(error_code=12031, http_status=400))
    result = Prober().probe(make_target(test_pki, emulator))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("list_databases", "api_error")
    assert emulator.open_sessions() == 0


def test_html_500_is_http_status(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(http500_html=True))
    result = Prober().probe(make_target(test_pki, emulator))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("list_databases", "http_status")
    assert emulator.open_sessions() == 0


def test_dripping_server_cannot_hold_the_probe(test_pki: PKI, emulator: Emulator) -> None:
    emulator.set_fault("listDatabases", Fault(drip=True))
    target = make_target(test_pki, emulator, timeout=1.5)
    result = Prober().probe(target)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("list_databases", "timeout")
    assert result.duration < target.timeout + 1
    # deleteSession went over a new connection, within the grace.
    assert not result.session_leaked
    assert emulator.open_sessions() == 0


def test_missing_client_certificate_is_rejected(test_pki: PKI, emulator: Emulator) -> None:
    target = make_target(test_pki, emulator, client_cert_file=None, client_key_file=None)
    result = Prober().probe(target)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "client_cert_rejected")


def test_client_certificate_rejected_on_tls12_listener(test_pki: PKI) -> None:
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, tls_max_version=ssl.TLSVersion.TLSv1_2) as emu:
        result = Prober().probe(make_target(test_pki, emu, client_cert_file=None, client_key_file=None))
        ok = Prober().probe(make_target(test_pki, emu))
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == ("connect", "client_cert_rejected")
    assert ok.failure is None and ok.tls_version == "TLSv1.2"


def test_certificate_login_without_username(test_pki: PKI, emulator: Emulator) -> None:
    before = len(emulator.requests_seen())
    result = Prober().probe(make_target(test_pki, emulator, username=None, password=None))
    assert result.failure is None
    create = next(r for r in emulator.requests_seen()[before:] if r.get("action") == "createSession")
    assert "username" not in create["params"] and "password" not in create["params"]


def test_create_session_sends_idle_timeout_and_description(test_pki: PKI, emulator: Emulator) -> None:
    before = len(emulator.requests_seen())
    Prober().probe(make_target(test_pki, emulator, session_idle_timeout=120))
    create = next(r for r in emulator.requests_seen()[before:] if r.get("action") == "createSession")
    assert create["params"]["idleConnectionTimeoutSeconds"] == 120
    assert create["params"]["description"] == "fcmon health check"


def test_ssl_context_is_built_once_and_rebuilt_on_rotation(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert = tmp_path / "client.crt"
    key = tmp_path / "client.key"
    cert.write_bytes(test_pki.client.cert.read_bytes())
    key.write_bytes(test_pki.client.key.read_bytes())
    target = make_target(test_pki, emulator, client_cert_file=cert, client_key_file=key)
    prober = Prober()
    for _ in range(3):
        assert prober.probe(target).failure is None
    assert prober.contexts.builds == 1
    # Rotate: a new client certificate with another CN, written in place.
    rotated = pki.make_client(test_pki.ca, common_name="ADMIN", days=40)
    cert.write_bytes(rotated.cert_pem)
    key.write_bytes(rotated.key_pem())
    result = prober.probe(target)
    assert result.failure is None
    assert prober.contexts.builds == 2
    client = next(c for c in result.certs if c.role == "client")
    assert client.serial == format(rotated.cert.serial_number, "x")


def test_requests_ca_bundle_does_not_change_trust(test_pki: PKI, emulator: Emulator, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-ca.crt"
    other.write_bytes(pki.make_ca("some other CA").cert_pem)
    # The environment trusts the emulator's CA, ca_file does not: rejected.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(test_pki.ca_file))
    result = Prober().probe(make_target(test_pki, emulator, ca_file=other))
    assert result.failure is not None and result.failure.reason == "tls_verify"
    # The environment points elsewhere, ca_file is right: accepted.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(other))
    result = Prober().probe(make_target(test_pki, emulator))
    assert result.failure is None


def test_context_trusts_exactly_ca_file(test_pki: PKI, emulator: Emulator) -> None:
    prober = Prober()
    prober.probe(make_target(test_pki, emulator))
    ctx = prober.contexts.get(make_target(test_pki, emulator))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_no_secret_in_logs_or_results(test_pki: PKI, emulator: Emulator, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55word"
    results = []
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file, users={"ADMIN": secret}) as emu:
        prober = Prober()
        results.append(prober.probe(make_target(test_pki, emu, password=secret)))
        emu.set_fault("listDatabases", Fault(error_code=12031))
        results.append(prober.probe(make_target(test_pki, emu, password=secret)))
        emu.set_fault("listDatabases", Fault(malformed_json=True))
        results.append(prober.probe(make_target(test_pki, emu, password=secret)))
        results.append(prober.probe(make_target(test_pki, emu, password="wrong-" + secret)))
        tokens = [r["authToken"] for r in emu.requests_seen() if r.get("authToken")]
    assert tokens, "the probes used sessions"
    text = caplog.text + "\n".join(repr(r) for r in results)
    for s in [secret] + tokens:
        assert s not in text


def test_ca_file_rotation_is_picked_up(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(test_pki.ca_file.read_bytes())
    target = make_target(test_pki, emulator, ca_file=ca_file)
    prober = Prober()
    assert prober.probe(target).failure is None
    # Replaced by a bundle that no longer holds the server's CA: rejected at once.
    other = pki.make_ca("replacement CA")
    ca_file.write_bytes(other.cert_pem)
    result = prober.probe(target)
    assert result.failure is not None and result.failure.reason == "tls_verify"
    assert [c.subject for c in result.certs if c.role == "ca"] == [other.cert.subject.rfc4514_string()]
    # And back: trusted again, no restart.
    ca_file.write_bytes(other.cert_pem + test_pki.ca_file.read_bytes())
    result = prober.probe(target)
    assert result.failure is None
    assert len([c for c in result.certs if c.role == "ca"]) == 2


def test_plain_http_endpoint_when_allowed() -> None:
    from fcmon.config import TargetConfig

    with Emulator(cert_file=None, allow_http=True) as emu:
        assert emu.url.startswith("http://")
        target = TargetConfig(name="plain", endpoint=emu.url, username="ADMIN", password="ADMIN",
                              allow_insecure_http=True, timeout=3.0, interval=10.0)
        result = Prober().probe(target)
        assert emu.open_sessions() == 0
    assert result.failure is None, result.failure
    assert result.tls_version is None and result.certs == ()
    assert result.databases == 2


def test_certificate_files_are_parsed_once_until_they_change(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(test_pki.ca_file.read_bytes())
    target = make_target(test_pki, emulator, ca_file=ca_file)
    prober = Prober()
    for _ in range(3):
        assert prober.probe(target).failure is None
    assert prober.file_certs.loads == 2  # the CA file and the client certificate
    ca_file.write_bytes(test_pki.ca_file.read_bytes() + pki.make_ca("extra").cert_pem)
    result = prober.probe(target)
    assert prober.file_certs.loads == 3
    assert len([c for c in result.certs if c.role == "ca"]) == 2


def test_targets_with_the_same_files_share_one_context(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prober = Prober()
    targets = [make_target(test_pki, emulator, name=f"t{i}") for i in range(5)]
    other_ca = tmp_path / "bundle.crt"
    other_ca.write_bytes(test_pki.ca_file.read_bytes())
    odd = make_target(test_pki, emulator, name="odd", ca_file=other_ca)
    for t in targets + [odd]:
        assert prober.probe(t).failure is None
    assert prober.contexts.builds == 2 and len(prober.contexts) == 2
    prober.retain(targets)  # "odd" removed by a reload: its context goes
    assert len(prober.contexts) == 1


def test_intermediate_the_server_sends_is_reported_where_python_can_read_it(test_pki: PKI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # docs/design-notes.md#only-the-verified-path-is-the-chain
    intermediate = pki.make_ca("fcmon test intermediate", issuer=test_pki.ca)
    leaf = pki.make_server(intermediate)
    files = leaf.write(tmp_path, "leaf")
    files.cert.write_bytes(leaf.cert_pem + intermediate.cert_pem)  # what the listener sends
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        result = Prober().probe(make_target(test_pki, emu))
    assert result.failure is None, result.failure
    served = [(c.role, c.serial) for c in result.certs if c.role in ("server", "chain")]
    expected = [("server", format(leaf.cert.serial_number, "x"))]
    if sys.version_info >= (3, 13):  # before 3.13 no public API reads the chain: the leaf only
        expected.append(("chain", format(intermediate.cert.serial_number, "x")))
    assert served == expected
