"""The emulator's API logic: sessions, expiry, limits and the JSON envelope.

No sockets here: `JsonApi.handle` turns a parsed request into a reply, and
`SessionStore` takes its clocks as arguments, so tests can age sessions
without sleeping.

Error codes. FairCom documents 12031 (authToken matches no session), 84
(maximum users exceeded) and 450/451 (invalid user id / password, native
logon). It does not document the codes for a bad password on the JSON API,
a session limit, an unknown action or a malformed request; for those the
emulator sends a candidate constant from FairCom's C SDK header with the
meaning fcmon/probe/codes.py gives it (`SENT` maps every code sent here to that
meaning, and a test holds the two together), each failure with its own code.
They must not be taken as FairCom's confirmed values.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .. import __version__
from .faults import TOKEN_PLACES, Fault

log = logging.getLogger(__name__)

ERR_OK = 0
#: authToken matches no session (expired, deleted, never issued). Documented.
ERR_UNKNOWN_TOKEN = 12031
#: Total or per-user session limit reached ("maximum users exceeded"). Native code.
ERR_SESSION_LIMIT = 84
#: Unknown user name, or no user name and no mapped client certificate. Native code.
ERR_UNKNOWN_USER = 450
#: Wrong password. Native code; the JSON API's own value is not documented.
ERR_BAD_CREDENTIALS = 451
#: Request body is not JSON, or not a JSON object. Candidate ("missing or invalid parameter").
ERR_INVALID_JSON = 12025
#: Request has no "action" (or it is not a string). Candidate ("missing or invalid parameter").
ERR_MISSING_ACTION = 14700
#: Action (or api) not supported. Candidate ("unknown action or method").
ERR_UNKNOWN_ACTION = 14701
#: A parameter has the wrong type or value. Candidate ("missing or invalid parameter").
ERR_INVALID_PARAMETER = 12012

#: Every errorCode this emulator sends (injected faults aside), with the
#: meaning fcmon/probe/codes.py must give it.
SENT: Mapping[int, str] = {
    ERR_OK: "success",
    ERR_UNKNOWN_TOKEN: "authToken matches no session",
    ERR_SESSION_LIMIT: "maximum users exceeded",
    ERR_UNKNOWN_USER: "invalid user id",
    ERR_BAD_CREDENTIALS: "invalid password",
    ERR_INVALID_JSON: "missing or invalid parameter",
    ERR_MISSING_ACTION: "missing or invalid parameter",
    ERR_UNKNOWN_ACTION: "unknown action or method",
    ERR_INVALID_PARAMETER: "missing or invalid parameter",
}

#: FairCom's own text for 12031 (its listSessions documentation).
FAIRCOM_UNKNOWN_TOKEN_MESSAGE = (
    "'authToken' does not match any existing session. Use a valid 'authToken' or use "
    "'createSession' to create a valid 'authToken'."
)
#: listSessions' usernameFilter entries: 1 to 64 bytes each (documented).
USERNAME_FILTER_MAX_BYTES = 64

APIS = ("admin", "db", "hub", "mq", "transform")
#: Session actions work whatever "api" says; listDatabases belongs to "db".
SESSION_ACTIONS = frozenset({"createSession", "deleteSession", "pingSession"})
#: Admin actions about the account's sessions; they need a token.
SESSIONS_ACTIONS = frozenset({"describeSessions", "listSessions"})
DB_ACTIONS = frozenset({"listDatabases"})
ACTIONS = tuple(sorted(SESSION_ACTIONS | SESSIONS_ACTIONS | DB_ACTIONS))

DEFAULT_IDLE_CONNECTION_TIMEOUT = 3600.0
IDLE_CURSOR_TIMEOUT = 600

_LIST_DATABASES_FIELDS = [
    {"name": "databaseName", "type": "varchar", "length": 64},
    {"name": "path", "type": "varchar", "length": 2048},
    {"name": "uid", "type": "integer"},
]


@dataclass(frozen=True)
class Session:
    token: str
    username: str
    idle_timeout: float  # 0: never expires (FairCom's permanent session)
    last_used: float  # on the store's monotonic clock
    started: float  # wall clock, for sessionStartTimestamp
    description: str
    default_api: str
    default_database: str
    client_ip: str = ""
    last_used_wall: float = 0.0  # wall clock, for sessionLastAccessedTimestamp

    def expired(self, now: float) -> bool:
        return self.idle_timeout > 0 and now - self.last_used > self.idle_timeout


class SessionLimitError(Exception):
    """createSession refused by a limit; the message says which."""


class SessionStore:
    """Live sessions with idle expiry and limits; thread-safe.

    Expiry is evaluated lazily on every access instead of by a timer thread:
    the observable behaviour is the same and tests stay deterministic.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_sessions: int = 1024,
        max_sessions_per_user: int = 50,
        max_sessions_per_ip: int = 50,
    ) -> None:
        if max_sessions < 1 or max_sessions_per_user < 1 or max_sessions_per_ip < 1:
            raise ValueError("session limits must be >= 1")
        self._clock = clock
        self._wall_clock = wall_clock
        self.max_sessions = max_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self.max_sessions_per_ip = max_sessions_per_ip
        self._lock = threading.Lock()
        self._sessions: Dict[str, Session] = {}
        self._created = 0
        self._expired = 0
        self._peak = 0  # most sessions open at once since the last reset_peak()

    def _purge(self, now: float) -> None:
        dead = [t for t, s in self._sessions.items() if s.expired(now)]
        for token in dead:
            session = self._sessions.pop(token)
            self._expired += 1
            log.debug("session of %s expired after %.3gs idle", session.username, session.idle_timeout)

    def create(
        self,
        username: str,
        idle_timeout: float = DEFAULT_IDLE_CONNECTION_TIMEOUT,
        description: str = "",
        default_api: str = "db",
        default_database: str = "",
        client_ip: str = "",
    ) -> Session:
        with self._lock:
            now = self._clock()
            self._purge(now)
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimitError(
                    f"maximum number of sessions ({self.max_sessions}) reached"
                )
            mine = sum(1 for s in self._sessions.values() if s.username == username)
            if mine >= self.max_sessions_per_user:
                raise SessionLimitError(
                    f"maximum number of sessions per user ({self.max_sessions_per_user}) "
                    f"reached for {username}"
                )
            if client_ip:
                from_ip = sum(1 for s in self._sessions.values() if s.client_ip == client_ip)
                if from_ip >= self.max_sessions_per_ip:
                    raise SessionLimitError(
                        f"maximum number of sessions per IP address ({self.max_sessions_per_ip}) "
                        f"reached for {client_ip}"
                    )
            token = secrets.token_urlsafe(32)
            wall = self._wall_clock()
            session = Session(
                token=token,
                username=username,
                idle_timeout=idle_timeout,
                last_used=now,
                started=wall,
                description=description,
                default_api=default_api,
                default_database=default_database,
                client_ip=client_ip,
                last_used_wall=wall,
            )
            self._sessions[token] = session
            self._created += 1
            self._peak = max(self._peak, len(self._sessions))
            return session

    def touch(self, token: str) -> Optional[Session]:
        """The live session for `token`, its idle timer restarted; None if none."""
        with self._lock:
            now = self._clock()
            self._purge(now)
            session = self._sessions.get(token)
            if session is None:
                return None
            session = dataclasses.replace(session, last_used=now, last_used_wall=self._wall_clock())
            self._sessions[token] = session
            return session

    def delete(self, token: str) -> Optional[Session]:
        with self._lock:
            self._purge(self._clock())
            return self._sessions.pop(token, None)

    def open_count(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._sessions)

    def peak_open_count(self) -> int:
        """The most sessions open at the same time since the last reset."""
        with self._lock:
            return self._peak

    def reset_peak(self) -> None:
        with self._lock:
            self._purge(self._clock())
            self._peak = len(self._sessions)

    def created_count(self) -> int:
        with self._lock:
            return self._created

    def expired_count(self) -> int:
        """Sessions that ended by idle expiry: no client ever deleted them."""
        with self._lock:
            self._purge(self._clock())
            return self._expired

    def sessions(self) -> List[Session]:
        with self._lock:
            self._purge(self._clock())
            return list(self._sessions.values())


