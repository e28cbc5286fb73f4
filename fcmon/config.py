"""config.ini -> frozen dataclasses. Every problem is reported at once.

`parse_config` is pure apart from reading password files and checking that
the files a config names can be opened: the daemon, `fcmon check` and
`fcmon validate` all get the same answer for the same text. Problems are
collected, never raised one by one, so an operator fixes a config in one
round; each names its section and key, and none contains a secret.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import functools
import ipaddress
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import (AbstractSet, Any, Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)
from urllib.parse import urlsplit

from .runbook import RUNBOOK_URL

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/fcmon/config.ini"
CONFIG_ENV = "FCMON_CONFIG"
# max_connections_per_host's default, also for the callers that take no
# config (fcmon/commands/check.py, fcmon/probe/flight.py)
MAX_CONNECTIONS_PER_HOST = 8


class ConfigError(Exception):
    """The config is invalid; `problems` lists every problem, each naming section and key."""

    def __init__(self, problems: "list[str]"):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------------------
# Vocabulary

FCMON = "fcmon"
WEB = "web"
DEFAULTS = "defaults"
TARGET_PREFIX = "target:"
# A target's own section, as the key table and the messages name it.
TARGET = "target:NAME"
SECTIONS = (FCMON, WEB, DEFAULTS, TARGET)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

PASSWORD_KEYS = ("password_file", "password_env", "password")
CLIENT_PAIR_KEYS = ("client_cert_file", "client_key_file")
KEY_PASSWORD_KEYS = ("client_key_password_file", "client_key_password_env")

INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# session_census_usernames: a label value each, so a bounded list of names
# of 1 to 64 bytes (FairCom's usernameFilter limit)
MAX_CENSUS_USERNAMES = 20
LISTENER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MIN_MAX_RESPONSE_BYTES = 1024

TARGET_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_CREDENTIALS_RE = re.compile(r"^(\$CREDENTIALS_DIRECTORY|\$\{CREDENTIALS_DIRECTORY\})/")

# A password file is one line; a cap stops a mistaken path such as
# /dev/zero or a log file from being slurped into memory.
_MAX_PASSWORD_FILE_BYTES = 64 * 1024

# Lines rewritten to let configparser go on past a duplicate start with NUL,
# which no real section or key contains.
_PLACEHOLDER = "\x00"


class _Invalid:
    """A key that was given but is unusable (already reported)."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


class _Problems:
    """Collects messages, each prefixed with the config's name."""

    def __init__(self, source: str) -> None:
        self.prefix = f"{source}: " if source else ""
        self.items: List[str] = []

    def add(self, section: str, key: str, message: str) -> None:
        self.items.append(f"{self.prefix}[{section}] {key}: {message}")

    def add_section(self, section: str, message: str) -> None:
        self.items.append(f"{self.prefix}[{section}]: {message}")

    def add_general(self, message: str) -> None:
        self.items.append(f"{self.prefix}{message}")


# ---------------------------------------------------------------------------
# Values


class _Context:
    def __init__(self, base_dir: Path, environ: Mapping[str, str], problems: _Problems) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.problems = problems


def _single_line(ctx: _Context, section: str, key: str, value: str) -> bool:
    if value == "":
        ctx.problems.add(section, key, "empty value: give a value or remove the line")
        return False
    if "\n" in value:
        ctx.problems.add(
            section,
            key,
            "value spans several lines (an indented line continues the line above): "
            "write it on one line",
        )
        return False
    return True


