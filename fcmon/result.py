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
    # fcmon's own failure (out of descriptors, memory or threads; a bug):
    # never the server's, kept out of the "target down" alert
    "internal",
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
    # RFC 4514 string; for people (debug probe, status page), never a label
    issuer: str = field(default="", compare=False)


@dataclass(frozen=True)
class CallResult:
    """One JSON API call: its latency and the errorCode it returned.

    `error_code` is None when no JSON errorCode was obtained (transport error,
    timeout, non-JSON body). `http_status` is None when no response arrived.
    `error_message` is the server's errorMessage (or, without one, what went
    wrong), capped at ERROR_MESSAGE_MAX characters and run through the
    probe's redaction: it never holds a password or an authToken.
    `started` is when the call began, in seconds from the probe's start.
    """

    action: str
    duration: float
    error_code: Optional[int]
    http_status: Optional[int] = None
    error_message: Optional[str] = None
    started: Optional[float] = None


ERROR_MESSAGE_MAX = 500
# serverVersion, hostname, hostUuid: what a hostile server sends must not
# blow up labels or the status page.
SERVER_FIELD_MAX = 200


@dataclass(frozen=True)
class ServerInfo:
    """The server's identity from createSession's result; each field only
    when the server sent it as a string (capped at SERVER_FIELD_MAX)."""

    version: Optional[str] = None
    hostname: Optional[str] = None
    uuid: Optional[str] = None

    @classmethod
    def from_result(cls, result: object) -> "ServerInfo":
        """From createSession's `result` object; anything else gives an empty one."""
        if not isinstance(result, dict):
            return cls()
        return cls(
            version=_field(result.get("serverVersion")),
            hostname=_field(result.get("hostname")),
            uuid=_field(result.get("hostUuid")),
        )


def _field(value: object) -> Optional[str]:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:SERVER_FIELD_MAX]


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
    # the server's identity, from a successful createSession (None before that
    # step succeeded in this probe)
    server: Optional[ServerInfo] = None
    # "host:port" (IPv6 as "[addr]:port") of the connection that carried the
    # probe, once connected
    peer_address: Optional[str] = None
    # when the TCP connect began, in seconds from the probe's start
    connect_started: Optional[float] = None
    # deleteSession went over a new connection (the first was cut or broken)
    delete_reconnected: bool = False

    @property
    def up(self) -> bool:
        return self.failure is None
