"""Name resolution inside the probe's deadline (fcmon/probe/resolver.py).

The hang is real: fcmon runs as a process in a mount namespace of its own
(`unshare -m`, root only) where /etc/resolv.conf is bind-mounted to a file
naming a loopback UDP "nameserver" of this test that reads every query and
never answers, so glibc's getaddrinfo blocks for its full retry schedule
(30 s x 3 attempts here). Names not in /etc/hosts hang; `localhost` still
resolves from /etc/hosts. Without root or unshare the test skips (fails
with CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from fcmon.emulator import Emulator
from fcmon.probe.resolver import RESOLVER_THREADS, Resolver, ResolveTimeout

from support import IN_CI, PKI, FcmonProcess, sample, scrape, write_config

SILENT_NAMESERVER = "127.83.91.7"


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A UDP socket on SILENT_NAMESERVER:53 that swallows every query."""
    why = None
    if os.geteuid() != 0:
        why = "needs root (a mount namespace and port 53)"
    elif shutil.which("unshare") is None:
        why = "needs unshare (util-linux)"
    sock = None
    if why is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((SILENT_NAMESERVER, 53))
        except OSError as exc:
            sock.close()
            why = f"cannot bind {SILENT_NAMESERVER}:53: {exc}"
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    assert sock is not None
    stop = threading.Event()

    def swallow() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                sock.recvfrom(4096)
            except OSError:
                pass

    reader = threading.Thread(target=swallow, daemon=True)
    reader.start()
    try:
        yield SILENT_NAMESERVER
    finally:
        stop.set()
        reader.join(2)
        sock.close()