def _number(ctx: _Context, section: str, key: str, value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        ctx.problems.add(section, key, f'expected a number of seconds, got "{value}"')
        return INVALID
    if not math.isfinite(number) or number <= 0:
        ctx.problems.add(section, key, f"must be greater than 0, got {value}")
        return INVALID
    return number


def _seconds_or_zero(ctx: _Context, section: str, key: str, value: str) -> Any:
    """A number of seconds, where 0 means off."""
    try:
        number = float(value)
    except ValueError:
        return _number(ctx, section, key, value)  # names the problem
    if number == 0:
        return 0.0
    if number < 0:
        ctx.problems.add(section, key, f"must be 0 (off) or a number of seconds, got {value}")
        return INVALID
    return _number(ctx, section, key, value)


def _integer(ctx: _Context, section: str, key: str, value: str, minimum: int) -> Any:
    try:
        number = int(value)
    except ValueError:
        ctx.problems.add(section, key, f'expected a whole number, got "{value}"')
        return INVALID
    if number < minimum:
        ctx.problems.add(section, key, f"must be at least {minimum}, got {number}")
        return INVALID
    return number


def _boolean(ctx: _Context, section: str, key: str, value: str) -> Any:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if value.lower() not in states:
        ctx.problems.add(section, key, f'expected true or false, got "{value}"')
        return INVALID
    return states[value.lower()]


def _choice(ctx: _Context, section: str, key: str, value: str, choices: Sequence[str]) -> Any:
    if value.lower() in choices:
        return value.lower()
    hint = difflib.get_close_matches(value.lower(), list(choices), n=1)
    ctx.problems.add(
        section,
        key,
        f'expected one of {", ".join(choices)}, got "{value}"'
        + (f", did you mean {hint[0]}?" if hint else ""),
    )
    return INVALID


def _at_least(minimum: int) -> "Parser":
    """A whole number of at least `minimum`."""
    return functools.partial(_integer, minimum=minimum)


def _one_of(choices: Sequence[str]) -> "Parser":
    """One of `choices`, in any case."""
    return functools.partial(_choice, choices=choices)


def _text(ctx: _Context, section: str, key: str, value: str) -> Any:
    """The value as written (one line, not empty: _single_line)."""
    return value


def _instance_id(ctx: _Context, section: str, key: str, value: str) -> Any:
    if INSTANCE_ID_RE.fullmatch(value):
        return value
    ctx.problems.add(section, key, f'"{value}": 1 to 64 letters, digits and _ . - (it goes into '
                     "the description of every session fcmon creates)")
    return INVALID


def parse_listen(value: str) -> Tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT -> (host without brackets, port); ValueError says why."""
    m = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", value)
    if m:
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" in brackets is not an IPv6 address') from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError("")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets, as in [::1]:9731")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f'"{host}" is not a host name or IP address')
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


def _listen(ctx: _Context, section: str, key: str, value: str) -> Any:
    try:
        return parse_listen(value)
    except ValueError as exc:
        why = f" ({exc})" if str(exc) else ""
        ctx.problems.add(
            section,
            key,
            f'expected HOST:PORT, got "{value}"{why}; use [::]:PORT or 0.0.0.0:PORT for all addresses',
        )
        return INVALID


def _listeners(ctx: _Context, section: str, key: str, value: str) -> Any:
    """auto | none | NAME:PORT, ... -> (mode, ((name, port), ...)); every bad item reported."""
    word = value.strip().lower()
    if word in ("auto", "none"):
        return (word, ())
    items: List[Tuple[str, int]] = []
    ok = True
    for raw in value.split(","):
        item = raw.strip()
        name, sep, port_text = item.rpartition(":")
        port = int(port_text) if port_text.isdigit() else -1
        if not sep or not LISTENER_NAME_RE.fullmatch(name) or not 1 <= port <= 65535:
            ctx.problems.add(
                section, key,
                f'"{item}" is not NAME:PORT (a name of letters, digits and _ . -, a port 1-65535); '
                "write auto, none or a list such as mqtts:8883, wss:9002",
            )
            ok = False
            continue
        if any(n == name for n, _ in items):
            ctx.problems.add(section, key, f'"{name}" is named twice')
            ok = False
        elif any(p == port for _, p in items):
            ctx.problems.add(section, key, f"port {port} is listed twice")
            ok = False
        items.append((name, port))
    return ("list", tuple(items)) if ok else INVALID


def _usernames(ctx: _Context, section: str, key: str, value: str) -> Any:
    """NAME, NAME, ... -> a tuple of distinct user names (case-insensitive)."""
    names = [n.strip() for n in value.split(",")]
    bad = [n for n in names if not 1 <= len(n.encode("utf-8")) <= 64 or not n.isprintable()]
    if bad:
        ctx.problems.add(section, key, "each user name must be 1 to 64 bytes of printable text, "
                         "separated by commas")
        return INVALID
    if len({n.upper() for n in names}) != len(names):
        ctx.problems.add(section, key, "a user name is listed twice (names compare case-insensitively)")
        return INVALID
    if len(names) > MAX_CENSUS_USERNAMES:
        ctx.problems.add(section, key, f"at most {MAX_CENSUS_USERNAMES} user names (each one is a label value), "
                         f"got {len(names)}")
        return INVALID
    return tuple(names)


def _endpoint(ctx: _Context, section: str, key: str, value: str) -> Any:
    """Shape of the URL; the scheme is checked later, once allow_insecure_http is known."""
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when not a number in range
    except ValueError as exc:
        ctx.problems.add(section, key, f'"{value}" is not a valid URL: {exc}')
        return INVALID
    if "@" in parts.netloc:
        # Not quoted: the user-info part may hold a password.
        ctx.problems.add(
            section,
            key,
            "must not contain user:password@; use username and password_file",
        )
        return INVALID
    if parts.scheme.lower() not in ("https", "http"):
        ctx.problems.add(
            section,
            key,
            f'expected an https:// URL such as https://db1.example.com:8443/api, got "{value}"',
        )
        return INVALID
    if not parts.hostname:
        ctx.problems.add(section, key, f'"{value}" has no host name')
        return INVALID
    if not _HOSTNAME_RE.fullmatch(parts.hostname) and not _is_ip(parts.hostname):
        ctx.problems.add(
            section, key, f'"{value}": "{parts.hostname}" is not a host name or IP address'
        )
        return INVALID
    if port == 0:
        ctx.problems.add(section, key, f'"{value}": port 0 cannot be connected to')
        return INVALID
    if parts.query or parts.fragment:
        ctx.problems.add(section, key, f'"{value}" must not have a ?query or #fragment')
        return INVALID
    return value


def _runbook_url(ctx: _Context, section: str, key: str, value: str) -> Any:
    """Where docs/runbook.md is published; the page appends `#anchor`."""
    value = value.strip()
    if not re.match(r"^https?://[^\s#]+$", value):
        ctx.problems.add(
            section, key,
            f"{value!r}: expected the http(s) URL of docs/runbook.md, without #anchor "
            "(e.g. https://git.example.com/ops/fcmon/blob/v0.2.0/docs/runbook.md)")
        return INVALID
    return value


_HOST_PATTERN = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)")


def _host_patterns(ctx: _Context, section: str, key: str, value: str) -> Any:
    """`allowed_hosts`: names, `*.suffix` or `*`, separated by commas or spaces."""
    items = [v for v in re.split(r"[,\s]+", value.strip().lower()) if v]
    bad = [v for v in items if not _HOST_PATTERN.fullmatch(v.rstrip("."))]
    if not items or bad:
        ctx.problems.add(section, key, f'expected host names, "*.domain" or "*", got "{value}"')
        return INVALID
    return tuple(v.rstrip(".") for v in items)


def resolve_path(value: str, base_dir: Path, environ: Mapping[str, str]) -> Optional[Path]:
    """A path as the config means it: `$CREDENTIALS_DIRECTORY/...` in that
    directory (None when it is not set), relative ones from the config's."""
    m = _CREDENTIALS_RE.match(value)
    if m:
        creds = environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            return None
        path = Path(creds) / value[m.end():]
    else:
        path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _path(ctx: _Context, section: str, key: str, value: str) -> Any:
    """Resolve a path (credentials dir, relative to the config) and check it can be opened."""
    path = resolve_path(value, ctx.base_dir, ctx.environ)
    if path is None:
        ctx.problems.add(
            section,
            key,
            f"{value}: $CREDENTIALS_DIRECTORY is not set "
            "(systemd sets it for LoadCredential=; outside systemd use a plain path)",
        )
        return INVALID
    try:
        # Opening, not os.access(): root passes access() for unreadable files
        # and directories, and the errno text is what the operator needs.
        with open(path, "rb"):
            pass
    except OSError as exc:
        ctx.problems.add(section, key, f"{path}: {exc.strerror or exc}")
        return INVALID
    return path


def _secret_from_file(ctx: _Context, section: str, key: str, value: str) -> Any:
    path = _path(ctx, section, key, value)
    if path is INVALID:
        return INVALID
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        ctx.problems.add(section, key, f"{path}: {exc.strerror or exc}")
        return INVALID
    # Messages below describe the content, never quote it.
    if len(data) > _MAX_PASSWORD_FILE_BYTES:
        ctx.problems.add(section, key, f"{path}: too large for a password file")
        return INVALID
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        ctx.problems.add(section, key, f"{path}: not UTF-8 text")
        return INVALID
    # Editors and `echo` add a final newline; it is never part of the password.
    secret = text.rstrip("\r\n")
    if not secret:
        ctx.problems.add(section, key, f"{path}: file is empty")
        return INVALID
    if "\n" in secret or "\r" in secret:
        ctx.problems.add(section, key, f"{path}: holds several lines; put only the password in it")
        return INVALID
    return secret


def _secret_from_env(ctx: _Context, section: str, key: str, value: str) -> Any:
    secret = ctx.environ.get(value)
    if secret is None:
        ctx.problems.add(section, key, f"environment variable {value} is not set")
        return INVALID
    if secret == "":
        ctx.problems.add(section, key, f"environment variable {value} is empty")
        return INVALID
    return secret


# ---------------------------------------------------------------------------
# Keys: each key once, with its parser, its default and where it may be written

Parser = Callable[[_Context, str, str, str], Any]
# (ctx, section, key, value) -> the value, or INVALID after ctx.problems says why


@dataclass(frozen=True)
class Key:
    """One config key. The dataclasses below take their defaults from here.

    `fields`: the dataclass field(s) the value fills; a tuple value is spread
    over several (listen -> listen_host, listen_port). A key allowed in
    [fcmon] and in the target sections (interval, timeout) is inherited
    [target:NAME] -> [defaults] -> [fcmon] -> `default`; any other target
    key [target:NAME] -> [defaults] -> `default`. `secret`: the value read
    (from the file, variable or line) is a password: its field has
    repr=False and summaries show <redacted>.
    """

    name: str
    parse: Parser
    sections: Tuple[str, ...]
    default: Any = None
    fields: Tuple[str, ...] = ()
    secret: bool = False

    def __post_init__(self) -> None:
        # A key the parser would not know how to read cannot be declared:
        # there is no fallback branch to parse it as something else.
        if not callable(self.parse):
            raise TypeError(f"config key {self.name!r}: no parser (parse={self.parse!r})")
        if not self.sections or any(s not in SECTIONS for s in self.sections):
            raise ValueError(f"config key {self.name!r}: sections must be some of {SECTIONS}, "
                             f"got {self.sections!r}")
        if DEFAULTS in self.sections and TARGET not in self.sections:
            raise ValueError(f"config key {self.name!r}: [defaults] only holds keys a target may have")
        if not self.fields:
            object.__setattr__(self, "fields", (self.name,))


class KeyTable:
    """The config keys by name, in the order written; refuses anything but a Key with a parser."""

    def __init__(self, *keys: Key) -> None:
        self._keys: Dict[str, Key] = {}
        for key in keys:
            if not isinstance(key, Key) or not callable(key.parse):
                raise TypeError(f"not a config key with a parser: {key!r}")
            if key.name in self._keys:
                raise ValueError(f"config key {key.name!r} is in the table twice")
            self._keys[key.name] = key

    def __getitem__(self, name: str) -> Key:
        return self._keys[name]

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def names(self, section: str) -> Tuple[str, ...]:
        """The keys allowed in `section` (FCMON, WEB, DEFAULTS or TARGET)."""
        return tuple(k.name for k in self if section in k.sections)

    def field_default(self, name: str) -> Any:
        """The default of dataclass field `name`, from the key(s) filling it."""
        found = set()
        for key in self:
            if name in key.fields:
                value = key.default if len(key.fields) == 1 else key.default[key.fields.index(name)]
                found.add(repr(value))
                result = value
        if len(found) != 1:
            raise KeyError(f"field {name!r}: {'no key fills it' if not found else 'keys disagree on its default'}")
        return result


# Every target has its own address (endpoint, not in [defaults]): inheriting
# one would point two target labels at the same server.
_ANY_TARGET = (TARGET, DEFAULTS)

KEYS = KeyTable(
    Key("listen", _listen, (FCMON,), ("127.0.0.1", 9731), fields=("listen_host", "listen_port")),
    Key("interval", _number, (FCMON,) + _ANY_TARGET, 60.0),
    Key("timeout", _number, (FCMON,) + _ANY_TARGET, 10.0),
    Key("log_level", _one_of(LOG_LEVELS), (FCMON,), "info"),
    Key("log_format", _one_of(LOG_FORMATS), (FCMON,), "text"),
    # False: probe only when /probe?target= is scraped (Prometheus-driven
    # scheduling, hashmod sharding across instances).
    Key("schedule", _boolean, (FCMON,), True),
    # Probes in flight to one FairCom server (endpoint host and port) at most:
    # FairCom allows 25 connections per client IP by default.
    Key("max_connections_per_host", _at_least(1), (FCMON,), MAX_CONNECTIONS_PER_HOST),
    # Probes that /probe may have started and not finished; beyond, 503.
    Key("max_probe_requests", _at_least(1), (FCMON,), 64),
    # /probe serves a probe's result again to calls for the same target for
    # this many seconds after it ended (0: every call probes).
    Key("probe_reuse_window", _seconds_or_zero, (FCMON,), 5.0),
    # names this fcmon in the sessions it creates (fcmon/service/instance.py); None:
    # derived from the machine, the config path and the listen address
    Key("instance_id", _instance_id, (FCMON,)),
    # where docs/runbook.md is published: the status page links failures
    # and certificates to its sections (as the alert rules' runbook_url)
    Key("runbook_url", _runbook_url, (FCMON,), RUNBOOK_URL),

    Key("tls_cert_file", _path, (WEB,)),
    Key("tls_key_file", _path, (WEB,)),
    Key("client_ca_file", _path, (WEB,)),
    Key("basic_auth_username", _text, (WEB,)),
    Key("basic_auth_password_file", _secret_from_file, (WEB,), fields=("basic_auth_password",), secret=True),
    # Connections one client address (an IPv6 /64) may hold open at once.
    Key("max_connections_per_client", _at_least(1), (WEB,), 1024),
    # Host header names served besides IP literals and localhost names;
    # None: the machine's host name, or any name when basic auth is set.
    Key("allowed_hosts", _host_patterns, (WEB,)),

    Key("endpoint", _endpoint, (TARGET,)),
    Key("username", _text, _ANY_TARGET),
    # at most one of the three (PASSWORD_KEYS)
    Key("password_file", _secret_from_file, _ANY_TARGET, fields=("password",), secret=True),
    Key("password_env", _secret_from_env, _ANY_TARGET, fields=("password",), secret=True),
    Key("password", _text, _ANY_TARGET, secret=True),
    Key("ca_file", _path, _ANY_TARGET),
    Key("client_cert_file", _path, _ANY_TARGET),
    Key("client_key_file", _path, _ANY_TARGET),
    Key("client_key_password_file", _secret_from_file, _ANY_TARGET, fields=("client_key_password",), secret=True),
    Key("client_key_password_env", _secret_from_env, _ANY_TARGET, fields=("client_key_password",), secret=True),
    Key("allow_insecure_http", _boolean, _ANY_TARGET, False),
    Key("session_idle_timeout", _at_least(1), _ANY_TARGET, 300),
    Key("max_response_bytes", _at_least(MIN_MAX_RESPONSE_BYTES), _ANY_TARGET, 1048576),
    # TLS listeners besides the endpoint (fcmon/probe/listeners.py): "auto" asks
    # listServices, "none" checks none, "list" checks the (NAME, PORT)s
    # given (and, with `listeners_discover`, the discovered ones too).
    Key("listeners", _listeners, _ANY_TARGET, ("auto", ()), fields=("listeners_mode", "listeners")),
    Key("listeners_discover", _boolean, _ANY_TARGET, True),
    Key("listener_interval", _number, _ANY_TARGET, 600.0),
    # describeSessions before deleteSession (fcmon/probe/census.py), and the
    # account's session limit the census is measured against (FairCom's
    # maxJsonApiSessionsPerUsername)
    Key("session_census", _boolean, _ANY_TARGET, True),
    Key("account_sessions_limit", _at_least(1), _ANY_TARGET, 50),
    # Listeners checked per round at most (configured first, then
    # discovered); the rest are counted, not checked.
    Key("max_listeners", _at_least(1), _ANY_TARGET, 32),
    # listSessions counts for these user names (administrator accounts);
    # empty: not asked
    Key("session_census_usernames", _usernames, _ANY_TARGET, ()),
)

FCMON_KEYS = KEYS.names(FCMON)
WEB_KEYS = KEYS.names(WEB)
TARGET_KEYS = KEYS.names(TARGET)
DEFAULTS_KEYS = KEYS.names(DEFAULTS)
# Keys naming a file that holds a secret (fcmon validate warns when every
# user of the host can read it).
SECRET_FILE_KEYS = tuple(k.name for k in KEYS if k.parse is _secret_from_file)
_default = KEYS.field_default


# The parsed config. Every default is the key table's (_default); what each
# field means is said there, next to its key.


@dataclass(frozen=True)
class WebConfig:
    tls_cert_file: Optional[Path] = _default("tls_cert_file")
    tls_key_file: Optional[Path] = _default("tls_key_file")
    client_ca_file: Optional[Path] = _default("client_ca_file")
    basic_auth_username: Optional[str] = _default("basic_auth_username")
    basic_auth_password: Optional[str] = field(default=_default("basic_auth_password"), repr=False)
    max_connections_per_client: int = _default("max_connections_per_client")
    allowed_hosts: Optional[Tuple[str, ...]] = _default("allowed_hosts")


@dataclass(frozen=True)
class TargetConfig:
    name: str  # from the section header, [target:NAME]
    endpoint: str
    username: Optional[str] = _default("username")
    password: Optional[str] = field(default=_default("password"), repr=False)
    ca_file: Optional[Path] = _default("ca_file")
    client_cert_file: Optional[Path] = _default("client_cert_file")
    client_key_file: Optional[Path] = _default("client_key_file")
    client_key_password: Optional[str] = field(default=_default("client_key_password"), repr=False)
    interval: float = _default("interval")
    timeout: float = _default("timeout")
    allow_insecure_http: bool = _default("allow_insecure_http")
    session_idle_timeout: int = _default("session_idle_timeout")
    max_response_bytes: int = _default("max_response_bytes")
    listeners_mode: str = _default("listeners_mode")  # auto, none or list
    listeners: Tuple[Tuple[str, int], ...] = _default("listeners")  # (NAME, PORT) as configured
    listeners_discover: bool = _default("listeners_discover")
    listener_interval: float = _default("listener_interval")
    session_census: bool = _default("session_census")
    account_sessions_limit: int = _default("account_sessions_limit")
    max_listeners: int = _default("max_listeners")
    session_census_usernames: Tuple[str, ...] = _default("session_census_usernames")

    @property
    def discovers_listeners(self) -> bool:
        return self.listeners_mode == "auto" or (self.listeners_mode == "list" and self.listeners_discover)

    @property
    def checks_listeners(self) -> bool:
        return self.listeners_mode != "none"


@dataclass(frozen=True)
class Config:
    listen_host: str = _default("listen_host")
    listen_port: int = _default("listen_port")
    interval: float = _default("interval")
    timeout: float = _default("timeout")
    log_level: str = _default("log_level")
    log_format: str = _default("log_format")
    schedule: bool = _default("schedule")
    max_connections_per_host: int = _default("max_connections_per_host")
    max_probe_requests: int = _default("max_probe_requests")
    probe_reuse_window: float = _default("probe_reuse_window")
    instance_id: Optional[str] = _default("instance_id")
    runbook_url: str = _default("runbook_url")
    web: WebConfig = WebConfig()
    targets: Tuple[TargetConfig, ...] = ()
    path: Optional[Path] = None  # set by load_config


# ---------------------------------------------------------------------------
# Public API


def default_config_path(environ: Mapping[str, str]) -> str:
    """`$FCMON_CONFIG`, else /etc/fcmon/config.ini."""
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: Union[Path, str], environ: Mapping[str, str] = os.environ) -> Config:
    """Read and parse the config file at `path`; relative paths in it resolve against its folder."""
    abspath = Path(os.path.abspath(os.fspath(path)))
    try:
        data = abspath.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{abspath}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        # utf-8-sig: an editor's BOM would otherwise make the first header unparsable.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{abspath}: not UTF-8 text (byte {exc.start}): save the file as UTF-8"]
        ) from None
    config = parse_config(text, abspath.parent, environ, source=str(abspath))
    return dataclasses.replace(config, path=abspath)


