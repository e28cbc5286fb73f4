"""Processes the bench starts, and how it looks at them.

Every process is started through `Procs`, which stops each one (by its own
pid, SIGTERM then SIGKILL) on the way out, even after an error. All traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name may contain spaces: fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while this machine wanted it (all CPUs)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def machine_facts() -> Dict[str, object]:
    import platform

    facts: Dict[str, object] = {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
    }
    try:
        import ssl as _ssl

        facts["openssl"] = _ssl.OPENSSL_VERSION
    except Exception:  # pragma: no cover
        pass
    try:  # read-only git: which code was measured
        facts["fcmon_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=str(ROOT),
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        facts["uncommitted_changes"] = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return facts


# ---------------------------------------------------------------- processes


class Proc:
    """One child process; its stdout and stderr kept (the last lines) by reader threads."""

    def __init__(self, name: str, cmd: Sequence[str], env: Optional[Dict[str, str]] = None,
                 stdin: bool = False, keep: int = 5000):
        environ = dict(os.environ)
        # The bench's own processes must not pick up a CA bundle from the
        # environment (this machine sets REQUESTS_CA_BUNDLE).
        environ.update(env or {})
        self.name = name
        self.cmd = list(cmd)
        self.popen = subprocess.Popen(
            self.cmd, cwd=str(ROOT), env=environ, text=True, bufsize=1,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.out: Deque[str] = collections.deque(maxlen=keep)
        self.err: Deque[str] = collections.deque(maxlen=keep)
        self.err_count = 0
        self._stdout_q: Optional[Deque[str]] = collections.deque() if stdin else None
        self._stdout_cv = threading.Condition(self._lock)
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, sink: Deque[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                sink.append(line)
                if sink is self.err:
                    self.err_count += 1
                if sink is self.out and self._stdout_q is not None:
                    self._stdout_q.append(line)
                    self._stdout_cv.notify_all()

    # -- line protocol (for children driven over stdin/stdout)

    def request(self, line: str, timeout: float = 30.0) -> str:
        assert self.popen.stdin is not None and self._stdout_q is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._stdout_q:
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise BenchError(f"{self.name}: no answer to {line!r}:\n{self.tail()}")
                self._stdout_cv.wait(min(left, 0.5))
            return self._stdout_q.popleft()

    # -- observation

    def tail(self, n: int = 30) -> str:
        with self._lock:
            lines = list(self.out)[-n:] + list(self.err)[-n:]
        return "\n".join(lines)

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> "re.Match[str]":
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for line in list(self.out) + list(self.err):
                    m = regex.search(line)
                    if m:
                        return m
            if self.popen.poll() is not None:
                time.sleep(0.1)  # let the readers drain
                with self._lock:
                    for line in list(self.out) + list(self.err):
                        m = regex.search(line)
                        if m:
                            return m
                raise BenchError(f"{self.name} exited {self.popen.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no line matching {pattern!r} in {timeout}s:\n{self.tail()}")
            time.sleep(0.02)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it had to be killed)."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                return None
        for t in self._readers:
            t.join(2)
        return self.popen.returncode


class Procs:
    """Every process the bench started; `stop_all()` ends each by its pid."""

    def __init__(self) -> None:
        self._procs: List[Proc] = []

    def start(self, name: str, cmd: Sequence[str], **kw) -> Proc:  # type: ignore[no-untyped-def]
        p = Proc(name, cmd, **kw)
        self._procs.append(p)
        return p

    def stop(self, proc: Proc, timeout: float = 30.0) -> Optional[int]:
        code = proc.stop(timeout)
        if proc in self._procs:
            self._procs.remove(proc)
        return code

    def stop_all(self) -> None:
        for p in reversed(list(self._procs)):
            try:
                p.stop(10)
            except Exception:
                try:
                    p.popen.kill()
                except Exception:
                    pass
        self._procs.clear()

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- HTTP


def http_get(port: int, path: str, timeout: float = 30.0,
             headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, timeout: float, want: int = 200, interval: float = 0.01) -> float:
    """Poll until `path` answers `want`; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = http_get(port, path, timeout=2.0)
            if status == want:
                return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{path} on port {port} did not answer {want} within {timeout}s")
        time.sleep(interval)


# ---------------------------------------------------------------- exposition text


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Dict[str, str]
    value: float


