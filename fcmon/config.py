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
import ipaddress
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from .runbook import RUNBOOK_URL

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/fcmon/config.ini"
CONFIG_ENV = "FCMON_CONFIG"


class ConfigError(Exception):
    """The config is invalid; `problems` lists every problem, each naming section and key."""

    def __init__(self, problems: "list[str]"):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class WebConfig:
    tls_cert_file: Optional[Path] = None
    tls_key_file: Optional[Path] = None
    client_ca_file: Optional[Path] = None
    basic_auth_username: Optional[str] = None
    basic_auth_password: Optional[str] = field(default=None, repr=False)
    # Connections one client address (an IPv6 /64) may hold open at once.
    max_connections_per_client: int = 1024
    # Host header names served besides IP literals and localhost names;
    # None: the machine's host name, or any name when basic auth is set.
    allowed_hosts: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class TargetConfig:
    name: str
    endpoint: str
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca_file: Optional[Path] = None
    client_cert_file: Optional[Path] = None
    client_key_file: Optional[Path] = None
    client_key_password: Optional[str] = field(default=None, repr=False)
    interval: float = 60.0
    timeout: float = 10.0
    allow_insecure_http: bool = False
    session_idle_timeout: int = 300
    max_response_bytes: int = 1048576
    # TLS listeners besides the endpoint (fcmon/listeners.py): "auto" asks
    # listServices, "none" checks none, "list" checks `listeners` (and,
    # with `listeners_discover`, the discovered ones too).
    listeners_mode: str = "auto"
    listeners: Tuple[Tuple[str, int], ...] = ()  # (NAME, PORT) as configured
    listeners_discover: bool = True
    listener_interval: float = 600.0
    # describeSessions before deleteSession (fcmon/census.py), and the
    # account's session limit the census is measured against
    session_census: bool = True
    account_sessions_limit: int = 50
    # Listeners checked per round at most (configured first, then
    # discovered); the rest are counted, not checked.
    max_listeners: int = 32
    # listSessions counts for these user names (administrator accounts);
    # empty: not asked
    session_census_usernames: Tuple[str, ...] = ()

    @property
    def discovers_listeners(self) -> bool:
        return self.listeners_mode == "auto" or (self.listeners_mode == "list" and self.listeners_discover)

    @property
    def checks_listeners(self) -> bool:
        return self.listeners_mode != "none"


