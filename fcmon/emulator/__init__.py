"""A FairCom JSON DB API emulator over HTTPS, with fault injection.

    from fcmon.emulator import Emulator, Fault
    with Emulator(cert, key, client_ca_file=ca) as emu:
        emu.set_fault("listDatabases", Fault(delay=0.5, count=1))
        ...  # point a client at emu.url
        assert emu.open_sessions() == 0

See `state` for the API logic and the error codes, `faults` for what can be
injected, `server` for the transport, `cli` for `fcmon emulator`.
"""

from __future__ import annotations

from .faults import ANY_ACTION, Fault
from .listeners import ExtraListener, ListenerSpec
from .server import (
    API_PATH,
    CONTROL_FAULT_PATH,
    CONTROL_SESSIONS_PATH,
    DEFAULT_DATABASES,
    DEFAULT_USERS,
    Emulator,
)
from .state import (
    ACTIONS,
    DEFAULT_IDLE_CONNECTION_TIMEOUT,
    ERR_BAD_CREDENTIALS,
    ERR_INVALID_JSON,
    ERR_INVALID_PARAMETER,
    ERR_MISSING_ACTION,
    ERR_OK,
    ERR_SESSION_LIMIT,
    ERR_UNKNOWN_ACTION,
    ERR_UNKNOWN_TOKEN,
    ERR_UNKNOWN_USER,
    FAIRCOM_UNKNOWN_TOKEN_MESSAGE,
    SENT,
    JsonApi,
    SessionStore,
    Variants,
)
from .tlscontext import server_ssl_context

__all__ = [
    "ACTIONS",
    "ANY_ACTION",
    "API_PATH",
    "CONTROL_FAULT_PATH",
    "CONTROL_SESSIONS_PATH",
    "DEFAULT_DATABASES",
    "DEFAULT_IDLE_CONNECTION_TIMEOUT",
    "DEFAULT_USERS",
    "ERR_BAD_CREDENTIALS",
    "ERR_INVALID_JSON",
    "ERR_INVALID_PARAMETER",
    "ERR_MISSING_ACTION",
    "ERR_OK",
    "ERR_SESSION_LIMIT",
    "ERR_UNKNOWN_ACTION",
    "ERR_UNKNOWN_TOKEN",
    "ERR_UNKNOWN_USER",
    "FAIRCOM_UNKNOWN_TOKEN_MESSAGE",
    "SENT",
    "Variants",
    "Emulator",
    "ExtraListener",
    "ListenerSpec",
    "Fault",
    "JsonApi",
    "SessionStore",
    "server_ssl_context",
]