def samples(text: str, names: Iterable[str]) -> List[Sample]:
    """The samples of the named series (exact names), fast enough for 200k lines."""
    wanted = tuple(set(names))
    out = []
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        m = _LINE.match(line)
        if not m or m.group(1) not in wanted:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append(Sample(m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(text: str, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(text, [name]) if all(s.labels.get(k) == v for k, v in labels.items()))


def histogram_quantile(q: float, buckets: Sequence[Tuple[float, float]]) -> Optional[float]:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


# ---------------------------------------------------------------- the emulator


@dataclass
class Pki:
    dir: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    from fcmon import pki

    demo = pki.write_demo_pki(directory)
    return Pki(directory, demo.ca_file, demo.server.cert, demo.server.key, demo.client.cert, demo.client.key)


def client_context(p: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(p.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(p.client_cert), str(p.client_key))
    return ctx


class EmulatorProc:
    """`python -m fcmon.emulator` in its own process, client certificates required."""

    def __init__(self, procs: Procs, p: Pki, name: str = "emulator", max_sessions: int = 100000,
                 extra: Sequence[str] = ()):
        self.pki = p
        self.proc = procs.start(name, [
            PYTHON, "-m", "fcmon.emulator", "--listen", f"{LOOPBACK}:0",
            "--cert", str(p.server_cert), "--key", str(p.server_key), "--client-ca", str(p.ca_file),
            # Limits far above what the bench's session rate can reach: a
            # limit error would be the emulator's figure, not fcmon's.
            "--max-sessions", str(max_sessions), "--max-sessions-per-user", str(max_sessions),
            *extra,
        ])
        m = self.proc.wait_for_line(r"listening on https://[^:]+:(\d+)/api", 30)
        self.port = int(m.group(1))
        # The server certificate names 127.0.0.1 too: no resolver, no ::1 attempt.
        self.url = f"https://{LOOPBACK}:{self.port}/api"
        self._ctx = client_context(p)

    def _control(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        conn = http.client.HTTPSConnection(LOOPBACK, self.port, context=self._ctx, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 200:
                raise BenchError(f"emulator control {method} {path}: HTTP {resp.status} {raw[:200]!r}")
            return json.loads(raw)
        finally:
            conn.close()

    def set_fault(self, action: str, fault: dict) -> None:
        self._control("POST", "/_emulator/fault", {"action": action, "fault": fault})

    def clear_faults(self) -> None:
        self._control("DELETE", "/_emulator/fault")

    def sessions(self) -> dict:
        return self._control("GET", "/_emulator/sessions")

    def listeners(self) -> list:
        """The extra listeners with the TCP connections each accepted."""
        return list(self._control("GET", "/_emulator/listener")["listeners"])


# ---------------------------------------------------------------- fcmon


def fcmon_config(
    path: Path,
    p: Pki,
    port: int,
    targets: Sequence[Tuple[str, str]],
    interval: float,
    timeout: float,
    schedule: bool = True,
    log_level: str = "info",
    listeners: Optional[str] = None,
    per_host: Optional[int] = 10000,
) -> Path:
    lines = [
        "[fcmon]",
        f"listen = {LOOPBACK}:{port}",
        f"interval = {interval:g}",
        f"timeout = {timeout:g}",
        f"log_level = {log_level}",
        f"schedule = {'true' if schedule else 'false'}",
        # The bench's fleets share one or a few emulators, where a real fleet
        # has a host per server: the per-server cap is not what most suites
        # measure (per_host=None: fcmon's default, as the scale suite runs).
        *([f"max_connections_per_host = {per_host}"] if per_host is not None else []),
        "",
        "[defaults]",
        "username = ADMIN",
        "password = ADMIN",
        f"ca_file = {p.ca_file}",
        f"client_cert_file = {p.client_cert}",
        f"client_key_file = {p.client_key}",
        # Sessions that a hung probe could not delete expire quickly.
        "session_idle_timeout = 60",
        # The bench's other suites measure probes alone (listeners = none);
        # the listeners suite sets it.
        f"listeners = {listeners or 'none'}",
        "",
    ]
    for name, endpoint in targets:
        lines += [f"[target:{name}]", f"endpoint = {endpoint}", ""]
    path.write_text("\n".join(lines))
    return path


class FcmonProc:
    """`python -m fcmon run -c CONFIG` as the service would run it."""

    def __init__(self, procs: Procs, config: Path, port: int, name: str = "fcmon",
                 env: Optional[Dict[str, str]] = None):
        environ = {"MALLOC_ARENA_MAX": "2"}  # as the systemd unit sets it
        environ.update(env or {})
        self.port = port
        self.t_start = time.monotonic()
        self.proc = procs.start(name, [PYTHON, "-m", "fcmon", "run", "-c", str(config)], env=environ)

    def wait_listening(self, timeout: float = 60.0) -> float:
        return wait_http(self.port, "/-/healthy", timeout) - self.t_start

    def metrics(self, timeout: float = 60.0) -> str:
        status, body = http_get(self.port, "/metrics", timeout)
        if status != 200:
            raise BenchError(f"/metrics: HTTP {status}")
        return body.decode()

    def probe(self, target: str) -> str:
        status, body = http_get(self.port, f"/probe?target={target}", 30)
        if status != 200:
            raise BenchError(f"/probe?target={target}: HTTP {status}")
        return body.decode()