def _with_resolv_conf(path: Path) -> List[str]:
    """A command prefix: run the rest with `path` as /etc/resolv.conf (own mount namespace)."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(path)]


def _target(test_pki: PKI, name: str, endpoint: str) -> str:
    return "\n".join([
        f"[target:{name}]", f"endpoint = {endpoint}", "username = ADMIN", "password = ADMIN",
        f"ca_file = {test_pki.ca_file}", f"client_cert_file = {test_pki.client.cert}",
        f"client_key_file = {test_pki.client.key}", "listeners = none", ""])


@pytest.mark.slow
def test_a_hung_resolver_is_reason_dns_within_the_deadline_and_neighbours_are_unaffected(
        tmp_path: Path, test_pki: PKI, emulator: Emulator, silent_nameserver: str) -> None:
    """More hung names than resolver threads, beside healthy targets on
    `localhost`: each hung probe fails with reason `dns` ("timed out") and
    ends within timeout + 1 s, `/probe` of one answers within that too, the
    healthy targets are probed every interval, SIGTERM stops it in time."""
    interval, timeout = 3.0, 2.0
    hung = RESOLVER_THREADS + 4
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {silent_nameserver}\noptions timeout:30 attempts:3\n")
    ok_url = emulator.url.replace("127.0.0.1", "localhost")
    config = write_config(tmp_path / "config.ini", "\n".join(
        ["[fcmon]", "listen = 127.0.0.1:0", f"interval = {interval:g}", f"timeout = {timeout:g}", ""]
        + [_target(test_pki, f"ok{i}", ok_url) for i in range(3)]
        + [_target(test_pki, f"hung{i:02d}", f"https://hung{i:02d}.fcmon-test.example:8443/api")
           for i in range(hung)]))
    with FcmonProcess("run", "-c", str(config), prefix=_with_resolv_conf(resolv)) as fcmon:
        url = fcmon.metrics_url()
        base = url.rsplit("/metrics", 1)[0]
        started = time.monotonic()
        # /probe of a hung name halfway through the window (every resolver
        # thread long stuck by then), not after it: the window stays 4
        # intervals + 1 s, the call's own seconds no longer add to it.
        time.sleep(2 * interval)
        session = requests.Session()
        session.trust_env = False
        t0 = time.monotonic()
        answer = session.get(base + "/probe?target=hung03", timeout=30)
        took = time.monotonic() - t0
        time.sleep(max(0.0, started + 4 * interval + 1.0 - time.monotonic()))
        text = scrape(url)
        ran = time.monotonic() - started
        t0 = time.monotonic()
        code = fcmon.stop()
        stop_took = time.monotonic() - t0
    log = fcmon.text()
    # /probe of a hung name: within its timeout + 1 s (cleanup grace), as a dns failure or a busy 503
    assert took <= timeout + 1.5, took
    assert answer.status_code in (200, 503), answer.status_code
    for i in range(hung):
        name = f"hung{i:02d}"
        assert (sample(text, "fcmon_probe_failures_total", target=name, stage="connect", reason="dns") or 0) >= 1, name
        duration = sample(text, "fcmon_probe_duration_seconds", target=name)
        assert duration is not None and duration <= timeout + 1.0, (name, duration)
    for i in range(3):
        name = f"ok{i}"
        assert sample(text, "fcmon_up", target=name) == 1, name
        # the first run at once, then every interval: at least one per interval of the run
        assert (sample(text, "fcmon_probes_total", target=name) or 0) >= int(ran // interval) - 1, name
        assert sample(text, "fcmon_probe_failures_total", target=name) is None, name
    assert re.search(r"probe failed at connect: dns \(cannot resolve host: name resolution timed out after", log), log
    stuck = [int(m) for m in re.findall(r"\((\d+) of \d+ threads stuck\)", log)]
    assert stuck and max(stuck) <= RESOLVER_THREADS, log
    assert code == 0
    assert stop_took <= timeout + 5.0, stop_took


def test_resolver_bounds_threads_and_answers_timeouts() -> None:
    """The pool's own bounds, with a getaddrinfo that blocks until released
    (the process test above hangs the real one): one thread per name however
    many callers, never more than max_threads, a caller gives up at its
    timeout with a message that says so, and a name resolved before is
    answered from its last good answer while every thread is stuck."""
    release = threading.Event()
    calls: List[str] = []

    def getaddrinfo(host, port, family=0, kind=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        calls.append(host)
        if host.startswith("hung"):
            release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    resolver = Resolver(max_threads=2, getaddrinfo=getaddrinfo, idle_seconds=1.0)
    assert resolver.resolve("good.example", 443, 0, socket.SOCK_STREAM, 1.0)[0][4] == ("127.0.0.1", 443)
    # many callers of one hung name: one lookup, one thread
    errors: List[BaseException] = []

    def ask(host: str) -> None:
        try:
            resolver.resolve(host, 443, 0, socket.SOCK_STREAM, 0.3)
        except ResolveTimeout as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=("hung-a",)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(errors) == 20 and calls.count("hung-a") == 1
    assert "name resolution timed out after 0.3 s" in str(errors[0])
    ask("hung-b")
    stats = resolver.stats()
    assert stats.threads == 2 and stats.stuck == 2
    # every thread stuck: a new name waits in the queue until its timeout ...
    t0 = time.monotonic()
    with pytest.raises(ResolveTimeout, match="all 2 resolver threads busy"):
        resolver.resolve("hung-c", 443, 0, socket.SOCK_STREAM, 0.3)
    assert time.monotonic() - t0 < 1.0
    assert resolver.stats().threads == 2
    # ... and a name that resolved before still gets its last good answer
    assert resolver.resolve("good.example", 443, 0, socket.SOCK_STREAM, 0.3)[0][4] == ("127.0.0.1", 443)
    # IP literals never need a thread
    assert resolver.resolve("127.0.0.1", 443, 0, socket.SOCK_STREAM, 0.3)[0][4] == ("127.0.0.1", 443)
    release.set()
    deadline = time.monotonic() + 5
    while resolver.stats().stuck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resolver.stats().stuck == 0
    # idle threads end
    while resolver.stats().threads and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    assert resolver.stats().threads == 0
