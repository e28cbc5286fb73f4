"""What one probe saw: plain frozen data, no Prometheus, no HTTP.

The probe produces a `ProbeResult`; the metrics store consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from .servertext import clean, clean_optional

# The vocabularies every renderer and alert shares: README "Failure reasons"
# (each reason's section in docs/runbook.md) and the metrics table.
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

    def __post_init__(self) -> None:
        # Subjects and issuers are the certificate owner's text: see fcmon/probe/servertext.py.
        object.__setattr__(self, "subject", clean(self.subject, CERT_NAME_MAX))
        object.__setattr__(self, "issuer", clean(self.issuer, CERT_NAME_MAX))


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_message", clean_optional(self.error_message, ERROR_MESSAGE_MAX))


# Every string a server chooses is cleaned (fcmon/probe/servertext.py) and capped
# where it enters a result, at these lengths (characters):
ERROR_MESSAGE_MAX = 500  # a call's errorMessage
# serverVersion, hostname, hostUuid: what a hostile server sends must not
# blow up labels or the status page.
SERVER_FIELD_MAX = 200
FAILURE_MESSAGE_MAX = 1000  # a failure's message (it quotes the errorMessage)
CERT_NAME_MAX = 1024  # a certificate's subject and issuer (RFC 4514)
DATABASE_NAME_MAX = 200


@dataclass(frozen=True)
class ServerInfo:
    """The server's identity from createSession's result; each field only
    when the server sent it as a string (capped at SERVER_FIELD_MAX)."""

    version: Optional[str] = None
    hostname: Optional[str] = None
    uuid: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("version", "hostname", "uuid"):
            value = getattr(self, name)
            if value is not None:
                value = clean(value, SERVER_FIELD_MAX).strip()
                object.__setattr__(self, name, value or None)

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
    return value.strip()


@dataclass(frozen=True)
class SessionCensus:
    """The probe's account's sessions as describeSessions reported them
    (fcmon/probe/census.py): all of them (the probe's own included), those whose
    description marks them as any fcmon's, the configured limit, the
    longest idle time in seconds (None when the server's timestamps gave
    none), and how many of this instance's orphans the probe deleted."""

    sessions: int
    fcmon: int
    limit: int
    oldest_idle: Optional[float] = None
    reaped: int = 0
    # listSessions per configured user name (session_census_usernames; an
    # administrator account sees every user's sessions): ((name, count), ...)
    by_user: Tuple[Tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Failure:
    stage: str  # one of STAGES
    reason: str  # one of REASONS
    message: str  # human-readable, never contains secrets

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", clean(self.message, FAILURE_MESSAGE_MAX))


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
    # deleteSession found no session for the token (errorCode 12031, or a
    # 12031 warning): ended on the server already; not a leak, not a failure
    session_gone: bool = False
    # the session census of this probe (None: not taken, or not available)
    census: Optional[SessionCensus] = None
    # why the census was not available (unknown action, missing fields, no
    # answer); None when it was, or was not attempted
    census_unavailable: Optional[str] = None

    def __post_init__(self) -> None:
        if any(not isinstance(n, str) or not n.isprintable() or len(n) > DATABASE_NAME_MAX
               for n in self.database_names):
            object.__setattr__(self, "database_names",
                               tuple(clean(str(n), DATABASE_NAME_MAX) for n in self.database_names))

    @property
    def up(self) -> bool:
        return self.failure is None
