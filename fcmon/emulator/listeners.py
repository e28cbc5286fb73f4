"""Extra listeners of the emulator: what `listServices` names besides the API.

A FairCom server runs MQTT over TLS (8883), MQTT over secure WebSockets
(9002) and more next to its HTTPS API, each with its own certificate. Here
each is a TCP listener on its own port with its own certificate (and, if
given, its own client-certificate CA) that completes the TLS handshake and
then waits for the client to go, speaking no MQTT: fcmon's listener check
sends no application byte. A plain protocol (mqtt, http) accepts and
closes, so a test can prove it was never connected to.

Each listener has a mode, switchable while it runs:

- ``ok``: handshake, then wait for the client to close;
- ``hang``: accept and never answer the ClientHello;
- ``reset``: accept and reset the connection (RST);
- ``disabled``: listed by listServices with ``enabled: false``, still
  listening and handshaking, so a check that did not skip it would show.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ..probe.sockwait import wait_readable
from .tlscontext import server_ssl_context

log = logging.getLogger(__name__)

MODES = ("ok", "hang", "reset", "disabled")
TLS_PROTOCOLS = ("https", "mqtts", "wss", "mqttwss")


@dataclass(frozen=True)
class ListenerSpec:
    name: str  # serviceName, e.g. mqtts8883
    protocol: str  # mqtts, mqttwss, https, wss; or a plain one (mqtt, http, mqttws)
    cert_file: Optional[Path] = None  # TLS protocols: this listener's own certificate
    key_file: Optional[Path] = None
    client_ca_file: Optional[Path] = None  # client certificates required when given
    mode: str = "ok"
    port: int = 0  # 0: a free port
    description: str = ""
    tls_max_version: Optional[ssl.TLSVersion] = None  # TLSv1_2: client certificates judged in the handshake

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"listener {self.name}: mode must be one of {', '.join(MODES)}")
        if self.protocol in TLS_PROTOCOLS and self.cert_file is None:
            raise ValueError(f"listener {self.name}: a {self.protocol} listener needs a certificate")


class ExtraListener:
    """One listener on loopback; `connections` counts the TCP connections accepted."""

    def __init__(self, spec: ListenerSpec, host: str, handshake_timeout: float = 10.0,
                 idle_timeout: float = 30.0) -> None:
        self.spec = spec
        self.mode = spec.mode
        self.connections = 0
        self.handshakes = 0  # completed TLS handshakes
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._ctx: Optional[ssl.SSLContext] = None
        if spec.protocol in TLS_PROTOCOLS:
            self._ctx = server_ssl_context(spec.cert_file, spec.key_file,  # type: ignore[arg-type]
                                           spec.client_ca_file, spec.tls_max_version)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, spec.port))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._live: Set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name=f"emulator-listener:{self.port}",
                                        daemon=True)
        self._thread.start()

    @property
    def tls(self) -> bool:
        return self._ctx is not None

    def service(self) -> Dict[str, Any]:
        """This listener as listServices describes it (no `tls` key: no token)."""
        return {
            "serviceName": self.spec.name,
            "description": self.spec.description or f"{self.spec.protocol} listener",
            "enabled": self.mode != "disabled",
            "port": str(self.port),  # FairCom sends the port as a string
            "protocol": self.spec.protocol,
        }

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        log.info("listener %s: mode %s", self.spec.name, mode)

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            live = list(self._live)
        for conn in live:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass
        self._thread.join(timeout=2.0)

    def live_connections(self) -> int:
        with self._lock:
            return len(self._live)

    # -- serving

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable = wait_readable(self._sock, 0.1)
                if not readable:
                    continue
                conn, addr = self._sock.accept()
            except (OSError, ValueError):
                if self._stopping.is_set():
                    return
                continue
            with self._lock:
                self.connections += 1
                self._live.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name=f"emulator-listener-conn:{self.port}").start()

    def _serve(self, conn: socket.socket) -> None:
        tracked: List[socket.socket] = [conn]
        try:
            mode = self.mode
            if mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if mode == "hang":
                self._wait_for_close(conn)
                return
            if self._ctx is None:
                return  # a plain protocol: accepted and closed, nothing spoken
            conn.settimeout(self._handshake_timeout)
            tls = self._ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            tracked.append(tls)
            with self._lock:
                self._live.add(tls)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("listener %s: handshake failed: %s", self.spec.name, exc)
                return
            with self._lock:
                self.handshakes += 1
            # Speak nothing: wait for the client's close_notify, EOF or silence.
            tls.settimeout(self._idle_timeout)
            try:
                while not self._stopping.is_set() and tls.recv(4096):
                    pass
            except (ssl.SSLError, OSError):
                pass
        finally:
            with self._lock:
                for s in tracked:
                    self._live.discard(s)
            for s in reversed(tracked):
                try:
                    s.close()
                except OSError:
                    pass

    def _wait_for_close(self, conn: socket.socket) -> None:
        """Never answer; leave once the client has gone (or at stop)."""
        while not self._stopping.is_set():
            try:
                readable = wait_readable(conn, 0.25)
                if readable and conn.recv(65536) == b"":
                    return
            except (OSError, ValueError):
                return
