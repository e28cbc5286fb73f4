"""Certificate loading and expiry: from files (client, CA) and from the peer.

File certificates are cached by (path, mtime_ns, size) so a probe does not
re-parse unchanged files, and a rotated file is picked up by the next probe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

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


class ByteLRU:
    """A least-recently-used cache bounded by the bytes of what it holds.

    A bound by count is no bound: a server can present a new certificate on
    every connection, each with a 64 KB subject (1,500 of them grew RSS from
    51 to 372 MB under the old 4,096-entry cache). Each entry is charged a
    size its caller estimates (the DER bytes of the certificates it stands
    for, plus what was made of them); an entry larger than a quarter of the
    bound is not kept at all. See docs/design-notes.md#certificate-caches-bounded-in-bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self.bytes = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


# What a certificate costs besides its DER in the caches: the parsed object
# and the CertInfo strings (subject and issuer capped at CERT_NAME_MAX).
_ENTRY_OVERHEAD = 2048
# Parsed peer certificates (CertInfo per DER and role, x509 objects for the
# path): 8 MiB holds about 2,000 typical certificates of 2 KB.
PEER_CERT_CACHE_BYTES = 8 * 1024 * 1024
_infos = ByteLRU(PEER_CERT_CACHE_BYTES)
_parsed = ByteLRU(PEER_CERT_CACHE_BYTES)
_paths = ByteLRU(PEER_CERT_CACHE_BYTES)
# A chain longer than this is not followed further (real ones have 2-4).
MAX_PATH_LENGTH = 8


def der_cert_info(der: bytes, role: str) -> Optional[CertInfo]:
    """Parsed once per distinct certificate (within PEER_CERT_CACHE_BYTES):
    a server presents the same one probe after probe."""
    key = (der, role)
    info = _infos.get(key)
    if info is None:
        cert = _parse(der)
        if cert is None:
            log.debug("peer sent a certificate that cannot be parsed")
            return None
        info = cert_info(cert, role)
        _infos.put(key, info, len(der) + _ENTRY_OVERHEAD)
    return info  # type: ignore[no-any-return]


def _parse(der: bytes) -> Optional[x509.Certificate]:
    cert = _parsed.get(der)
    if cert is None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        _parsed.put(der, cert, 2 * len(der) + _ENTRY_OVERHEAD)
    return cert  # type: ignore[no-any-return]


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except Exception:  # InvalidSignature, ValueError, TypeError (unsupported key types)
        return False
    return True


def path_from_leaf(presented: Sequence[bytes], anchors: Sequence[bytes], now: float) -> Tuple[bytes, ...]:
    """The certificates of `presented` (the server's, leaf first, DER) on the
    signature path from the leaf towards a trust anchor in `anchors`: the
    leaf excluded, and the path ends before the anchor. Extra certificates
    the server sends that are not on that path (an old cross-sign, a
    leftover) are left out.

    The path is built by names and signatures (cryptography's
    `verify_directly_issued_by`), preferring at each step an anchor, then a
    certificate valid at `now`: the choice OpenSSL makes for a connection it
    verified. When no anchor is reached (trust from a system directory that
    is not listed, or a connection that failed verification) the path is as
    far as the presented certificates link. Cached by content (bytes-bounded).
    """
    if len(presented) < 2:
        return ()
    key = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in list(presented) + [b"|"] + list(anchors))
                         ).digest()
    hit = _paths.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    path = _build_path(presented, anchors, now)
    _paths.put(key, path, sum(len(d) for d in path) + _ENTRY_OVERHEAD)
    return path


def _build_path(presented: Sequence[bytes], anchors: Sequence[bytes], now: float) -> Tuple[bytes, ...]:
    current = _parse(presented[0])
    if current is None:
        return ()
    trusted = [c for c in (_parse(d) for d in anchors) if c is not None]
    pool = []
    for der in presented[1:]:
        cert = _parse(der)
        if cert is not None and der != presented[0]:
            pool.append((der, cert))
    path: List[bytes] = []
    used = {presented[0]}
    for _ in range(MAX_PATH_LENGTH):
        if any(_issued_by(current, a) for a in trusted):
            break
        candidates = [(der, c) for der, c in pool if der not in used and _issued_by(current, c)]
        if not candidates:
            break
        candidates.sort(key=lambda dc: not (dc[1].not_valid_before_utc.timestamp() <= now
                                              <= dc[1].not_valid_after_utc.timestamp()))
        der, current = candidates[0]
        used.add(der)
        path.append(der)
    return tuple(path)


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
