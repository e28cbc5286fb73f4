"""Throw-away PKI for `fcmon demo`, the emulator and the tests.

Makes a CA, server and client certificates with chosen validity windows
(including already-expired and not-yet-valid ones), written as PEM files.
ECDSA P-256 keeps generation fast.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory and (after `write`) on disk."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: Optional[bytes] = None) -> bytes:
        encryption: serialization.KeySerializationEncryption
        if password:
            encryption = serialization.BestAvailableEncryption(password)
        else:
            encryption = serialization.NoEncryption()
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def write(self, directory: Path, stem: str, key_password: Optional[bytes] = None) -> "Files":
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem(key_password))
        return Files(cert_path, key_path)


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fcmon test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(
    builder: x509.CertificateBuilder, not_before: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return builder.not_valid_before(not_before).not_valid_after(not_after)


def make_ca(
    common_name: str = "fcmon test CA",
    days: float = 3650,
    not_before: Optional[dt.datetime] = None,
    issuer: Optional[Issued] = None,
) -> Issued:
    """A CA certificate; self-signed unless `issuer` is given (an intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    signer_key = issuer.key if issuer else key
    builder = x509.CertificateBuilder().subject_name(_name(common_name))
    builder = builder.issuer_name(issuer.cert.subject if issuer else _name(common_name))
    builder = _validity(builder, start, start + dt.timedelta(days=days))
    builder = (
        builder.public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        # An intermediate needs it under VERIFY_X509_STRICT, which Python 3.13's
        # default context sets ("Missing Authority Key Identifier" otherwise).
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def _leaf(
    ca: Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str],
    days: float,
    not_before: Optional[dt.datetime],
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    builder = x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.cert.subject)
    builder = _validity(builder, start, start + dt.timedelta(days=days))
    builder = (
        builder.public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def make_server(
    ca: Issued,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    common_name: str = "localhost",
    days: float = 365,
    not_before: Optional[dt.datetime] = None,
) -> Issued:
    """A server certificate for `hosts` (DNS names or IP addresses)."""
    return _leaf(ca, common_name, ExtendedKeyUsageOID.SERVER_AUTH, hosts, days, not_before)


def make_client(
    ca: Issued,
    common_name: str = "ADMIN",
    days: float = 365,
    not_before: Optional[dt.datetime] = None,
) -> Issued:
    """A client certificate; its CN is the account a certificate-mapping listener uses."""
    return _leaf(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, (), days, not_before)


@dataclass(frozen=True)
class DemoPKI:
    ca_file: Path
    server: Files
    client: Files
    ca: Issued  # to issue more certificates from the same CA


def write_demo_pki(directory: Path, server_days: float = 365, client_days: float = 365) -> DemoPKI:
    """CA, server (localhost) and client certificates written under `directory`."""
    ca = make_ca()
    ca_file = directory / "ca.crt"
    directory.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca.cert_pem)
    server = make_server(ca, days=server_days).write(directory, "server")
    client = make_client(ca, days=client_days).write(directory, "client")
    return DemoPKI(ca_file, server, client, ca)
