"""Certificate loading and expiry: from files (client, CA) and from the peer.

File certificates are cached by (path, mtime_ns, size) so a probe does not
re-parse unchanged files, and a rotated file is picked up by the next probe.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .result import CertInfo

log = logging.getLogger(__name__)

# Days left under which a certificate warns and is critical: the thresholds
# of the shipped alert rules (prometheus/fcmon-alerts.yml), the status page's
# colours and `fcmon check`'s defaults. tests/test_status.py checks that the
# rules say the same.
CERT_WARN_DAYS = 30.0
CERT_CRIT_DAYS = 7.0


class CertFileError(Exception):
    """A certificate or key file cannot be used; the message names the file."""


def file_stamp(path: Path) -> Tuple[int, int]:
    """What changes when a file is replaced or rewritten."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def load_pem_certificates(path: Path) -> List[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertFileError(f"{path}: no PEM certificate found")
    return certs


def load_private_key(path: Path, password: Optional[str] = None):  # type: ignore[no-untyped-def]
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return serialization.load_pem_private_key(
            data, password.encode() if password else None
        )
    except TypeError as exc:
        # cryptography says "Password was not given but private key is encrypted"
        # or the reverse; neither includes the password itself.
        raise CertFileError(f"{path}: {exc}") from None
    except ValueError:
        raise CertFileError(
            f"{path}: not a PEM private key, or the key password is wrong"
        ) from None


def key_matches_cert(cert: x509.Certificate, key) -> bool:  # type: ignore[no-untyped-def]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(
        cert.public_key().public_bytes(enc, pub) == key.public_key().public_bytes(enc, pub)
    )


def not_after_timestamp(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def cert_info(cert: x509.Certificate, role: str) -> CertInfo:
    return CertInfo(
        role=role,
        subject=cert.subject.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_after=not_after_timestamp(cert),
        issuer=cert.issuer.rfc4514_string(),
    )


@functools.lru_cache(maxsize=4096)
def der_cert_info(der: bytes, role: str) -> Optional[CertInfo]:
    """Parsed once per distinct certificate: a server presents the same one
    probe after probe."""
    try:
        return cert_info(x509.load_der_x509_certificate(der), role)
    except ValueError:
        log.debug("peer sent a certificate that cannot be parsed")
        return None


class FileCertCache:
    """CertInfos for the certificate files of targets, re-read only when a file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, str], Tuple[Tuple[int, int], Tuple[CertInfo, ...]]] = {}
        self.loads = 0  # files parsed, for tests that guard the mechanism

    def infos(self, path: Optional[Path], role: str) -> Tuple[CertInfo, ...]:
        """Every certificate in `path` as `role`; () when the file cannot be read or parsed."""
        if path is None:
            return ()
        key = (str(path), role)
        try:
            stamp = file_stamp(path)
        except OSError:
            return ()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
        self.loads += 1
        try:
            infos = tuple(cert_info(c, role) for c in load_pem_certificates(path))
        except CertFileError as exc:
            log.warning("%s", exc)
            infos = ()
        with self._lock:
            self._cache[key] = (stamp, infos)
        return infos

    def for_files(self, ca_file: Optional[Path], client_cert_file: Optional[Path]) -> Tuple[CertInfo, ...]:
        # The client file may hold the leaf followed by intermediates: only the
        # leaf is "the client certificate".
        client = self.infos(client_cert_file, "client")[:1]
        return client + self.infos(ca_file, "ca")


def dedupe(infos: Iterable[CertInfo]) -> Tuple[CertInfo, ...]:
    seen = set()
    out = []
    for info in infos:
        key = (info.role, info.subject, info.serial)
        if key not in seen:
            seen.add(key)
            out.append(info)
    return tuple(out)