def parse_config(
    text: str,
    base_dir: Path,
    environ: Mapping[str, str],
    source: str = "<config>",
) -> Config:
    """Parse config text into a Config, or raise ConfigError listing every problem."""
    problems = _Problems(source)
    parser = _read_ini(text, source, problems)
    ctx = _Context(Path(base_dir), environ, problems)

    sections = [s for s in parser.sections() if not s.startswith(_PLACEHOLDER)]
    target_sections: List[Tuple[str, str]] = []
    # Keys written under a misspelled header ([fcmn], [defualts]): what the
    # operator meant to set there is unknown, not the default (_mark_unknown).
    meant: Dict[str, List[str]] = {FCMON: [], WEB: [], DEFAULTS: []}
    misspelled_target = False
    for section in sections:
        if section in (FCMON, WEB, DEFAULTS):
            continue
        if section.startswith(TARGET_PREFIX):
            name = section[len(TARGET_PREFIX):]
            if not name:
                problems.add_section(section, "target NAME is empty: write [target:NAME]")
            elif not TARGET_NAME_RE.fullmatch(name):
                problems.add_section(
                    section,
                    f'target NAME "{name}" may only contain letters, digits and _ . : -',
                )
            target_sections.append((section, name))
            continue
        hint = _section_hint(section)
        problems.add_section(section, "unknown section" + hint)
        misspelled_target = misspelled_target or hint.startswith(", did you mean [target:")
        home = _meant_section(section)
        if home is not None and not parser.has_section(home):
            meant[home] += [k for k, _ in _items(parser, section)]

    fcmon = _parse_fcmon(_items(parser, FCMON), ctx, meant[FCMON])
    web = _parse_web(_items(parser, WEB), ctx, meant[WEB])
    defaults = _parse_target_section(DEFAULTS, _items(parser, DEFAULTS), ctx, meant[DEFAULTS])
    _check_interval_timeout(DEFAULTS, defaults, fcmon, None, problems)

    targets: List[TargetConfig] = []
    for section, name in target_sections:
        own = _parse_target_section(section, _items(parser, section), ctx)
        target = _build_target(section, name, own, defaults, fcmon, problems)
        if target is not None:
            targets.append(target)
    if not target_sections and not misspelled_target:
        problems.add_general("no [target:NAME] section: add one for each FairCom server to probe")

    if problems.items:
        raise ConfigError(problems.items)
    log.debug("%s: %d target(s)", source, len(targets))
    return Config(web=web, targets=tuple(targets), **_fields(fcmon))


