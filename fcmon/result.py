"""What one probe saw: plain frozen data, no Prometheus, no HTTP.

The probe produces a `ProbeResult`; the metrics store consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

# The contract's vocabularies (design.md, "One probe").
STAGES = ("connect", "create_session", "list_databases", "delete_session")
REASONS = (
    "dns",
    "connect_refused",
    "connect_timeout",
    "tls_handshake",
    "tls_verify",
    "client_cert_rejected",
    "timeout",
    "http_status",
    "bad_response",
    "api_error",
)
ACTIONS = ("createSession", "listDatabases", "deleteSession")
CERT_ROLES = ("server", "chain", "client", "ca")


@dataclass(frozen=True)
class CertInfo:
    """One certificate as reported in `fcmon_cert_*` series."""

    role: str  # one of CERT_ROLES
    subject: str  # RFC 4514 string
    serial: str  # lower-case hex, no separators
    not_after: float  # Unix time


@dataclass(frozen=True)
class CallResult:
    """One JSON API call: its latency and the errorCode it returned.

    `error_code` is None when no JSON errorCode was obtained (transport error,
    timeout, non-JSON body).
    """

    action: str
    duration: float
    error_code: Optional[int]


@dataclass(frozen=True)
class Failure:
    stage: str  # one of STAGES
    reason: str  # one of REASONS
    message: str  # human-readable, never contains secrets


@dataclass(frozen=True)
class ProbeResult:
    target: str
    started: float  # Unix time
    ended: float  # Unix time
    duration: float  # seconds, monotonic
    failure: Optional[Failure] = None
    # (step, seconds) for the steps reached, in order
    steps: Tuple[Tuple[str, float], ...] = ()
    calls: Tuple[CallResult, ...] = ()
    databases: Optional[int] = None
    certs: Tuple[CertInfo, ...] = ()
    tls_version: Optional[str] = None
    tls_cipher: Optional[str] = None
    # a session was created but deleteSession did not succeed
    session_leaked: bool = False
    # the databases listed, for `check` output; not exported as labels
    database_names: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def up(self) -> bool:
        return self.failure is None