@dataclass(frozen=True)
class Variants:
    """Answer shapes of other FairCom releases that real clients have met.

    - `token_at`: where createSession's answer carries the authToken:
      "both" (newer examples: `result.authToken` and the root), "root" or
      "result" (only there).
    - `bare_errors`: an error answer has no `result`; it echoes the
      request's `authToken` at the root (FairCom's listSessions example).
    - `faircom_messages`: 12031 says FairCom's own sentence instead of the
      emulator's short one.
    - `delete_gone_as_error`: deleteSession of a token that matches no
      session answers errorCode 12031 (an older page) instead of errorCode 0
      with a 12031 warning (the newer one).
    - `warning_code_keys`: a warning in `debugInfo.warnings` is
      `{"warningCode", "warningMessage"}` instead of `{"code", "message"}`
      (FairCom's pages show both shapes).
    """

    token_at: str = "both"
    bare_errors: bool = False
    faircom_messages: bool = False
    delete_gone_as_error: bool = False
    warning_code_keys: bool = False

    def __post_init__(self) -> None:
        if self.token_at not in TOKEN_PLACES:
            raise ValueError(f"token_at must be one of {', '.join(TOKEN_PLACES)}")

    def with_fault(self, fault: Optional[Fault]) -> "Variants":
        """These, with what a request's fault switches on besides."""
        if fault is None:
            return self
        return Variants(
            token_at=fault.token_at or self.token_at,
            bare_errors=self.bare_errors or fault.bare_errors,
            faircom_messages=self.faircom_messages or fault.faircom_messages,
            delete_gone_as_error=self.delete_gone_as_error or fault.delete_gone_as_error,
            warning_code_keys=self.warning_code_keys or fault.warning_code_keys,
        )