def redacted_summary(config: Config) -> List[str]:
    """Human-readable lines describing `config`; secrets appear only as <redacted> or <none>."""
    lines = []
    if config.path is not None:
        lines.append(f"config: {config.path}")
    lines.append(f"listen: {format_listen(config.listen_host, config.listen_port)}")
    lines.append(
        f"probe defaults: interval {_num(config.interval)}s, timeout {_num(config.timeout)}s"
    )
    lines.append(f"logging: level {config.log_level}, format {config.log_format}")
    lines.append(f"limits: {config.max_connections_per_host} probes in flight per FairCom server, "
                 f"{config.max_probe_requests} probes started by /probe, "
                 f"/probe results reused for {_num(config.probe_reuse_window)}s")
    if config.instance_id is not None:
        lines.append(f"instance_id: {config.instance_id}")
    lines.append(f"runbook: {config.runbook_url}")
    if not config.schedule:
        lines.append("schedule: off (targets are probed only through /probe?target=NAME)")
    web = config.web
    if web.tls_cert_file is None and web.basic_auth_username is None:
        lines.append("web: plain HTTP, no authentication")
    else:
        lines.append("web:")
        if web.tls_cert_file is not None:
            lines.append(f"  tls_cert_file: {web.tls_cert_file}")
            lines.append(f"  tls_key_file: {web.tls_key_file}")
        if web.client_ca_file is not None:
            lines.append(f"  client_ca_file: {web.client_ca_file} (client certificates required)")
        if web.basic_auth_username is not None:
            lines.append(f"  basic_auth_username: {web.basic_auth_username}")
            lines.append(f"  basic_auth_password: {_secret(web.basic_auth_password)}")
    lines.append(f"targets: {len(config.targets)}")
    for t in config.targets:
        lines.append(f"[target:{t.name}]")
        lines.append(f"  endpoint: {t.endpoint}")
        if t.allow_insecure_http:
            lines.append("  allow_insecure_http: true")
        lines.append(f"  username: {t.username if t.username is not None else '<none>'}")
        lines.append(f"  password: {_secret(t.password)}")
        lines.append(f"  ca_file: {t.ca_file if t.ca_file is not None else '<system trust store>'}")
        if t.client_cert_file is not None:
            lines.append(f"  client_cert_file: {t.client_cert_file}")
            lines.append(f"  client_key_file: {t.client_key_file}")
            lines.append(f"  client_key_password: {_secret(t.client_key_password)}")
        else:
            lines.append("  client certificate: <none>")
        lines.append(
            f"  interval {_num(t.interval)}s, timeout {_num(t.timeout)}s, "
            f"session_idle_timeout {t.session_idle_timeout}s, "
            f"max_response_bytes {t.max_response_bytes}"
        )
        lines.append(f"  listeners: {_listeners_summary(t)}")
        lines.append("  session census: " + (f"on, account limit {t.account_sessions_limit}"
                                              if t.session_census else "off")
                     + (f", sessions counted for {', '.join(t.session_census_usernames)}"
                        if t.session_census and t.session_census_usernames else ""))
    return lines


