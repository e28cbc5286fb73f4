"""`fcmon validate`: the config, then every file it names, opened and parsed.

`parse_config` already proved the files exist and can be opened; this goes
further, the way the probe and the web server will use them: each
certificate parses, each private key loads (with its password), each key
belongs to its certificate, each CA file holds a certificate. Expired or
not-yet-valid certificates are warnings, not problems: the config is right,
the certificate needs renewing, and the daemon is what reports that.
"""

from __future__ import annotations

import configparser
import datetime as dt
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

from cryptography import x509

from ..probe import certs
from ..config import SECRET_FILE_KEYS, Config, ConfigError, load_config, redacted_summary, resolve_path
from ..probe.levels import SECONDS_PER_DAY, whole_days

log = logging.getLogger(__name__)

# A system bundle holds well over a hundred CAs; one line per file, with
# the earliest expiry, keeps the summary readable.
_SHOW_SUBJECTS = 3


@dataclass
class _Findings:
    info: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


@dataclass
class _Check:
    """One file (or cert/key pair) and every section that names it."""

    kind: str  # "ca" or "pair"
    keys: Tuple[str, ...]  # config keys: (ca key,) or (cert key, key key)
    paths: Tuple[Path, ...]
    password: Optional[str] = field(default=None, repr=False)
    sections: List[str] = field(default_factory=list)


def validate(
    path: Union[Path, str], environ: Mapping[str, str] = os.environ
) -> Tuple[List[str], List[str]]:
    """(summary lines, problems) for `fcmon validate`; secrets never appear in either."""
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        return [f"config: {os.path.abspath(os.fspath(path))}"], exc.problems
    found = _inspect(config)
    _secret_file_warnings(config, environ, found)
    summary = redacted_summary(config)
    if found.info:
        summary.append("certificates:")
        summary.extend(f"  {line}" for line in found.info)
    summary.extend(f"warning: {line}" for line in found.warnings)
    return summary, found.problems


def _checks(config: Config) -> List[_Check]:
    """Every file check, deduplicated: a [defaults] ca_file is checked once, not per target."""
    checks: Dict[Hashable, _Check] = {}

    def add(section: str, check: _Check) -> None:
        ident = (check.kind, check.keys, check.paths, check.password)
        existing = checks.setdefault(ident, check)
        existing.sections.append(section)

    web = config.web
    if web.tls_cert_file is not None and web.tls_key_file is not None:
        add("web", _Check("pair", ("tls_cert_file", "tls_key_file"), (web.tls_cert_file, web.tls_key_file)))
    if web.client_ca_file is not None:
        add("web", _Check("ca", ("client_ca_file",), (web.client_ca_file,)))
    for t in config.targets:
        section = f"target:{t.name}"
        if t.ca_file is not None:
            add(section, _Check("ca", ("ca_file",), (t.ca_file,)))
        if t.client_cert_file is not None and t.client_key_file is not None:
            add(
                section,
                _Check(
                    "pair",
                    ("client_cert_file", "client_key_file"),
                    (t.client_cert_file, t.client_key_file),
                    t.client_key_password,
                ),
            )
    return list(checks.values())


def _inspect(config: Config, now: Optional[dt.datetime] = None) -> _Findings:
    now = now or dt.datetime.now(dt.timezone.utc)
    prefix = f"{config.path}: " if config.path is not None else ""
    found = _Findings()
    for check in _checks(config):
        where = ", ".join(f"[{s}]" for s in check.sections)
        if check.kind == "ca":
            _check_ca(check, where, now, found, prefix)
        else:
            _check_pair(check, where, now, found, prefix)
    return found


def _check_ca(check: _Check, where: str, now: dt.datetime, found: _Findings, prefix: str) -> None:
    (key,), (path,) = check.keys, check.paths
    try:
        chain = certs.load_pem_certificates(path)
    except certs.CertFileError as exc:
        found.problems.append(f"{prefix}{where} {key}: {exc}")
        return
    found.info.append(f"{where} {key}: {path}: {_describe(chain, now)}")
    _expiry_warnings(chain, f"{where} {key}: {path}", now, found)