@dataclass(frozen=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9731
    interval: float = 60.0
    timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    # False: probe only when /probe?target= is scraped (Prometheus-driven
    # scheduling, hashmod sharding across instances).
    schedule: bool = True
    # Probes in flight to one FairCom server (endpoint host and port) at most:
    # FairCom allows 25 connections per client IP by default.
    max_connections_per_host: int = 8
    # Probes that /probe may have started and not finished; beyond, 503.
    max_probe_requests: int = 64
    # /probe serves a probe's result again to calls for the same target for
    # this many seconds after it ended (0: every call probes).
    probe_reuse_window: float = 5.0
    # names this fcmon in the sessions it creates (fcmon/instance.py); None:
    # derived from the machine, the config path and the listen address
    instance_id: Optional[str] = None
    # where docs/runbook.md is published: the status page links failures
    # and certificates to its sections (as the alert rules' runbook_url)
    runbook_url: str = RUNBOOK_URL
    web: WebConfig = WebConfig()
    targets: Tuple[TargetConfig, ...] = ()
    path: Optional[Path] = None


# ---------------------------------------------------------------------------
# Vocabulary

FCMON = "fcmon"
WEB = "web"
DEFAULTS = "defaults"
TARGET_PREFIX = "target:"

FCMON_KEYS = ("listen", "interval", "timeout", "log_level", "log_format", "schedule",
              "max_connections_per_host", "max_probe_requests", "probe_reuse_window",
              "instance_id", "runbook_url")
WEB_KEYS = (
    "tls_cert_file",
    "tls_key_file",
    "client_ca_file",
    "basic_auth_username",
    "basic_auth_password_file",
    "max_connections_per_client",
    "allowed_hosts",
)
TARGET_KEYS = (
    "endpoint",
    "username",
    "password_file",
    "password_env",
    "password",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "client_key_password_file",
    "client_key_password_env",
    "interval",
    "timeout",
    "allow_insecure_http",
    "session_idle_timeout",
    "max_response_bytes",
    "listeners",
    "listeners_discover",
    "listener_interval",
    "session_census",
    "account_sessions_limit",
    "max_listeners",
    "session_census_usernames",
)
# Every target has its own address; inheriting one would point two target
# labels at the same server.
DEFAULTS_KEYS = tuple(k for k in TARGET_KEYS if k != "endpoint")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

PASSWORD_KEYS = ("password_file", "password_env", "password")
CLIENT_PAIR_KEYS = ("client_cert_file", "client_key_file")
KEY_PASSWORD_KEYS = ("client_key_password_file", "client_key_password_env")

DEFAULT_SESSION_IDLE_TIMEOUT = 300
# FairCom's maxJsonApiSessionsPerUsername
DEFAULT_ACCOUNT_SESSIONS_LIMIT = 50
INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# session_census_usernames: a label value each, so a bounded list of names
# of 1 to 64 bytes (FairCom's usernameFilter limit)
MAX_CENSUS_USERNAMES = 20
DEFAULT_LISTENER_INTERVAL = 600.0
DEFAULT_MAX_LISTENERS = 32
LISTENER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
DEFAULT_MAX_RESPONSE_BYTES = 1048576
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
    return Config(
        listen_host=fcmon["listen"][0],
        listen_port=fcmon["listen"][1],
        interval=fcmon["interval"],
        timeout=fcmon["timeout"],
        log_level=fcmon["log_level"],
        log_format=fcmon["log_format"],
        schedule=fcmon["schedule"],
        max_connections_per_host=fcmon["max_connections_per_host"],
        max_probe_requests=fcmon["max_probe_requests"],
        probe_reuse_window=fcmon["probe_reuse_window"],
        instance_id=fcmon["instance_id"],
        runbook_url=fcmon["runbook_url"],
        web=web,
        targets=tuple(targets),
    )


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


def _listen(ctx: _Context, value: str) -> Any:
    try:
        return parse_listen(value)
    except ValueError as exc:
        why = f" ({exc})" if str(exc) else ""
        ctx.problems.add(
            FCMON,
            "listen",
            f'expected HOST:PORT, got "{value}"{why}; use [::]:PORT or 0.0.0.0:PORT for all addresses',
        )
        return INVALID


def _listeners(ctx: _Context, section: str, value: str) -> Any:
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
                section, "listeners",
                f'"{item}" is not NAME:PORT (a name of letters, digits and _ . -, a port 1-65535); '
                "write auto, none or a list such as mqtts:8883, wss:9002",
            )
            ok = False
            continue
        if any(n == name for n, _ in items):
            ctx.problems.add(section, "listeners", f'"{name}" is named twice')
            ok = False
        elif any(p == port for _, p in items):
            ctx.problems.add(section, "listeners", f"port {port} is listed twice")
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


def _endpoint(ctx: _Context, section: str, value: str) -> Any:
    """Shape of the URL; the scheme is checked later, once allow_insecure_http is known."""
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when not a number in range
    except ValueError as exc:
        ctx.problems.add(section, "endpoint", f'"{value}" is not a valid URL: {exc}')
        return INVALID
    if "@" in parts.netloc:
        # Not quoted: the user-info part may hold a password.
        ctx.problems.add(
            section,
            "endpoint",
            "must not contain user:password@; use username and password_file",
        )
        return INVALID
    if parts.scheme.lower() not in ("https", "http"):
        ctx.problems.add(
            section,
            "endpoint",
            f'expected an https:// URL such as https://db1.example.com:8443/api, got "{value}"',
        )
        return INVALID
    if not parts.hostname:
        ctx.problems.add(section, "endpoint", f'"{value}" has no host name')
        return INVALID
    if not _HOSTNAME_RE.fullmatch(parts.hostname) and not _is_ip(parts.hostname):
        ctx.problems.add(
            section, "endpoint", f'"{value}": "{parts.hostname}" is not a host name or IP address'
        )
        return INVALID
    if port == 0:
        ctx.problems.add(section, "endpoint", f'"{value}": port 0 cannot be connected to')
        return INVALID
    if parts.query or parts.fragment:
        ctx.problems.add(section, "endpoint", f'"{value}" must not have a ?query or #fragment')
        return INVALID
    return value


def _runbook_url(ctx: _Context, value: str) -> Any:
    """Where docs/runbook.md is published; the page appends `#anchor`."""
    value = value.strip()
    if not re.match(r"^https?://[^\s#]+$", value):
        ctx.problems.add(
            FCMON, "runbook_url",
            f"{value!r}: expected the http(s) URL of docs/runbook.md, without #anchor "
            "(e.g. https://git.example.com/ops/fcmon/blob/v0.2.0/docs/runbook.md)")
        return INVALID
    return value


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