def _listeners_summary(t: TargetConfig) -> str:
    if not t.checks_listeners:
        return "none"
    parts = ["discovered with listServices"] if t.discovers_listeners else []
    parts += [f"{name}:{port}" for name, port in t.listeners]
    return " + ".join(parts) + f", every {_num(t.listener_interval)}s"


def format_listen(host: str, port: int) -> str:
    """HOST:PORT as written in config.ini, brackets around IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------
# Reading the INI text


def _new_parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        # configparser's DEFAULT section would silently leak its keys into
        # every section; [DEFAULT] must instead be reported as unknown.
        default_section=_PLACEHOLDER + "DEFAULT",
    )


def _read_ini(text: str, source: str, problems: _Problems) -> configparser.ConfigParser:
    """Parse INI text, reporting every syntax problem instead of stopping at the first.

    configparser stops at a duplicate section or key and at a key before any
    section. Each time, the offending line is neutralised and the text is
    parsed again, so the rest of the file is still checked. Offending lines
    are never quoted: one may hold a password.
    """
    lines = text.split("\n")  # the way read_string's StringIO splits lines
    for attempt in range(len(lines) + 1):
        parser = _new_parser()
        try:
            parser.read_string("\n".join(lines), source)
        except configparser.DuplicateSectionError as exc:
            problems.add_section(
                exc.section,
                f"duplicate section (again at line {exc.lineno}): each section may appear once",
            )
            # Its keys go to a placeholder section that is not checked.
            lines[_index(exc.lineno)] = f"[{_PLACEHOLDER}section{attempt}]"
            continue
        except configparser.DuplicateOptionError as exc:
            # A duplicate key inside a duplicate section is not worth a second line.
            if not exc.section.startswith(_PLACEHOLDER):
                problems.add(
                    exc.section,
                    exc.option,
                    f"duplicate key (again at line {exc.lineno}): "
                    "each key may appear once per section",
                )
            # Same indentation keeps any continuation lines attached to it.
            line = lines[_index(exc.lineno)]
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            lines[_index(exc.lineno)] = f"{indent}{_PLACEHOLDER}key{attempt} ="
            continue
        except configparser.MissingSectionHeaderError as exc:
            problems.add_general(
                f"line {exc.lineno}: expected a [section] header before any key"
            )
            lines[_index(exc.lineno)] = "#"
            continue
        except configparser.ParsingError as exc:
            # Raised after the whole file was read: the parser holds every good line.
            for lineno, _line in exc.errors:
                problems.add_general(
                    f'line {lineno}: cannot parse: expected "key = value", a [section] header or a comment'
                )
        return parser
    return _new_parser()  # not reached: every retry removes one line


def _index(lineno: Optional[int]) -> int:
    # configparser always sets lineno when reading a string; typeshed says Optional.
    return (lineno or 1) - 1


def _items(parser: configparser.ConfigParser, section: str) -> List[Tuple[str, str]]:
    if not parser.has_section(section):
        return []
    return [
        (k, v)
        for k, v in parser.items(section, raw=True)
        if not k.startswith(_PLACEHOLDER)
    ]


def _section_hint(section: str) -> str:
    stripped = section.strip()
    lower = stripped.lower()
    head, sep, rest = stripped.partition(":")
    if sep and difflib.get_close_matches(head.lower(), ["target"], n=1, cutoff=0.6):
        return f", did you mean [target:{rest.strip()}]?"
    if lower.startswith("target"):
        # [target prod], [targets.prod], [target]
        rest = stripped[len("target"):].lstrip("sS").strip(" _-.=")
        return f", did you mean [target:{rest or 'NAME'}]?"
    meant = _meant_section(section)
    if meant:
        return f", did you mean [{meant}]?"
    return "; known sections: [fcmon], [web], [defaults], [target:NAME]"


def _meant_key(key: str, allowed: Sequence[str]) -> Optional[str]:
    """The known key an unknown one is probably a misspelling of."""
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return match[0] if match else None


def _meant_section(section: str) -> Optional[str]:
    """The known section ([fcmon], [web], [defaults]) an unknown header probably misspells."""
    match = difflib.get_close_matches(section.strip().lower(), [FCMON, WEB, DEFAULTS], n=1, cutoff=0.6)
    return match[0] if match else None


def _key_hint(key: str, section: str, allowed: Sequence[str]) -> str:
    meant = _meant_key(key, allowed)
    if meant:
        return f", did you mean {meant}?"
    # A valid key in the wrong section is a common slip worth naming.
    if section == DEFAULTS and key == "endpoint":
        return ": each [target:NAME] needs its own endpoint, it cannot be inherited"
    for home, keys in ((FCMON, FCMON_KEYS), (WEB, WEB_KEYS), ("target:NAME", TARGET_KEYS)):
        if key in keys and home != section:
            return f" here; it belongs in [{home}]"
    return ""


# ---------------------------------------------------------------------------
# Sections


def _unknown(ctx: _Context, section: str, key: str, allowed: Sequence[str]) -> Optional[str]:
    """Report an unknown key; returns the known key it probably misspells."""
    ctx.problems.add(section, key, "unknown key" + _key_hint(key, section, allowed))
    return _meant_key(key, allowed)


def _mark_unknown(values: Dict[str, Any], written: Sequence[str], meant: Sequence[str]) -> FrozenSet[str]:
    """Keys the operator meant to set (but misspelled) hold INVALID, not a default.

    Without this a typo such as `timout = 3` leaves timeout at its default,
    and the checks that combine keys (timeout < interval, pairs such as
    tls_cert_file + tls_key_file, password + username, http:// + allow_insecure_http)
    would report the default, or the "missing" key, as a second and
    misleading problem. Those checks skip INVALID values, and a key that is
    only guessed (returned here) never counts as given either: the typo,
    already reported with its suggestion, is the only problem.
    """
    guessed = frozenset(k for k in meant if k not in written)
    for key in guessed:
        values[key] = INVALID
    return guessed


def _read_keys(
    kind: str, section: str, items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()
) -> Tuple[Dict[str, Any], FrozenSet[str]]:
    """The keys given in one section of `kind` (FCMON, WEB, DEFAULTS, TARGET), each
    read by its own parser (INVALID when it cannot be used), every unknown one
    reported; and the keys only guessed from a misspelling (_mark_unknown)."""
    allowed = KEYS.names(kind)
    given: Dict[str, Any] = {}
    meant = list(meant)
    for key, value in items:
        if key not in allowed:
            guess = _unknown(ctx, section, key, allowed)
            if guess is not None:
                meant.append(guess)
            continue
        if _single_line(ctx, section, key, value):
            given[key] = KEYS[key].parse(ctx, section, key, value)
        else:
            given[key] = INVALID
    guessed = _mark_unknown(given, [k for k, _ in items], [k for k in meant if k in allowed])
    return given, guessed


def _fields(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Key name -> value, as dataclass keyword arguments (a tuple value spread over its key's fields)."""
    out: Dict[str, Any] = {}
    for name, value in values.items():
        fields = KEYS[name].fields
        out.update({fields[0]: value} if len(fields) == 1 else zip(fields, value))
    return out


def _parse_fcmon(items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()) -> Dict[str, Any]:
    given, _guessed = _read_keys(FCMON, FCMON, items, ctx, meant)
    out = {k: given.get(k, KEYS[k].default) for k in FCMON_KEYS}
    interval, timeout = out["interval"], out["timeout"]
    if interval is not INVALID and timeout is not INVALID and timeout >= interval:
        ctx.problems.add(
            FCMON, "timeout", f"must be less than interval ({_num(interval)}), got {_num(timeout)}"
        )
    return out


def _parse_web(items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()) -> WebConfig:
    values, guessed = _read_keys(WEB, WEB, items, ctx, meant)
    p = ctx.problems
    _require_together(p, WEB, values, "tls_cert_file", "tls_key_file", guessed)
    _require_together(p, WEB, values, "basic_auth_username", "basic_auth_password_file", guessed)
    if "client_ca_file" in values and "client_ca_file" not in guessed and "tls_cert_file" not in values:
        p.add(WEB, "client_ca_file", "needs tls_cert_file and tls_key_file: client certificates need TLS")
    # An unusable key (reported) leaves its default: the config is refused anyway.
    return WebConfig(**_fields({k: v for k, v in values.items() if v is not INVALID}))


def _require_together(
    p: _Problems, section: str, values: Dict[str, Any], a: str, b: str, guessed: AbstractSet[str] = frozenset()
) -> None:
    if a in guessed or b in guessed:
        return  # one of them was misspelled: that is the problem, already reported
    if a in values and b not in values:
        p.add(section, a, f"given without {b}")
    elif b in values and a not in values:
        p.add(section, b, f"given without {a}")


@dataclass
class _Section:
    """One [defaults] or [target:NAME] section: the keys given and their parsed values."""

    name: str
    given: Dict[str, Any]  # key as written -> parsed value or INVALID
    password: Any = None  # from whichever password key was given
    client_key_password: Any = None
    guessed: FrozenSet[str] = frozenset()  # keys meant by a misspelled one (_mark_unknown)

    def has(self, *keys: str) -> bool:
        return any(k in self.given for k in keys)

    def first(self, keys: Sequence[str]) -> Optional[str]:
        for k in keys:
            if k in self.given:
                return k
        return None


def _parse_target_section(
    section: str, items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()
) -> _Section:
    given, guessed = _read_keys(DEFAULTS if section == DEFAULTS else TARGET, section, items, ctx, meant)
    written = [k for k, _ in items]

    sec = _Section(section, given, guessed=guessed)
    p = ctx.problems
    for group in (PASSWORD_KEYS, KEY_PASSWORD_KEYS):
        present = [k for k in group if k in written]
        if len(present) > 1:
            p.add(section, ", ".join(present), f"give only one of {', '.join(group)}")
    pw_key = sec.first(PASSWORD_KEYS)
    if pw_key is not None:
        sec.password = given[pw_key]
    kp_key = sec.first(KEY_PASSWORD_KEYS)
    if kp_key is not None:
        sec.client_key_password = given[kp_key]
    # Inheritance moves these as a group (see _build_target), so a pair is
    # complete or incomplete within the section that names it.
    _require_together(p, section, given, *CLIENT_PAIR_KEYS, guessed)
    if section == DEFAULTS and kp_key is not None and kp_key not in guessed and "client_key_file" not in given:
        p.add(section, kp_key, "given without client_key_file")
    return sec


def _build_target(
    section: str,
    name: str,
    own: _Section,
    defaults: _Section,
    fcmon: Dict[str, Any],
    problems: _Problems,
) -> Optional[TargetConfig]:
    """Apply [defaults] and [fcmon] to one target's keys and check what depends on several."""
    # Keys that belong together are inherited together: a target naming its
    # own password (or client certificate) must not be mixed with a password
    # source (or key, or key password) from [defaults].
    merged: Dict[str, Any] = {}

    def take(src: _Section, keys: Sequence[str]) -> None:
        for k in keys:
            if k in src.given:
                merged[k] = src.given[k]

    scalar_keys = [
        k for k in DEFAULTS_KEYS
        if k not in PASSWORD_KEYS + CLIENT_PAIR_KEYS + KEY_PASSWORD_KEYS
    ]
    take(defaults, scalar_keys)
    take(own, scalar_keys + ["endpoint"])

    pw_src = own if own.has(*PASSWORD_KEYS) else defaults
    password = pw_src.password
    pw_key = pw_src.first(PASSWORD_KEYS)

    pair_src = own if own.has(*CLIENT_PAIR_KEYS) else defaults
    take(pair_src, CLIENT_PAIR_KEYS)
    if own.has(*KEY_PASSWORD_KEYS):
        kp_src = own
    elif own.has(*CLIENT_PAIR_KEYS):
        kp_src = None  # a target's own key is never opened with [defaults]' key password
    else:
        kp_src = defaults
    key_password = kp_src.client_key_password if kp_src else None
    kp_key = kp_src.first(KEY_PASSWORD_KEYS) if kp_src else None

    # What the target gets: its own key, else [defaults]' (both in merged),
    # else [fcmon]'s for a key [fcmon] has too, else the table's default.
    values = {k: merged[k] if k in merged else fcmon[k] if k in fcmon else KEYS[k].default
              for k in TARGET_KEYS if k not in PASSWORD_KEYS + KEY_PASSWORD_KEYS}

    ok = True
    endpoint = values["endpoint"]
    insecure = values["allow_insecure_http"]
    if endpoint is None:
        problems.add(
            section,
            "endpoint",
            "missing: the JSON DB API URL, such as https://db1.example.com:8443/api",
        )
        ok = False
    elif endpoint is not INVALID and insecure is not INVALID:
        if urlsplit(endpoint).scheme.lower() == "http" and not insecure:
            problems.add(
                section,
                "endpoint",
                f'"{endpoint}" is plain http://: requests, password included, would travel unencrypted; '
                "use https://, or set allow_insecure_http = true for a test server",
            )
            ok = False

    if pw_key is not None and pw_key not in pw_src.guessed and values["username"] is None:
        where = "" if pw_src is own else f" (inherited from [{pw_src.name}])"
        problems.add(section, pw_key, f"given without username{where}")
        ok = False
    if kp_key is not None and kp_src is own and kp_key not in own.guessed and values["client_key_file"] is None:
        problems.add(section, kp_key, "given without client_key_file")
        ok = False

    _check_interval_timeout(section, own, fcmon, defaults, problems)

    timeout = values["timeout"]
    listeners = values["listeners"]
    discover = values["listeners_discover"]
    listener_interval = values["listener_interval"]
    if listeners is not INVALID and discover is False and listeners[0] == "auto":
        problems.add(
            section,
            "listeners_discover",
            "false needs a NAME:PORT list in listeners (with listeners = auto nothing would be "
            "checked; write listeners = none to check no listener)",
        )
        ok = False
    if listener_interval is not INVALID and timeout is not INVALID and listener_interval <= timeout:
        problems.add(
            section,
            "listener_interval",
            f"must be greater than timeout ({_num(timeout)}), got {_num(listener_interval)}",
        )
        ok = False
    census_users = values["session_census_usernames"]
    if census_users and census_users is not INVALID and values["session_census"] is False:
        problems.add(section, "session_census_usernames",
                     "needs session_census = true (the counts come with the census)")
        ok = False
    if (
        endpoint is None
        or not ok
        or any(v is INVALID for v in list(values.values()) + [password, key_password])
        or not TARGET_NAME_RE.fullmatch(name)
    ):
        return None
    return TargetConfig(name=name, password=password, client_key_password=key_password, **_fields(values))


def _effective(
    key: str, own: _Section, defaults: Optional[_Section], fcmon: Dict[str, Any]
) -> Any:
    if key in own.given:
        return own.given[key]
    if defaults is not None and key in defaults.given:
        return defaults.given[key]
    return fcmon[key]


def _effective_origin(key: str, own: _Section, defaults: Optional[_Section]) -> str:
    if key in own.given:
        return own.name
    if defaults is not None and key in defaults.given:
        return defaults.name
    return FCMON


def _check_interval_timeout(
    section: str,
    own: _Section,
    fcmon: Dict[str, Any],
    defaults: Optional[_Section],
    problems: _Problems,
) -> None:
    # Checked only where one of the two is set: a pair inherited unchanged
    # was already checked (and reported once) in [defaults] or [fcmon].
    if not own.has("interval", "timeout"):
        return
    interval = _effective("interval", own, defaults, fcmon)
    timeout = _effective("timeout", own, defaults, fcmon)
    if interval is INVALID or timeout is INVALID or timeout < interval:
        return
    t_from = _effective_origin("timeout", own, defaults)
    i_from = _effective_origin("interval", own, defaults)
    t_note = "" if t_from == section else f" from [{t_from}]"
    i_note = "" if i_from == section else f" from [{i_from}]"
    problems.add(
        section,
        "timeout",
        f"must be less than interval ({_num(interval)}{i_note}), got {_num(timeout)}{t_note}",
    )


# ---------------------------------------------------------------------------
# Helpers


def _num(value: float) -> str:
    """60.0 -> "60", 0.5 -> "0.5": numbers as an operator writes them."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _secret(value: Optional[str]) -> str:
    return "<none>" if value is None else "<redacted>"

