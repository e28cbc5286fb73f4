"""TLS for the HTTP front door over memory BIOs, with small buffers.

asyncio's own TLS layer (`loop.connect_accepted_socket(ssl=...)`) gives
every connection a 256 KiB read buffer the moment it is accepted, before a
byte of the handshake arrives: 4,000 idle TCP connections to a TLS endpoint
held 1.3 GB. Here a connection costs only its plain transport until the
client's first bytes arrive; then an `ssl.SSLObject` over two
`ssl.MemoryBIO`s does the handshake and the record layer, reading
plaintext in `READ_SIZE` pieces. OpenSSL releases its own record buffers
while a connection is idle (CPython sets SSL_MODE_RELEASE_BUFFERS), so an
idle TLS connection costs a few KB (docs/design-notes.md#asyncio-tls-buffers).

`TLSLayer` is the plain connection's protocol and, to the HTTP protocol
above it, its transport: that protocol sees `connection_made` once the
handshake is done, plaintext in `data_received`, and writes plaintext.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional

# Plaintext handed up per SSLObject.read(): one TLS record at most.
READ_SIZE = 16 * 1024
# Handshakes in progress at most (OpenSSL holds about 50 KB for each): a
# connection beyond waits, its reading paused, for a slot.
MAX_HANDSHAKES = 1024
# What a client may send before its handshake has a slot: a ClientHello
# record (16 KiB and its header) at most.
MAX_EARLY_BYTES = 16 * 1024 + 5 + 256


class HandshakeGate:
    """Slots for handshakes in progress, `limit` at most. A freed slot goes
    to the waiting connection whose client (key) has the fewest handshakes
    in progress, so one address holding many slots cannot keep a new client
    (Prometheus) waiting: it gets the next slot that frees."""

    def __init__(self, limit: int = MAX_HANDSHAKES):
        self.limit = limit
        self.busy = 0
        self._by_key: Dict[str, int] = {}
        self._waiting: Dict[str, Deque["TLSLayer"]] = {}

    def acquire(self, layer: "TLSLayer") -> bool:
        """A slot for `layer` now (True), or it waits (False) until `start()` is called."""
        if self.busy < self.limit:
            self._take(layer.key)
            return True
        self._waiting.setdefault(layer.key, deque()).append(layer)
        return False

    def release(self, key: str) -> None:
        self.busy -= 1
        left = self._by_key.get(key, 0) - 1
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)
        if self._waiting and self.busy < self.limit:
            nxt = min(self._waiting, key=lambda k: self._by_key.get(k, 0))
            queue = self._waiting[nxt]
            layer = queue.popleft()
            if not queue:
                del self._waiting[nxt]
            self._take(nxt)
            asyncio.get_running_loop().call_soon(layer.start)

    def forget(self, layer: "TLSLayer") -> None:
        """A waiting connection went away."""
        queue = self._waiting.get(layer.key)
        if queue is not None and layer in queue:
            queue.remove(layer)
            if not queue:
                del self._waiting[layer.key]

    def _take(self, key: str) -> None:
        self.busy += 1
        self._by_key[key] = self._by_key.get(key, 0) + 1


class TLSLayer(asyncio.Protocol):
    """Server-side TLS between a plain transport and `inner`.

    `on_failure(exc)` is called once when the handshake fails or does not
    complete within `handshake_timeout`; the connection is then aborted
    (and `inner.connection_lost` follows)."""

    def __init__(self, context: ssl.SSLContext, inner: asyncio.Protocol, handshake_timeout: float,
                 on_failure: Callable[[BaseException], None] = lambda exc: None,
                 gate: Optional[HandshakeGate] = None, key: str = ""):
        self._context = context
        self._inner = inner
        self._gate = gate
        self.key = key  # the client, for the gate's fair share
        self._slot = False  # holds a gate slot
        self._early: Optional[bytes] = None  # what came while waiting for a slot
        self._handshake_timeout = handshake_timeout
        self._on_failure = on_failure
        self._raw: Any = None
        self._incoming: Optional[ssl.MemoryBIO] = None
        self._outgoing: Optional[ssl.MemoryBIO] = None
        self._ssl: Optional[ssl.SSLObject] = None
        self._ready = False  # handshake done: inner knows us as its transport
        self._closing = False
        self._timer: Optional[asyncio.TimerHandle] = None

    # -- the plain connection's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, self._timed_out)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._cancel_timer()
        self._early = None
        if self._gate is not None:
            self._gate.forget(self)
        self._free_slot()
        self._ssl = self._incoming = self._outgoing = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing and not self._ready:
            return
        if self._early is not None:  # still waiting for a slot
            self._early += data
            if len(self._early) > MAX_EARLY_BYTES:
                self._fail(ssl.SSLError("more than a ClientHello before the handshake"))
            return
        if self._ssl is None:
            # Only now: a connection that never speaks costs no TLS state.
            if self._gate is not None and not self._slot:
                if not self._gate.acquire(self):
                    self._early = bytes(data)
                    self._raw.pause_reading()
                    # The wait has a deadline of its own; the handshake gets
                    # its whole time once it has a slot.
                    self._arm_timer()
                    if len(self._early) > MAX_EARLY_BYTES:
                        self._fail(ssl.SSLError("more than a ClientHello before the handshake"))
                    return
                self._slot = True
            self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._ssl = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        assert self._incoming is not None
        self._incoming.write(data)
        if not self._ready:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._flush()  # the alert, if any
                self._fail(exc)
                return
            self._cancel_timer()
            self._flush()  # the server's last flight (and TLS 1.3 tickets)
            self._free_slot()
            self._ready = True
            self._inner.connection_made(self)
        self._read_plaintext()

    def eof_received(self) -> bool:
        if self._ready:
            self._inner.eof_received()
        return False  # TLS cannot be half-closed: the transport closes

    def pause_writing(self) -> None:
        if self._ready:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self._inner.resume_writing()

    def _read_plaintext(self) -> None:
        while self._ssl is not None and not self._raw.is_closing():
            try:
                chunk = self._ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client is done
                self._flush()
                if not self._inner.eof_received():
                    self.close()
                return
            except (ssl.SSLError, OSError):
                self._raw.abort()
                return
            if not chunk:
                break
            self._inner.data_received(chunk)
        self._flush()  # what reading made OpenSSL want to say (key updates)

    def _flush(self) -> None:
        if self._outgoing is not None and self._outgoing.pending:
            self._raw.write(self._outgoing.read())

    def start(self) -> None:
        """The gate gave this waiting connection its slot."""
        self._slot = True
        early, self._early = self._early, None
        if self._closing or self._raw is None or self._raw.is_closing() or early is None:
            self._free_slot()
            return
        self._arm_timer()
        self._raw.resume_reading()
        self.data_received(early)

    def _free_slot(self) -> None:
        if self._slot and self._gate is not None:
            self._slot = False
            self._gate.release(self.key)

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        self._free_slot()
        self._closing = True
        try:
            self._on_failure(exc)
        finally:
            self._raw.abort()

    def _timed_out(self) -> None:
        self._timer = None
        if not self._ready:
            waited = " (waiting for a handshake slot)" if self._early is not None else ""
            self._fail(TimeoutError(f"TLS handshake not done within {self._handshake_timeout:.0f} s{waited}"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the transport the inner protocol writes to

    def write(self, data: Any) -> None:
        if self._ssl is None or self._closing:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[self._ssl.write(view):]
        except (ssl.SSLError, OSError):
            self._raw.abort()
            return
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._ssl is not None and self._ready:
            try:
                self._ssl.unwrap()  # our close_notify; the client's is not awaited
            except (ssl.SSLError, OSError):
                pass
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS cannot be half-closed")

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        self._raw.set_write_buffer_limits(high=high, low=low)

    def get_write_buffer_size(self) -> int:
        return int(self._raw.get_write_buffer_size())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":
            return self._context
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert() if self._ssl is not None and self._ready else default
        if name == "cipher":
            return self._ssl.cipher() if self._ssl is not None and self._ready else default
        return self._raw.get_extra_info(name, default)