@dataclass(frozen=True)
class Parsed:
    """A request body after JSON decoding; `error` set when it is unusable."""

    value: Any
    error: Optional[str]

    @property
    def action(self) -> Optional[str]:
        if isinstance(self.value, dict) and isinstance(self.value.get("action"), str):
            return self.value["action"]
        return None


@dataclass(frozen=True)
class Reply:
    body: Dict[str, Any]
    http_status: int = 200


def parse_body(raw: bytes) -> Parsed:
    try:
        return Parsed(json.loads(raw.decode("utf-8")), None)
    except (UnicodeDecodeError, ValueError) as exc:
        return Parsed(None, f"request body is not valid JSON: {exc}")


def _timestamp(wall: float) -> str:
    """The server's local time without a zone, to the second, as FairCom
    documents it ("2023-03-31T15:15:51")."""
    return dt.datetime.fromtimestamp(wall).strftime("%Y-%m-%dT%H:%M:%S")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class JsonApi:
    """The JSON DB API's createSession / listDatabases / deleteSession / pingSession."""

    def __init__(
        self,
        store: SessionStore,
        users: Mapping[str, str],
        databases: Sequence[str],
        hostname: Optional[str] = None,
        server_version: Optional[str] = None,
        host_uuid: Optional[str] = None,
        services: Optional[Callable[[], List[Dict[str, Any]]]] = None,
        admins: Sequence[str] = ("ADMIN",),
        variants: Variants = Variants(),
    ) -> None:
        self.store = store
        # Accounts that listSessions shows every session to (FairCom: an
        # administrator sees all); user names compare case-insensitively.
        self.admins = frozenset(a.upper() for a in admins)
        # The answer shapes this server gives (a test may switch them).
        self.variants = variants
        # listServices' listeners; None: the action is unknown (an older server)
        self.services = services
        # FairCom user names are case-insensitive (its own example logs in as
        # "admin" to an "ADMIN" account); passwords are not.
        self._users: Dict[str, Tuple[str, str]] = {
            name.upper(): (name, password) for name, password in users.items()
        }
        self.databases = tuple(databases)
        self.hostname = hostname or socket.gethostname()
        # What createSession reports as the server's identity, like a real
        # server; attributes, so a test can "upgrade" a running emulator.
        self.server_version = server_version or f"FairCom JSON DB API emulator (fcmon {__version__})"
        self.host_uuid = host_uuid or str(uuid.uuid4())

    # -- envelope ---------------------------------------------------------

    @staticmethod
    def _envelope(
        request: Any,
        result: Optional[Dict[str, Any]] = None,
        code: int = ERR_OK,
        message: str = "",
        debug_info: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"result": result if result is not None else {}}
        if isinstance(request, dict) and "requestId" in request:
            body["requestId"] = request["requestId"]
        body["errorCode"] = code
        body["errorMessage"] = message
        if debug_info:
            body["debugInfo"] = debug_info
        return body

    def _error(self, request: Any, code: int, message: str, status: int = 200) -> Reply:
        return Reply(self._envelope(request, code=code, message=message), status)

    # -- dispatch ---------------------------------------------------------

    def handle(
        self,
        parsed: Parsed,
        peer_cn: Optional[str] = None,
        fault: Optional[Fault] = None,
        peer_ip: str = "",
    ) -> Reply:
        """One request -> one reply, with the semantic parts of `fault` applied.
        `peer_ip` is the client's address (the per-IP session limit)."""
        variants = self.variants.with_fault(fault)
        reply = self._dispatch(parsed, peer_cn, fault, peer_ip, variants)
        if fault is not None and fault.session_gone:
            self._end_session(parsed.value, reply.body)
        body = _shaped(reply.body, parsed.value, variants)
        status = fault.http_status if fault is not None and fault.http_status != 200 else reply.http_status
        return Reply(body, status)

    def _dispatch(
        self, parsed: Parsed, peer_cn: Optional[str], fault: Optional[Fault], peer_ip: str, variants: Variants
    ) -> Reply:
        request = parsed.value
        if parsed.error is not None:
            return self._error(None, ERR_INVALID_JSON, parsed.error)
        if not isinstance(request, dict):
            return self._error(None, ERR_INVALID_JSON, "request body must be a JSON object")
        action = request.get("action")
        if action is None or action == "":
            return self._error(request, ERR_MISSING_ACTION, "the \"action\" property is required")
        if not isinstance(action, str):
            return self._error(request, ERR_MISSING_ACTION, "the \"action\" property must be a string")

        if fault is not None and fault.error_code is not None:
            message = fault.error_message
            if message is None:
                message = f"emulator: injected errorCode {fault.error_code} for {action}"
            return self._error(request, fault.error_code, message)

        api = request.get("api")
        if api is not None and api not in APIS:
            return self._error(request, ERR_UNKNOWN_ACTION, f"unknown api {api!r}")
        params = request.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return self._error(request, ERR_INVALID_PARAMETER, "\"params\" must be a JSON object")

        if action == "createSession":
            if fault is not None and fault.limit_reached:
                return self._error(
                    request, ERR_SESSION_LIMIT, "maximum number of sessions reached (emulator: injected)"
                )
            reply = self._create_session(request, params, peer_cn, peer_ip)
            if fault is not None and fault.missing_auth_token:
                reply.body.pop("authToken", None)
                reply.body.get("result", {}).pop("authToken", None)
            elif variants.token_at == "root":
                reply.body.get("result", {}).pop("authToken", None)
            elif variants.token_at == "result":
                reply.body.pop("authToken", None)
            return reply
        if action == "deleteSession":
            return self._delete_session(request, variants)
        if action == "pingSession":
            return self._ping_session(request)
        if action in SESSIONS_ACTIONS:
            return self._sessions_action(request, params, action, api)
        if action in DB_ACTIONS:
            return self._db_action(request, params, action, api)
        if action == "listServices" and self.services is not None:
            # Answers without a session. FairCom adds each listener's `tls`
            # settings only for a valid authToken; this emulator never does.
            return Reply(self._envelope(request, {"listeners": self.services()}), 200)
        return self._error(request, ERR_UNKNOWN_ACTION, f"unknown action {action!r}")

    # -- actions ----------------------------------------------------------

    def _authenticate(
        self, params: Dict[str, Any], peer_cn: Optional[str]
    ) -> Tuple[Optional[str], int, str]:
        """(canonical user name, 0, "") or (None, errorCode, message)."""
        username = params.get("username")
        password = params.get("password")
        if username is None and password is None:
            # Certificate-mapped login: only a verified peer certificate gets
            # here, because the server reads the CN only after verification.
            if peer_cn is not None and peer_cn.upper() in self._users:
                return self._users[peer_cn.upper()][0], ERR_OK, ""
            return None, ERR_UNKNOWN_USER, "username is required (no client certificate maps to a user)"
        if not isinstance(username, str) or not username:
            return None, ERR_UNKNOWN_USER, "username must be a non-empty string"
        entry = self._users.get(username.upper())
        if entry is None:
            return None, ERR_UNKNOWN_USER, "invalid user name or password"
        if not isinstance(password, str) or not hmac.compare_digest(
            password.encode("utf-8"), entry[1].encode("utf-8")
        ):
            return None, ERR_BAD_CREDENTIALS, "invalid user name or password"
        return entry[0], ERR_OK, ""

    def _create_session(
        self, request: Dict[str, Any], params: Dict[str, Any], peer_cn: Optional[str], peer_ip: str = ""
    ) -> Reply:
        username, code, message = self._authenticate(params, peer_cn)
        if username is None:
            # Log the user name attempted, never the password.
            log.info("createSession refused for %r: %s", params.get("username", peer_cn), message)
            return self._error(request, code, message)

        idle = params.get("idleConnectionTimeoutSeconds", DEFAULT_IDLE_CONNECTION_TIMEOUT)
        # 0: a session that never expires (FairCom's "permanent session").
        if not _is_number(idle) or idle < 0:
            return self._error(
                request, ERR_INVALID_PARAMETER,
                "idleConnectionTimeoutSeconds must be a number >= 0 (0: never expires)"
            )
        description = params.get("description", "")
        if not isinstance(description, str):
            return self._error(request, ERR_INVALID_PARAMETER, "description must be a string")
        default_api = params.get("defaultApi", "db")
        if default_api not in APIS:
            return self._error(request, ERR_INVALID_PARAMETER, f"unknown defaultApi {default_api!r}")
        default_db = params.get("defaultDatabaseName", self.databases[0] if self.databases else "")
        if not isinstance(default_db, str):
            return self._error(request, ERR_INVALID_PARAMETER, "defaultDatabaseName must be a string")

        try:
            session = self.store.create(username, float(idle), description, default_api, default_db, peer_ip)
        except SessionLimitError as exc:
            log.warning("createSession refused for %s: %s", username, exc)
            return self._error(request, ERR_SESSION_LIMIT, str(exc))
        log.debug("session created for %s (%d open)", username, self.store.open_count())

        # Integral timeouts are reported as ints, as the server does.
        shown_idle: Any = int(idle) if float(idle).is_integer() else idle
        result = {
            "authToken": session.token,
            "username": session.username,
            "description": session.description,
            "defaultApi": session.default_api,
            "defaultDatabaseName": session.default_database,
            "idleConnectionTimeoutSeconds": shown_idle,
            "idleCursorTimeoutSeconds": IDLE_CURSOR_TIMEOUT,
            "permanentSession": session.idle_timeout == 0,
            "sessionStartTimestamp": _timestamp(session.started),
            "sessionLastAccessedTimestamp": _timestamp(session.last_used_wall),
            "serverVersion": self.server_version,
            "hostname": self.hostname,
            "hostUuid": self.host_uuid,
        }
        body = self._envelope(request, result)
        # Newer servers also put the token at the root; clients must accept both.
        body["authToken"] = session.token
        return Reply(body)

    def _delete_session(self, request: Dict[str, Any], variants: Variants) -> Reply:
        token = request.get("authToken")
        session = self.store.delete(token) if isinstance(token, str) else None
        if session is None:
            if variants.delete_gone_as_error:
                return self._unknown_token(request)
            keys = ("warningCode", "warningMessage") if variants.warning_code_keys else ("code", "message")
            warning = {keys[0]: ERR_UNKNOWN_TOKEN, keys[1]: "authToken does not match any session"}
            return Reply(self._envelope(request, debug_info={"warnings": [warning]}))
        log.debug("session of %s deleted", session.username)
        return Reply(self._envelope(request))

    def _end_session(self, request: Any, answer: Dict[str, Any]) -> None:
        """The `session_gone` fault: the session the request named (or the
        one it created) ends now, as an idle timeout would end it."""
        token = request.get("authToken") if isinstance(request, dict) else None
        if not isinstance(token, str):
            result = answer.get("result")
            token = result.get("authToken") if isinstance(result, dict) else answer.get("authToken")
        if isinstance(token, str) and self.store.delete(token) is not None:
            log.info("session ended by the session_gone fault")

    def _ping_session(self, request: Dict[str, Any]) -> Reply:
        token = request.get("authToken")
        if token is None:
            return Reply(self._envelope(request))
        if not isinstance(token, str) or self.store.touch(token) is None:
            return self._unknown_token(request)
        return Reply(self._envelope(request))

    def _unknown_token(self, request: Dict[str, Any]) -> Reply:
        if request.get("authToken") is None:
            return self._error(request, ERR_UNKNOWN_TOKEN, "authToken is required")
        return self._error(request, ERR_UNKNOWN_TOKEN, "authToken is invalid or expired")

    def _sessions_action(
        self, request: Dict[str, Any], params: Dict[str, Any], action: str, api: Optional[str]
    ) -> Reply:
        """describeSessions: the calling account's sessions, in full;
        listSessions: {authToken, username, description} of the sessions the
        account may see (an administrator: all), narrowed by usernameFilter."""
        session = self._session_in(request, api, "admin", action)
        if isinstance(session, Reply):
            return session
        live = sorted(self.store.sessions(), key=lambda s: s.started)
        if action == "describeSessions":
            wanted = params.get("authTokens")
            if wanted is not None and (
                not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted)
            ):
                return self._error(request, ERR_INVALID_PARAMETER, "authTokens must be an array of strings")
            mine = [s for s in live if s.username == session.username
                    and (wanted is None or s.token in wanted)]
            body = {"authToken": session.token}
            body.update(self._envelope(request, {"sessions": [self._described(s) for s in mine]}))
            return Reply(body)
        names = params.get("usernameFilter")
        if names is not None:
            if not isinstance(names, list) or not all(
                isinstance(n, str) and 1 <= len(n.encode("utf-8")) <= USERNAME_FILTER_MAX_BYTES for n in names
            ):
                return self._error(
                    request, ERR_INVALID_PARAMETER,
                    f"usernameFilter must be an array of user names of 1 to {USERNAME_FILTER_MAX_BYTES} bytes",
                )
            wanted_names = {n.upper() for n in names}
            live = [s for s in live if s.username.upper() in wanted_names]
        if session.username.upper() not in self.admins:
            live = [s for s in live if s.username == session.username]
        listed = [{"authToken": s.token, "username": s.username, "description": s.description} for s in live]
        return Reply(self._envelope(request, {"sessions": listed}))

    def _described(self, s: Session) -> Dict[str, Any]:
        idle: Any = int(s.idle_timeout) if float(s.idle_timeout).is_integer() else s.idle_timeout
        return {
            "authToken": s.token,
            "username": s.username,
            "description": s.description,
            "defaultDatabaseName": s.default_database,
            "defaultOwnerName": s.username.lower(),
            "idleConnectionTimeoutSeconds": idle,
            "idleCursorTimeoutSeconds": IDLE_CURSOR_TIMEOUT,
            "defaultApi": s.default_api,
            "sessionStartTimestamp": _timestamp(s.started),
            "sessionLastAccessedTimestamp": _timestamp(s.last_used_wall),
            "hostname": self.hostname,
            "hostUuid": self.host_uuid,
            "permanentSession": s.idle_timeout == 0,
        }

    def _db_action(
        self, request: Dict[str, Any], params: Dict[str, Any], action: str, api: Optional[str]
    ) -> Reply:
        session = self._session_in(request, api, "db", action)
        if isinstance(session, Reply):
            return session
        return self._list_databases(request, params)

    def _session_in(
        self, request: Dict[str, Any], api: Optional[str], wanted_api: str, action: str
    ) -> Union[Session, Reply]:
        """The live session the request's authToken names (touched), or the
        error a server gives: unknown token, or an action of another api
        (the session's default api applies when the request names none)."""
        token = request.get("authToken")
        session = self.store.touch(token) if isinstance(token, str) else None
        if session is None:
            return self._unknown_token(request)
        effective_api = api if api is not None else session.default_api
        if effective_api != wanted_api:
            return self._error(
                request, ERR_UNKNOWN_ACTION, f"action {action!r} is not part of the {effective_api!r} api"
            )
        return session

    def _list_databases(self, request: Dict[str, Any], params: Dict[str, Any]) -> Reply:
        partial = params.get("partialDatabaseName", "")
        skip = params.get("skipRecords", 0)
        limit = params.get("maxRecords")
        if not isinstance(partial, str):
            return self._error(request, ERR_INVALID_PARAMETER, "partialDatabaseName must be a string")
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            return self._error(request, ERR_INVALID_PARAMETER, "skipRecords must be a non-negative integer")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            return self._error(request, ERR_INVALID_PARAMETER, "maxRecords must be a non-negative integer")
        rows = [
            {"databaseName": name, "path": f".\\{name}.dbs\\SQL_SYS", "uid": 999 + index}
            for index, name in enumerate(self.databases)
            if name.lower().startswith(partial.lower())
        ]
        rows = rows[skip:] if limit is None else rows[skip : skip + limit]
        result = {"dataFormat": "objects", "fields": list(_LIST_DATABASES_FIELDS), "data": rows}
        return Reply(self._envelope(request, result))


def _shaped(body: Dict[str, Any], request: Any, variants: Variants) -> Dict[str, Any]:
    """An answer in the shape `variants` asks for (error bodies, 12031's text)."""
    code = body.get("errorCode")
    if code == ERR_OK or not isinstance(code, int):
        return body
    out = dict(body)
    if code == ERR_UNKNOWN_TOKEN and variants.faircom_messages:
        out["errorMessage"] = FAIRCOM_UNKNOWN_TOKEN_MESSAGE
    if variants.bare_errors:
        token = request.get("authToken") if isinstance(request, dict) else None
        bare: Dict[str, Any] = {}
        if isinstance(token, str):
            bare["authToken"] = token
        bare.update((k, v) for k, v in out.items() if k != "result")
        out = bare
    return out
