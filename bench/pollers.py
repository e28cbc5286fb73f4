"""Page pollers: `n` keep-alive connections to fcmon, each asking for `path`
again as soon as the previous answer has been read in full (or, with
--hangup, sending the request and closing at once: work left behind by a
client that has gone). Runs as its own process so that the bench's scrapes
do not share its interpreter.

`python -m bench.pollers --port P --n 20 --path / [--gzip] [--hangup]`;
prints one JSON line of counts when it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from typing import Dict, Tuple

LOOPBACK = "127.0.0.1"
# Pollers connect from 127.0.3.1, 127.0.3.2, ... (PER_ADDRESS each): apart
# from the scraper's 127.0.0.1 and within fcmon's per-client limit, so what
# is measured is the pages' cost, not that limit.
PER_ADDRESS = 100


def _source(i: int) -> Tuple[str, int]:
    return (f"127.0.3.{i // PER_ADDRESS + 1}", 0)


async def _poll(port: int, path: str, gzip: bool, counts: Dict[str, int], stop: asyncio.Event,
                source: Tuple[str, int]) -> None:
    request = (f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
               + ("Accept-Encoding: gzip\r\n" if gzip else "") + "\r\n").encode()
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1 << 20, local_addr=source)
            while not stop.is_set():
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                left = length
                while left > 0:
                    chunk = await reader.read(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError("closed mid-body")
                    left -= len(chunk)
                key = f"status_{status}"
                counts[key] = counts.get(key, 0) + 1
                counts["bytes"] = counts.get("bytes", 0) + length
                if b"connection: close" in head.lower():
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] = counts.get("errors", 0) + 1
            await asyncio.sleep(0.1)
        finally:
            if writer is not None:
                writer.close()


async def _hangup(port: int, path: str, counts: Dict[str, int], stop: asyncio.Event,
                  source: Tuple[str, int]) -> None:
    """Send a request and close the connection without reading the answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode()
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=source)
            writer.write(request)
            await writer.drain()
            writer.close()
            counts["sent"] = counts.get("sent", 0) + 1
        except OSError:
            counts["errors"] = counts.get("errors", 0) + 1
        await asyncio.sleep(0.05)


async def _main(args: argparse.Namespace) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for i in range(args.n):
        if args.hangup:
            tasks.append(asyncio.ensure_future(_hangup(args.port, args.path, counts, stop, _source(i))))
        else:
            tasks.append(asyncio.ensure_future(_poll(args.port, args.path, args.gzip, counts, stop, _source(i))))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    print(json.dumps({"started": args.n}), flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pollers", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--path", default="/")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--hangup", action="store_true")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.n + 1000), hard))
    counts = asyncio.run(_main(args))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
