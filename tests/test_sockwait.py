"""Descriptors above 1023: select() refuses them, and a busy fcmon has them
(the unit allows 16,384 descriptors, the front door up to 4,096 clients).
Everything that waits for a socket must work there: the listener check's
TLS 1.3 verdict, and the emulator's listeners."""

from __future__ import annotations

import os
import resource
import socket
from typing import Iterator, List

import pytest

from fcmon.emulator import Emulator, ListenerSpec
from fcmon.probe.listeners import ListenerChecker
from fcmon.probe.run import Prober
from fcmon.probe.sockwait import wait_readable
from support import PKI, make_target

HIGH = 1100


@pytest.fixture
def high_descriptors() -> Iterator[List[int]]:
    """Fills the descriptor table up to HIGH, so what is opened next gets a
    number select() cannot take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HIGH + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, HIGH + 500), hard))
    fillers: List[int] = []
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        while devnull < HIGH and (not fillers or fillers[-1] < HIGH):
            fillers.append(os.dup(devnull))
        yield fillers
    finally:
        for fd in fillers:
            os.close(fd)
        os.close(devnull)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_wait_readable_beyond_select_limit(high_descriptors: List[int]) -> None:
    a, b = socket.socketpair()
    with a, b:
        assert a.fileno() > 1023
        assert not wait_readable(a, 0)
        b.send(b"x")
        assert wait_readable(a, 5)
        assert a.recv(1) == b"x"
        b.close()
        assert wait_readable(a, 5)  # EOF is readable
        assert a.recv(1) == b""


def test_closed_socket_raises_like_select() -> None:
    a, b = socket.socketpair()
    b.close()
    a.close()
    with pytest.raises(ValueError):
        wait_readable(a, 0)


def test_listener_check_and_emulator_listeners_beyond_select_limit(
        test_pki: PKI, high_descriptors: List[int]) -> None:
    listeners = [
        ListenerSpec("mqtts8883", "mqtts", test_pki.server.cert, test_pki.server.key),
        ListenerSpec("mqttwss9002", "mqttwss", test_pki.server.cert, test_pki.server.key,
                     client_ca_file=test_pki.ca_file),
    ]
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file,
                  listeners=listeners) as emu:
        r = ListenerChecker(Prober()).run(make_target(test_pki, emu, timeout=3.0))
    assert r is not None and r.discovery is True
    assert {x.listener.name: (x.up, x.reason) for x in r.results} == {
        "mqtts8883": (True, None), "mqttwss9002": (True, None)}
