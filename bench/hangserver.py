"""A server that accepts and never answers: `python -m bench.hangserver`.

Accepts every TCP connection on 127.0.0.1, never sends a byte (so a TLS
client waits in its handshake), reads and discards whatever arrives, and
closes its end once the client has closed. Prints "listening on PORT".
One thread, epoll: thousands of held connections cost nothing.
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys


def main() -> int:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    accepted = 0
    while not stop:
        for key, _ in sel.select(timeout=0.5):
            if key.data is None:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    accepted += 1
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()  # type: ignore[union-attr]
    print(f"accepted {accepted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