def _parse_fcmon(items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "listen": ("127.0.0.1", 9731),
        "interval": 60.0,
        "timeout": 10.0,
        "log_level": "info",
        "log_format": "text",
        "schedule": True,
        "max_connections_per_host": 8,
        "max_probe_requests": 64,
        "probe_reuse_window": 5.0,
        "instance_id": None,
        "runbook_url": RUNBOOK_URL,
    }
    meant = list(meant)
    for key, value in items:
        if key not in FCMON_KEYS:
            guess = _unknown(ctx, FCMON, key, FCMON_KEYS)
            if guess is not None:
                meant.append(guess)
            continue
        if not _single_line(ctx, FCMON, key, value):
            out[key] = INVALID
        elif key == "listen":
            out[key] = _listen(ctx, value)
        elif key in ("interval", "timeout"):
            out[key] = _number(ctx, FCMON, key, value)
        elif key == "log_level":
            out[key] = _choice(ctx, FCMON, key, value, LOG_LEVELS)
        elif key == "schedule":
            out[key] = _boolean(ctx, FCMON, key, value)
        elif key in ("max_connections_per_host", "max_probe_requests"):
            out[key] = _integer(ctx, FCMON, key, value, 1)
        elif key == "probe_reuse_window":
            out[key] = _seconds_or_zero(ctx, FCMON, key, value)
        elif key == "instance_id":
            if INSTANCE_ID_RE.fullmatch(value):
                out[key] = value
            else:
                ctx.problems.add(FCMON, key, f'"{value}": 1 to 64 letters, digits and _ . - (it goes into '
                                 "the description of every session fcmon creates)")
                out[key] = INVALID
        elif key == "runbook_url":
            out[key] = _runbook_url(ctx, value)
        else:
            out[key] = _choice(ctx, FCMON, key, value, LOG_FORMATS)
    _mark_unknown(out, [k for k, _ in items], [k for k in meant if k in FCMON_KEYS])
    interval, timeout = out["interval"], out["timeout"]
    if interval is not INVALID and timeout is not INVALID and timeout >= interval:
        ctx.problems.add(
            FCMON, "timeout", f"must be less than interval ({_num(interval)}), got {_num(timeout)}"
        )
    return out


def _parse_web(items: List[Tuple[str, str]], ctx: _Context, meant: Sequence[str] = ()) -> WebConfig:
    values: Dict[str, Any] = {}
    meant = list(meant)
    for key, value in items:
        if key not in WEB_KEYS:
            guess = _unknown(ctx, WEB, key, WEB_KEYS)
            if guess is not None:
                meant.append(guess)
            continue
        if not _single_line(ctx, WEB, key, value):
            values[key] = INVALID
        elif key == "basic_auth_username":
            values[key] = value
        elif key == "basic_auth_password_file":
            values[key] = _secret_from_file(ctx, WEB, key, value)
        elif key == "max_connections_per_client":
            values[key] = _integer(ctx, WEB, key, value, 1)
        elif key == "allowed_hosts":
            values[key] = _host_patterns(ctx, value)
        else:
            values[key] = _path(ctx, WEB, key, value)
    guessed = _mark_unknown(values, [k for k, _ in items], [k for k in meant if k in WEB_KEYS])

    p = ctx.problems
    _require_together(p, WEB, values, "tls_cert_file", "tls_key_file", guessed)
    _require_together(p, WEB, values, "basic_auth_username", "basic_auth_password_file", guessed)
    if "client_ca_file" in values and "client_ca_file" not in guessed and "tls_cert_file" not in values:
        p.add(WEB, "client_ca_file", "needs tls_cert_file and tls_key_file: client certificates need TLS")

    def get(key: str) -> Any:
        v = values.get(key)
        return None if v is INVALID else v

    return WebConfig(
        tls_cert_file=get("tls_cert_file"),
        tls_key_file=get("tls_key_file"),
        client_ca_file=get("client_ca_file"),
        basic_auth_username=get("basic_auth_username"),
        basic_auth_password=get("basic_auth_password_file"),
        max_connections_per_client=get("max_connections_per_client") or WebConfig.max_connections_per_client,
        allowed_hosts=get("allowed_hosts"),
    )


_HOST_PATTERN = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)")


