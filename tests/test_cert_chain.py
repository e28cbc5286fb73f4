"""Only certificates on the verified path count as cert="chain"; extra
certificates the server sends (an expired old cross-sign) are left out.
Certificate caches are bounded in bytes. Real TLS against the emulator."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from fcmon.probe import certs
from fcmon import pki
from fcmon.emulator import Emulator
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober

from support import PKI, make_target, sample


def cross_sign(ca: pki.Issued, by: pki.Issued, days: float, not_before: dt.datetime) -> pki.Issued:
    """`ca`'s name and key certified by another CA `by`: a cross-sign, as a
    CA that changed roots hands out (the key is `ca`'s)."""
    builder = (
        x509.CertificateBuilder().subject_name(ca.cert.subject).issuer_name(by.cert.subject)
        .not_valid_before(not_before).not_valid_after(not_before + dt.timedelta(days=days))
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(by.key.public_key()), critical=False)
    )
    return pki.Issued(builder.sign(by.key, hashes.SHA256()), ca.key)


def _serial(issued: pki.Issued) -> str:
    return format(issued.cert.serial_number, "x")


@pytest.fixture
def cross_signed(test_pki: PKI, tmp_path: Path):  # type: ignore[no-untyped-def]
    """leaf <- intermediate <- the test CA (trusted), and an old root that
    cross-signed the test CA, expired 370 days ago: sent, not needed."""
    intermediate = pki.make_ca("fcmon test intermediate", issuer=test_pki.ca)
    old_root = pki.make_ca("fcmon old root", days=5000,
                           not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3000))
    stale = cross_sign(test_pki.ca, old_root, days=30,
                           not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400))
    leaf = pki.make_server(intermediate)
    files = leaf.write(tmp_path, "leaf")
    files.cert.write_bytes(leaf.cert_pem + intermediate.cert_pem + stale.cert_pem)
    return files, leaf, intermediate, stale


def test_an_extra_expired_cross_sign_is_not_the_chain(test_pki: PKI, cross_signed) -> None:  # type: ignore[no-untyped-def]
    files, leaf, intermediate, stale = cross_signed
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        target = make_target(test_pki, emu)
        result = Prober().probe(target)
    assert result.up, result.failure
    served = [(c.role, c.serial) for c in result.certs if c.role in ("server", "chain")]
    expected = [("server", _serial(leaf))]
    if sys.version_info >= (3, 13):  # before 3.13 the ssl module's public API gives the leaf alone
        expected.append(("chain", _serial(intermediate)))
    assert served == expected
    assert _serial(stale) not in {c.serial for c in result.certs}
    store = MetricsStore()
    store.set_targets([target])
    store.record(result)
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    text = generate_latest(registry).decode()
    # what FcmonServerCertExpired reads: nothing below 0 days
    days = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("fcmon_cert_expiry_days{")]
    assert days and min(days) > 0, days


def test_after_a_failed_verification_the_chain_is_the_path_by_signatures(
        test_pki: PKI, cross_signed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An expired intermediate fails verification: the unverified fetch then
    reports the path the leaf links to (the expired intermediate, negative
    days: the cause), still without the unrelated cross-sign."""
    _, _, _, stale = cross_signed
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    expired = pki.make_ca("fcmon expired intermediate", issuer=test_pki.ca, days=30, not_before=past)
    leaf = pki.make_server(expired)
    files = leaf.write(tmp_path, "leaf2")
    files.cert.write_bytes(leaf.cert_pem + expired.cert_pem + stale.cert_pem)
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        result = Prober().probe(make_target(test_pki, emu))
    assert result.failure is not None and result.failure.reason == "tls_verify", result.failure
    served = [(c.role, c.serial) for c in result.certs if c.role in ("server", "chain")]
    expected = [("server", _serial(leaf))]
    if sys.version_info >= (3, 13):  # the presented chain is public from 3.13
        expected.append(("chain", _serial(expired)))
    assert served == expected


def test_path_from_leaf_prefers_the_anchor_and_leaves_extras_out(test_pki: PKI, cross_signed) -> None:  # type: ignore[no-untyped-def]
    _, leaf, intermediate, stale = cross_signed
    der = [c.cert.public_bytes(serialization.Encoding.DER) for c in (leaf, intermediate, stale)]
    anchor = test_pki.ca.cert.public_bytes(serialization.Encoding.DER)
    now = time.time()
    assert certs.path_from_leaf(der, [anchor], now) == (der[1],)
    # the order the server sends them in does not matter
    assert certs.path_from_leaf([der[0], der[2], der[1]], [anchor], now) == (der[1],)
    # no anchor known: as far as the presented certificates link (the cross-sign
    # does certify the CA's key, so it is on that path)
    assert certs.path_from_leaf(der, [], now) == (der[1], der[2])
    # a certificate that does not link is never on the path
    assert certs.path_from_leaf([der[0], der[2]], [anchor], now) == ()


def test_certificate_caches_are_bounded_in_bytes(test_pki: PKI) -> None:
    """The issue's case: a new certificate with a 64 KB subject on every
    connection. The caches hold at most their byte bound, whatever comes."""
    bound = certs.PEER_CERT_CACHE_BYTES
    cache = certs.ByteLRU(1_000_000)
    for i in range(1000):
        cache.put(i, object(), 70_000)
        assert cache.bytes <= 1_000_000
    assert len(cache) == 1_000_000 // 70_000
    cache.put("huge", object(), 300_000)  # over a quarter of the bound: not kept
    assert cache.get("huge") is None and cache.get(999) is not None
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.timezone.utc)
    for i in range(300):  # 300 certificates of ~65 KB: 19 MB of DER against an 8 MiB bound
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"big {i}"),
                          x509.NameAttribute(NameOID.STREET_ADDRESS, "x" * 65_000)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(i + 1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        assert len(der) > 65_000
        info = certs.der_cert_info(der, "server")
        assert info is not None and len(info.subject) <= 1024
        certs.path_from_leaf([der, der], [der], time.time())
    for cache in (certs._infos, certs._parsed, certs._paths):
        assert cache.bytes <= bound


def test_an_intermediate_in_ca_file_is_the_anchor_not_the_chain(test_pki: PKI, tmp_path: Path) -> None:
    """ca_file holds the root and the intermediate: the path ends at the
    intermediate, reported as cert="ca", on every Python (3.13's verified
    chain goes on to the root; it is cut at the first trusted certificate)."""
    intermediate = pki.make_ca("fcmon trusted intermediate", issuer=test_pki.ca)
    leaf = pki.make_server(intermediate)
    files = leaf.write(tmp_path, "leaf3")
    files.cert.write_bytes(leaf.cert_pem + intermediate.cert_pem)
    ca_file = tmp_path / "both.crt"
    ca_file.write_bytes(test_pki.ca.cert_pem + intermediate.cert_pem)
    with Emulator(cert_file=files.cert, key_file=files.key, client_ca_file=test_pki.ca_file) as emu:
        result = Prober().probe(make_target(test_pki, emu, ca_file=ca_file))
    assert result.up, result.failure
    roles = sorted((c.role, c.serial) for c in result.certs if c.role in ("server", "chain", "ca"))
    assert roles == sorted([("server", _serial(leaf)), ("ca", _serial(test_pki.ca)), ("ca", _serial(intermediate))])
