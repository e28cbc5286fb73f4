"""Waiting for a socket to become readable, whatever its descriptor number.

`select.select()` refuses descriptors above 1023 (ValueError), and fcmon
reaches them: the unit allows 16,384 descriptors and the front door keeps
up to 4,096 client connections open, so a listener check or an emulator
socket opened during a burst gets a high number. `poll()` has no such limit.
"""

from __future__ import annotations

import select
import socket
from typing import Union

_EVENTS = select.POLLIN | select.POLLPRI


def wait_readable(sock: Union[socket.socket, int], timeout: float) -> bool:
    """True when `sock` has data, an EOF or an error to read within
    `timeout` seconds (0: do not wait). Raises ValueError for a closed
    socket, like `select.select()`."""
    poller = select.poll()
    poller.register(sock, _EVENTS)
    return bool(poller.poll(max(timeout, 0.0) * 1000.0))
