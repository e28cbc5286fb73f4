"""Helpers for the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pytest

from fcmon import pki
from fcmon.config import TargetConfig
from fcmon.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of an external tool; under CI=true a missing tool fails the test."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: pki.Issued
    ca_file: Path
    server: pki.Files
    client: pki.Files


def make_target(test_pki: PKI, emu: Emulator, **overrides: object) -> TargetConfig:
    target = TargetConfig(
        name="prod",
        endpoint=emu.url,
        username="ADMIN",
        password="ADMIN",
        ca_file=test_pki.ca_file,
        client_cert_file=test_pki.client.cert,
        client_key_file=test_pki.client.key,
        interval=10.0,
        timeout=3.0,
    )
    return replace(target, **overrides)  # type: ignore[arg-type]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fcmon_command(*args: str) -> list:
    return [sys.executable, "-m", "fcmon", *args]


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def start_fcmon(*args: str, env: Optional[dict] = None) -> subprocess.Popen:
    environ = dict(os.environ)
    environ.update(env or {})
    return subprocess.Popen(
        fcmon_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environ, cwd=str(ROOT),
    )
