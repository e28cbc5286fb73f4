"""Helpers for the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, List, Optional, Sequence

import pytest

from fcmon import pki
from fcmon.config import TargetConfig
from fcmon.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def markdown_anchors(text: str) -> List[str]:
    """The anchors GitHub (and most Markdown renderers) give the headings of text."""
    anchors = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.append(slug)
    return anchors


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


def start_fcmon(*args: str, env: Optional[dict] = None, max_files: Optional[int] = None,
                prefix: Sequence[str] = ()) -> subprocess.Popen:
    """`max_files`: the process's RLIMIT_NOFILE (soft and hard); `prefix`: a
    command that execs the rest (e.g. `unshare -m ...`)."""
    environ = dict(os.environ)
    environ.update(env or {})

    def limit_files() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    return subprocess.Popen(
        [*prefix, *fcmon_command(*args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environ, cwd=str(ROOT), preexec_fn=limit_files if max_files is not None else None,
    )


def run_fcmon(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`python -m fcmon ARGS` to completion (for commands that end by themselves)."""
    return subprocess.run(fcmon_command(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))


def connect_from(source: str, port: int, n: int) -> List[socket.socket]:
    """Up to `n` connections to 127.0.0.1:`port` from loopback address
    `source` (127.0.0.2, ... for an attacker apart from the scraper's
    127.0.0.1); those refused or reset are left out."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(10)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def taken_port() -> socket.socket:
    """A loopback socket listening on a free port: that address is taken until it is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


class FcmonProcess:
    """`python -m fcmon ARGS` as a real process, its stderr collected by a thread."""

    def __init__(self, *args: str, env: Optional[dict] = None, max_files: Optional[int] = None,
                 prefix: Sequence[str] = ()):
        import threading

        self.proc = start_fcmon(*args, env=env, max_files=max_files, prefix=prefix)
        self.lines: list = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
        import re

        regex = re.compile(pattern)

        def found():  # type: ignore[no-untyped-def]
            if self.proc.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"fcmon exited {self.proc.returncode}:\n{self.text()}")
            with self._lock:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
            return None

        return wait_for(found, timeout)

    def metrics_url(self, timeout: float = 20.0) -> str:
        m = self.wait_for_line(r"serving metrics on (\S+)", timeout)
        return str(m.group(1))

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"fcmon did not stop within {timeout}s:\n{self.text()}")
        self._reader.join(5)
        return code

    def __enter__(self) -> "FcmonProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def reap(proc: "subprocess.Popen[Any]") -> None:
    """Kill a test's child process if it still runs, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def target_section(test_pki: PKI, emu: Emulator, name: str = "prod", **extra: str) -> str:
    lines = [
        f"[target:{name}]",
        f"endpoint = {emu.url}",
        "username = ADMIN",
        "password = ADMIN",
        f"ca_file = {test_pki.ca_file}",
        f"client_cert_file = {test_pki.client.cert}",
        f"client_key_file = {test_pki.client.key}",
    ] + [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def scrape(url: str, timeout: float = 10.0) -> str:
    import requests

    s = requests.Session()
    s.trust_env = False
    r = s.get(url, timeout=timeout)
    r.raise_for_status()
    return r.text


def sample(text: str, name: str, **labels: str) -> Optional[float]:
    """The value of one series in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def release_tools():  # type: ignore[no-untyped-def]
    """tools/release.py (what `make dist` and `make wheelhouse` run), as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fcmon_release", ROOT / "tools" / "release.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def require_module(name: str) -> None:
    """Like require_tool, for a Python module of the running interpreter."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        message = f"python module {name} is not installed (`make test` installs build and twine)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@dataclass(frozen=True)
class Dists:
    """The release, built once per test session: sdist, wheel and wheelhouse."""

    sdist: Path
    wheel: Path
    house: Path


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts every connection and never
    sends a byte (a TLS client waits in its handshake until its deadline).
    One thread, poll(): thousands of held connections cost little."""

    def __init__(self) -> None:
        import selectors
        import threading

        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4096)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True, name="blackhole")
        self._thread.start()

    def _run(self) -> None:
        import selectors

        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                if key.data is None:
                    try:
                        conn, _ = self._listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self._sel.register(conn, selectors.EVENT_READ, "conn")
                    self.accepted += 1
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(conn)
                    conn.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def threads_besides_resolver() -> int:
    """Threads alive, not counting fcmon's resolver pool: its threads
    (bounded by Resolver.max_threads) outlive a probe by design, idle for
    fcmon.probe.resolver.IDLE_SECONDS, so a probe's baseline leaves them out."""
    import threading

    from fcmon.probe import resolver

    pool = [t for t in threading.enumerate() if t.name == resolver.THREAD_NAME]
    assert len(pool) <= resolver.DEFAULT.max_threads
    return threading.active_count() - len(pool)


def hung_ports(n: int):  # type: ignore[no-untyped-def]
    """A context manager: `n` loopback ports that listen and never accept
    (the kernel completes TCP handshakes into the backlog; a TLS
    ClientHello is never answered). Yields their port numbers."""
    from contextlib import contextmanager

    @contextmanager
    def ports():  # type: ignore[no-untyped-def]
        socks = []
        try:
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                s.listen(64)
                socks.append(s)
            yield [int(s.getsockname()[1]) for s in socks]
        finally:
            for s in socks:
                s.close()

    return ports()