def _check_pair(check: _Check, where: str, now: dt.datetime, found: _Findings, prefix: str) -> None:
    cert_key, key_key = check.keys
    cert_path, key_path = check.paths
    chain: Sequence[x509.Certificate] = ()
    private_key = None
    try:
        chain = certs.load_pem_certificates(cert_path)
    except certs.CertFileError as exc:
        found.problems.append(f"{prefix}{where} {cert_key}: {exc}")
    try:
        private_key = certs.load_private_key(key_path, check.password)
    except certs.CertFileError as exc:
        found.problems.append(f"{prefix}{where} {key_key}: {exc}")
    if not chain:
        return
    # The first certificate is the one presented; any others are its chain.
    matches = private_key is not None and certs.key_matches_cert(chain[0], private_key)
    if private_key is not None and not matches:
        found.problems.append(
            f"{prefix}{where} {key_key}: {key_path}: does not match the certificate "
            f"in {cert_key} {cert_path} (a key from another certificate?)"
        )
    if private_key is not None:
        _private_file_warning(key_path, f"{where} {key_key}", found)
    note = "; key matches" if matches else ""
    found.info.append(f"{where} {cert_key}: {cert_path}: {_describe(chain[:1], now)}{note}")
    _expiry_warnings(chain, f"{where} {cert_key}: {cert_path}", now, found)


def _private_file_warning(path: Path, where: str, found: _Findings) -> None:
    """A key or password file any user of the host can read: a warning (it works, but it should not)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # loading it already said what is wrong
    if mode & stat.S_IROTH:
        found.warnings.append(
            f"{where}: {path} is readable by every user of this host (mode {stat.S_IMODE(mode):04o}): "
            "chmod 600 (or 640 with fcmon's group), or pass it with LoadCredential= (README)")


def _secret_file_warnings(config: Config, environ: Mapping[str, str], found: _Findings) -> None:
    """World-readable password files. The config keeps the secrets, not their
    files' names, so the file is read again for the names (it loaded: no
    problem to report here), resolved as config.py resolves them."""
    if config.path is None:
        return
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config.path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return
    seen = set()
    for section in parser.sections():
        for key in SECRET_FILE_KEYS:
            value = parser.get(section, key, fallback=None)
            if not value:
                continue
            path = resolve_path(value.strip(), config.path.parent, environ)
            if path is None or path in seen:
                continue
            seen.add(path)
            _private_file_warning(path, f"[{section}] {key}", found)


def _describe(chain: Sequence[x509.Certificate], now: dt.datetime) -> str:
    first = min(chain, key=lambda c: c.not_valid_after_utc)
    subjects = "; ".join(c.subject.rfc4514_string() for c in chain[:_SHOW_SUBJECTS])
    if len(chain) > _SHOW_SUBJECTS:
        subjects += f"; and {len(chain) - _SHOW_SUBJECTS} more"
    count = "1 certificate" if len(chain) == 1 else f"{len(chain)} certificates"
    what = "expires" if len(chain) == 1 else "earliest expiry"
    return f"{count} ({subjects}), {what} {_when(first.not_valid_after_utc, now)}"


def _expiry_warnings(
    chain: Sequence[x509.Certificate], where: str, now: dt.datetime, found: _Findings
) -> None:
    for cert in chain:
        subject = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc <= now:
            found.warnings.append(
                f"{where}: {subject} expired {_when(cert.not_valid_after_utc, now)}"
            )
        elif cert.not_valid_before_utc > now:
            found.warnings.append(
                f"{where}: {subject} is not valid until {_when(cert.not_valid_before_utc, now)}"
            )


def _when(moment: dt.datetime, now: dt.datetime) -> str:
    # whole days for people, rounded down, as everywhere (fcmon/probe/levels.py)
    days = (moment - now).total_seconds() / SECONDS_PER_DAY
    n = whole_days(abs(days))
    count = "less than a day" if n == 0 else f"{n} day{'s' if n != 1 else ''}"
    rel = f"in {count}" if days >= 0 else f"{count} ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({rel})"
