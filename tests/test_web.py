"""The HTTP endpoint: [web] TLS, mTLS and basic auth; slow clients; /probe."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import requests

from fcmon import pki
from fcmon.emulator import Emulator

from support import PKI, FcmonProcess, sample, target_section, wait_for

pytestmark = pytest.mark.slow

WEB_PASSWORD = "scrape-Pa55-xyz"


@pytest.fixture
def secured(test_pki: PKI, emulator: Emulator, tmp_path):  # type: ignore[no-untyped-def]
    scraper = pki.make_client(test_pki.ca, common_name="prometheus").write(tmp_path, "scraper")
    (tmp_path / "web.password").write_text(WEB_PASSWORD + "\n")
    config = tmp_path / "config.ini"
    config.write_text(f"""\
[fcmon]
listen = 127.0.0.1:0
interval = 2
timeout = 1.5

[web]
tls_cert_file = {test_pki.server.cert}
tls_key_file = {test_pki.server.key}
client_ca_file = {test_pki.ca_file}
basic_auth_username = prometheus
basic_auth_password_file = web.password

""" + target_section(test_pki, emulator))
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        assert url.startswith("https://")
        yield fc, url.replace("127.0.0.1", "localhost"), scraper
        assert fc.stop() == 0
    assert WEB_PASSWORD not in fc.text()


def _session(test_pki: PKI, cert=None) -> requests.Session:  # type: ignore[no-untyped-def]
    s = requests.Session()
    s.trust_env = False
    s.verify = str(test_pki.ca_file)
    if cert is not None:
        s.cert = (str(cert.cert), str(cert.key))
    return s


def test_tls_mtls_and_basic_auth(secured, test_pki: PKI) -> None:  # type: ignore[no-untyped-def]
    fc, url, scraper = secured
    good = _session(test_pki, scraper)
    wait_for(lambda: sample(good.get(url, auth=("prometheus", WEB_PASSWORD), timeout=10).text,
                            "fcmon_up", target="prod") == 1)
    assert good.get(url, timeout=10).status_code == 401
    assert good.get(url, auth=("prometheus", "wrong"), timeout=10).status_code == 401
    assert good.get(url, auth=("someone", WEB_PASSWORD), timeout=10).status_code == 401
    r = good.get(url, auth=("prometheus", "wrong"), timeout=10)
    assert r.headers.get("WWW-Authenticate", "").startswith("Basic")
    with pytest.raises(requests.exceptions.ConnectionError):
        # No client certificate: the handshake (or the first read, TLS 1.3) fails.
        _session(test_pki).get(url, auth=("prometheus", WEB_PASSWORD), timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        plain = requests.Session()
        plain.trust_env = False
        plain.get(url.replace("https://", "http://"), timeout=10)


def test_idle_and_dripping_clients_do_not_delay_scrapes(secured, test_pki: PKI) -> None:  # type: ignore[no-untyped-def]
    fc, url, scraper = secured
    host, port = url.split("//")[1].split("/")[0].split(":")
    idle = socket.create_connection((host, int(port)))
    drip = socket.create_connection((host, int(port)))
    try:
        drip.sendall(b"\x16")  # the first byte of a TLS ClientHello, then nothing more for a while
        good = _session(test_pki, scraper)
        for _ in range(3):
            started = time.monotonic()
            # Less than the server's per-connection handshake timeout (5 s): a
            # server that handshakes in its accept loop would miss it.
            r = good.get(url, auth=("prometheus", WEB_PASSWORD), timeout=4)
            assert r.status_code == 200
            assert time.monotonic() - started < 4
            drip.sendall(b"\x03")
    finally:
        idle.close()
        drip.close()


def test_probe_endpoint_only_configured_names(secured, test_pki: PKI, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    fc, url, scraper = secured
    good = _session(test_pki, scraper)
    base = url.rsplit("/", 1)[0]
    auth = ("prometheus", WEB_PASSWORD)
    r = good.get(base + "/probe", params={"target": "prod"}, auth=auth, timeout=10)
    assert r.status_code == 200
    assert sample(r.text, "fcmon_up", target="prod") == 1
    assert "process_" not in r.text and "fcmon_build_info" not in r.text
    seen = len(emulator.requests_seen())
    for name in ("nope", emulator.url, f"localhost:{emulator.port}"):
        assert good.get(base + "/probe", params={"target": name}, auth=auth, timeout=10).status_code == 404
    assert good.get(base + "/probe", params={"target": "nope"}, timeout=10).status_code == 401
    # Scheduled probes may have run meanwhile; none of the 404s sent anything
    # anywhere else, and unknown paths are 404 too.
    assert all(r.get("action") in ("createSession", "listDatabases", "deleteSession")
               for r in emulator.requests_seen()[seen:])
    assert good.get(base + "/nothing", auth=auth, timeout=10).status_code == 404


def test_plain_listener_on_ipv6_loopback(test_pki: PKI, emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    config = tmp_path / "config.ini"
    config.write_text("[fcmon]\nlisten = [::1]:0\ninterval = 2\ntimeout = 1\n" + target_section(test_pki, emulator))
    with FcmonProcess("run", "-c", str(config)) as fc:
        url = fc.metrics_url()
        assert url.startswith("http://[::1]:")
        s = requests.Session()
        s.trust_env = False
        assert s.get(url.rsplit("/", 1)[0] + "/-/healthy", timeout=10).status_code == 200
        assert fc.stop() == 0


def test_endpoint_context_settings(test_pki: PKI) -> None:
    from fcmon.config import WebConfig
    from fcmon.web.app import server_ssl_context

    assert server_ssl_context(WebConfig()) is None
    tls = server_ssl_context(WebConfig(tls_cert_file=test_pki.server.cert, tls_key_file=test_pki.server.key))
    assert tls is not None and tls.verify_mode == ssl.CERT_NONE
    assert tls.minimum_version == ssl.TLSVersion.TLSv1_2
    mtls = server_ssl_context(WebConfig(tls_cert_file=test_pki.server.cert, tls_key_file=test_pki.server.key,
                                        client_ca_file=test_pki.ca_file))
    assert mtls is not None and mtls.verify_mode == ssl.CERT_REQUIRED