def _host_patterns(ctx: _Context, value: str) -> Any:
    """`allowed_hosts`: names, `*.suffix` or `*`, separated by commas or spaces."""
    items = [v for v in re.split(r"[,\s]+", value.strip().lower()) if v]
    bad = [v for v in items if not _HOST_PATTERN.fullmatch(v.rstrip("."))]
    if not items or bad:
        ctx.problems.add(WEB, "allowed_hosts", f'expected host names, "*.domain" or "*", got "{value}"')
        return INVALID
    return tuple(v.rstrip(".") for v in items)


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
    allowed = DEFAULTS_KEYS if section == DEFAULTS else TARGET_KEYS
    given: Dict[str, Any] = {}
    meant = list(meant)
    for key, value in items:
        if key not in allowed:
            guess = _unknown(ctx, section, key, allowed)
            if guess is not None:
                meant.append(guess)
            continue
        if not _single_line(ctx, section, key, value):
            given[key] = INVALID
        elif key == "endpoint":
            given[key] = _endpoint(ctx, section, value)
        elif key == "username":
            given[key] = value
        elif key in ("password_file", "client_key_password_file"):
            given[key] = _secret_from_file(ctx, section, key, value)
        elif key in ("password_env", "client_key_password_env"):
            given[key] = _secret_from_env(ctx, section, key, value)
        elif key == "password":
            given[key] = value
        elif key in ("ca_file", "client_cert_file", "client_key_file"):
            given[key] = _path(ctx, section, key, value)
        elif key in ("interval", "timeout", "listener_interval"):
            given[key] = _number(ctx, section, key, value)
        elif key in ("allow_insecure_http", "listeners_discover", "session_census"):
            given[key] = _boolean(ctx, section, key, value)
        elif key == "listeners":
            given[key] = _listeners(ctx, section, value)
        elif key == "session_census_usernames":
            given[key] = _usernames(ctx, section, key, value)
        elif key in ("session_idle_timeout", "account_sessions_limit", "max_listeners"):
            given[key] = _integer(ctx, section, key, value, 1)
        else:
            given[key] = _integer(ctx, section, key, value, MIN_MAX_RESPONSE_BYTES)
    written = [k for k, _ in items]
    guessed = _mark_unknown(given, written, [k for k in meant if k in allowed])

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

    ok = True
    endpoint = merged.get("endpoint")
    insecure = merged.get("allow_insecure_http", False)
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

    if pw_key is not None and pw_key not in pw_src.guessed and merged.get("username") is None:
        where = "" if pw_src is own else f" (inherited from [{pw_src.name}])"
        problems.add(section, pw_key, f"given without username{where}")
        ok = False
    if kp_key is not None and kp_src is own and kp_key not in own.guessed and merged.get("client_key_file") is None:
        problems.add(section, kp_key, "given without client_key_file")
        ok = False

    _check_interval_timeout(section, own, fcmon, defaults, problems)

    interval = _effective("interval", own, defaults, fcmon)
    timeout = _effective("timeout", own, defaults, fcmon)
    listeners = merged.get("listeners", ("auto", ()))
    discover = merged.get("listeners_discover", True)
    listener_interval = merged.get("listener_interval", DEFAULT_LISTENER_INTERVAL)
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
    census_users = merged.get("session_census_usernames", ())
    if census_users and census_users is not INVALID and merged.get("session_census", True) is False:
        problems.add(section, "session_census_usernames",
                     "needs session_census = true (the counts come with the census)")
        ok = False
    values = list(merged.values()) + [password, key_password, interval, timeout]
    if (
        endpoint is None
        or not ok
        or any(v is INVALID for v in values)
        or not TARGET_NAME_RE.fullmatch(name)
    ):
        return None
    return TargetConfig(
        name=name,
        endpoint=endpoint,
        username=merged.get("username"),
        password=password,
        ca_file=merged.get("ca_file"),
        client_cert_file=merged.get("client_cert_file"),
        client_key_file=merged.get("client_key_file"),
        client_key_password=key_password,
        interval=interval,
        timeout=timeout,
        allow_insecure_http=insecure,
        session_idle_timeout=merged.get("session_idle_timeout", DEFAULT_SESSION_IDLE_TIMEOUT),
        max_response_bytes=merged.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        listeners_mode=listeners[0],
        listeners=listeners[1],
        listeners_discover=discover,
        listener_interval=listener_interval,
        session_census=merged.get("session_census", True),
        account_sessions_limit=merged.get("account_sessions_limit", DEFAULT_ACCOUNT_SESSIONS_LIMIT),
        max_listeners=merged.get("max_listeners", DEFAULT_MAX_LISTENERS),
        session_census_usernames=merged.get("session_census_usernames", ()),
    )


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


