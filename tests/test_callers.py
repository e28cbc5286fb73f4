"""A generated mix of hostile callers against `fcmon run` as a process.

hypothesis draws the endpoint ([web] TLS or not, basic auth or not) and a
mix of caller groups, each from a loopback address of its own (127.0.0.2
to 127.0.0.4; the scraper is 127.0.0.1): idle connections, slowloris
(a header byte every half second), slow readers of /metrics, page pollers
(/ and /api/v1/status), pipelined /probe calls, TLS connections that
stop after the handshake (or, on plain HTTP, after half a ClientHello),
and basic-auth guessers. Invariants on every case:

- the scraper on 127.0.0.1 gets /metrics every time, each within
  SCRAPE_BOUND (Prometheus' default scrape_timeout);
- RSS stays within RSS_BOUND_MB of its baseline during the mix and comes
  back within RSS_BACK_MB of it after the callers leave;
- FairCom logins (createSession on the emulator) at most one per
  `probe_reuse_window` for the one target, however many /probe calls the
  mix makes (plus the scheduled ones: none during the mix, the interval is
  60 s);
- SIGTERM with the callers still there ends fcmon within its documented
  bound (the probe timeout + a few seconds), exit 0, and no traceback.

`make test` runs a derandomized handful; `make chaos-callers` a long random
run (CALLER_EXAMPLES, CALLER_SEED) that prints the seed of a failure.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fcmon.emulator import Emulator

from support import PKI, FcmonProcess, target_section, wait_for

pytestmark = pytest.mark.slow

SCRAPE_BOUND = 10.0
RSS_BOUND_MB = 100
RSS_BACK_MB = 30
PROBE_TIMEOUT = 0.9
REUSE_WINDOW = 5.0  # [fcmon] probe_reuse_window's default
SIGTERM_BOUND = PROBE_TIMEOUT + 10.0
MIX_SECONDS = float(os.environ.get("CALLER_MIX_SECONDS", "3"))
PASSWORD = "scrape-Pa55-mix"
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# kind -> most connections (or threads) one group opens
KINDS: Dict[str, int] = {
    "idle": 200,
    "slowloris": 100,
    "slow_reader": 20,
    "page_poller": 3,
    "pipelined_probe": 3,
    "tls_idle": 100,
    "auth_guesser": 3,
}


class Group(NamedTuple):
    kind: str
    count: int
    source: str


class Mix(NamedTuple):
    tls: bool
    auth: bool
    groups: Tuple[Group, ...]


@st.composite
def mixes(draw: Callable) -> Mix:  # type: ignore[type-arg]
    groups = draw(st.lists(
        st.sampled_from(sorted(KINDS)).flatmap(lambda kind: st.builds(
            Group, st.just(kind), st.integers(1, KINDS[kind]), st.sampled_from(SOURCES))),
        min_size=1, max_size=5))
    return Mix(draw(st.booleans()), draw(st.booleans()), tuple(groups))


EVERY_KIND = Mix(True, True, tuple(Group(kind, n, SOURCES[i % len(SOURCES)])
                                   for i, (kind, n) in enumerate(sorted(KINDS.items()))))


@pytest.fixture(scope="module")
def emulator(test_pki: PKI) -> Iterator[Emulator]:
    with Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                  client_ca_file=test_pki.ca_file) as emu:
        yield emu


class Endpoint(NamedTuple):
    port: int
    tls: Optional[ssl.SSLContext]
    auth: bool


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _connect(ep: Endpoint, source: str, handshake: bool = True) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", ep.port), timeout=5, source_address=(source, 0))
    if ep.tls is not None and handshake:
        return ep.tls.wrap_socket(s, server_hostname="localhost")
    return s


def _request(path: str, password: Optional[str], close: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if password is not None:
        lines.append("Authorization: Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode())
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Callers:
    """Each group in a thread of its own until `stop()`; connections the
    server drops are opened again."""

    def __init__(self, ep: Endpoint, groups: Tuple[Group, ...]):
        self.ep = ep
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(g,), daemon=True) for g in groups]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _run(self, g: Group) -> None:
        try:
            getattr(self, "_" + g.kind)(g)
        except OSError:
            pass  # fcmon went away (SIGTERM): the caller stops

    def _held(self, g: Group, opened: Callable[[], socket.socket],
              tick: Callable[[socket.socket], None]) -> None:
        socks: List[socket.socket] = []
        try:
            while not self._stop.is_set():
                while len(socks) < g.count and not self._stop.is_set():
                    try:
                        socks.append(opened())
                    except OSError:
                        break  # refused or reset: try again next round
                for s in list(socks):
                    try:
                        tick(s)
                    except (OSError, ValueError):
                        s.close()
                        socks.remove(s)
                self._stop.wait(0.5)
        finally:
            for s in socks:
                s.close()

    def _idle(self, g: Group) -> None:
        self._held(g, lambda: _connect(self.ep, g.source, handshake=False), lambda s: None)

    def _tls_idle(self, g: Group) -> None:
        if self.ep.tls is not None:
            self._held(g, lambda: _connect(self.ep, g.source), lambda s: None)
            return
        # Plain HTTP: half a ClientHello, then nothing.
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40

        def opened() -> socket.socket:
            s = _connect(self.ep, g.source)
            s.sendall(hello)
            return s
        self._held(g, opened, lambda s: None)

    def _slowloris(self, g: Group) -> None:
        def opened() -> socket.socket:
            s = _connect(self.ep, g.source)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            return s

        def tick(s: socket.socket) -> None:
            s.sendall(b"X")
        self._held(g, opened, tick)

    def _slow_reader(self, g: Group) -> None:
        def opened() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((g.source, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", self.ep.port))
            if self.ep.tls is not None:
                s = self.ep.tls.wrap_socket(s, server_hostname="localhost")
            s.sendall(_request("/metrics", PASSWORD, close=False) * 3)
            s.setblocking(False)
            return s

        def tick(s: socket.socket) -> None:
            try:
                if s.recv(1024) == b"":
                    raise ConnectionResetError("closed")
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
        self._held(g, opened, tick)

    def _each(self, g: Group, one: Callable[[int], None]) -> None:
        def loop(i: int) -> None:
            while not self._stop.is_set():
                try:
                    one(i)
                except (OSError, ValueError):
                    self._stop.wait(0.1)
        workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(g.count)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _exchange(self, source: str, data: bytes) -> None:
        with _connect(self.ep, source) as s:
            s.sendall(data)
            while s.recv(65536):
                if self._stop.is_set():
                    return

    def _page_poller(self, g: Group) -> None:
        self._each(g, lambda i: self._exchange(g.source, _request(("/", "/api/v1/status")[i % 2], PASSWORD)))

    def _pipelined_probe(self, g: Group) -> None:
        self._each(g, lambda i: self._exchange(
            g.source, _request("/probe?target=t0", PASSWORD, close=False) * 19
            + _request("/probe?target=t0", PASSWORD)))

    def _auth_guesser(self, g: Group) -> None:
        self._each(g, lambda i: self._exchange(g.source, _request("/metrics", f"guess-{time.monotonic()}")))


def _config(tmp_path: Path, test_pki: PKI, emu: Emulator, mix: Mix) -> Path:
    web = ""
    if mix.tls:
        web += f"tls_cert_file = {test_pki.server.cert}\ntls_key_file = {test_pki.server.key}\n"
    if mix.auth:
        (tmp_path / "web.password").write_text(PASSWORD + "\n")
        web += "basic_auth_username = prometheus\nbasic_auth_password_file = web.password\n"
    config = tmp_path / "config.ini"
    config.write_text(f"[fcmon]\nlisten = 127.0.0.1:0\ninterval = 60\ntimeout = {PROBE_TIMEOUT}\n"
                      + (f"[web]\n{web}" if web else "") + target_section(test_pki, emu, name="t0"))
    return config


def run_mix(tmp_path: Path, test_pki: PKI, emu: Emulator, mix: Mix) -> None:
    with FcmonProcess("run", "-c", str(_config(tmp_path, test_pki, emu, mix))) as fc:
        url = fc.metrics_url().replace("127.0.0.1", "localhost")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        scraper = requests.Session()
        scraper.trust_env = False
        scraper.verify = str(test_pki.ca_file)
        if mix.auth:
            scraper.auth = ("prometheus", PASSWORD)
        ctx = ssl.create_default_context(cafile=str(test_pki.ca_file)) if mix.tls else None
        ep = Endpoint(port, ctx, mix.auth)
        wait_for(lambda: scraper.get(url, timeout=10).status_code == 200)
        for _ in range(5):
            scraper.get(url, timeout=10)
        baseline = _rss_kb(fc.proc.pid)
        logins0, mix_started = emu.sessions_created(), time.monotonic()
        callers = Callers(ep, mix.groups)
        callers.start()
        peak, took = baseline, []
        end = time.monotonic() + MIX_SECONDS
        try:
            while time.monotonic() < end:
                started = time.monotonic()
                # A new connection each time, as a scraper after its keep-alive ended.
                scraper.close()
                r = scraper.get(url, timeout=SCRAPE_BOUND)
                took.append(time.monotonic() - started)
                assert r.status_code == 200, (mix, r.status_code)
                peak = max(peak, _rss_kb(fc.proc.pid))
                time.sleep(0.3)
        finally:
            callers.stop()
        assert max(took) <= SCRAPE_BOUND, (mix, took)
        assert peak - baseline <= RSS_BOUND_MB * 1024, (mix, baseline, peak)
        back = wait_for(lambda: _rss_kb(fc.proc.pid) <= baseline + RSS_BACK_MB * 1024, timeout=30)
        assert back, (mix, baseline, _rss_kb(fc.proc.pid))
        # SIGTERM with the callers back at it.
        callers = Callers(ep, mix.groups)
        callers.start()
        time.sleep(0.5)
        started = time.monotonic()
        try:
            assert fc.stop(timeout=SIGTERM_BOUND + 5) == 0
            assert time.monotonic() - started <= SIGTERM_BOUND, mix
        finally:
            callers.stop()
        logins = emu.sessions_created() - logins0
        # One login per window at most (a window that starts just before the
        # mix and one cut by SIGTERM count whole).
        assert logins <= (time.monotonic() - mix_started) / REUSE_WINDOW + 2, (mix, logins)
        print(f"\n{mix}: scrapes {len(took)}, slowest {max(took):.2f} s; RSS {baseline // 1024} MB, "
              f"peak {peak // 1024} MB; SIGTERM {time.monotonic() - started:.1f} s; {logins} FairCom logins")
    text = fc.text()
    assert "Traceback" not in text, text[text.index("Traceback") - 300:][:4000]
    assert PASSWORD not in text


# `make test`: a derandomized handful (and every kind at once); `make
# chaos-callers`: a long random run from the seed the Makefile prints.
CALLER_EXAMPLES = int(os.environ.get("CALLER_EXAMPLES", "0") or 0)
_settings = settings(max_examples=CALLER_EXAMPLES or 2, derandomize=not CALLER_EXAMPLES, deadline=None,
                     database=None, print_blob=True, suppress_health_check=list(HealthCheck))


@_settings
@given(mix=mixes())
@example(mix=EVERY_KIND)
def test_caller_mix_keeps_scrapes_answered(mix: Mix, tmp_path_factory: pytest.TempPathFactory,
                                           test_pki: PKI, emulator: Emulator) -> None:
    run_mix(tmp_path_factory.mktemp("mix"), test_pki, emulator, mix)
