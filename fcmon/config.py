"""config.ini -> frozen dataclasses. Every problem is reported at once.

(Parsing is being written; the dataclasses below are the interface.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

DEFAULT_CONFIG_PATH = "/etc/fcmon/config.ini"


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


@dataclass(frozen=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9731
    interval: float = 60.0
    timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    web: WebConfig = WebConfig()
    targets: Tuple[TargetConfig, ...] = ()
    path: Optional[Path] = None
