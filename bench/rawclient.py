"""The raw reference client: `ssl` + `http.client`, the practical floor in Python.

One probe = createSession + listDatabases + deleteSession on one fresh TLS
connection, with an SSLContext built once. Run in its own process:

  python -m bench.rawclient --url URL --ca CA --cert CRT --key KEY rate --rate 20 --windows 3 --window 5
      probes at a steady rate; prints one JSON line per window:
      {"probes": N, "cpu": seconds, "wall": seconds, "failures": N}
  python -m bench.rawclient --client requests ... rate ...
      the same with a plain requests.Session per probe and a prebuilt SSL context
      (the issue's second reference row)
  python -m bench.rawclient ... serve
      reads "probe" lines on stdin, answers one JSON line each with the
      per-step wall times: {"connect": s, "create_session": s, "list_databases": s, "delete_session": s}
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
from typing import Dict
from urllib.parse import urlsplit

CREATE = json.dumps(
    {"api": "admin", "action": "createSession",
     "params": {"username": "ADMIN", "password": "ADMIN", "idleConnectionTimeoutSeconds": 60}},
    separators=(",", ":"),
).encode()
HEADERS = {"Content-Type": "application/json"}


def make_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _post(conn: http.client.HTTPSConnection, body: bytes) -> dict:
    conn.request("POST", "/api", body=body, headers=HEADERS)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    if data.get("errorCode") != 0:
        raise RuntimeError(f"errorCode {data.get('errorCode')}")
    return data


def probe(host: str, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> Dict[str, float]:
    clock = time.perf_counter
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    steps: Dict[str, float] = {}
    try:
        t = clock()
        conn.connect()
        t1 = clock()
        steps["connect"] = t1 - t
        created = _post(conn, CREATE)
        t2 = clock()
        steps["create_session"] = t2 - t1
        token = (created.get("result") or {}).get("authToken") or created.get("authToken")
        try:
            _post(conn, json.dumps({"api": "db", "action": "listDatabases", "authToken": token},
                                   separators=(",", ":")).encode())
            t3 = clock()
            steps["list_databases"] = t3 - t2
        finally:
            t3 = clock()
            _post(conn, json.dumps({"api": "admin", "action": "deleteSession", "authToken": token},
                                   separators=(",", ":")).encode())
            steps["delete_session"] = clock() - t3
    finally:
        conn.close()
    return steps


def requests_prober(url: str, ctx: ssl.SSLContext, ca: str):  # type: ignore[no-untyped-def]
    """A plain requests.Session per probe, the SSL context built once and handed to urllib3."""
    import requests
    from requests.adapters import HTTPAdapter

    class ContextAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["ssl_context"] = ctx
            return super().init_poolmanager(*args, **kwargs)

    def post(session, body: bytes) -> dict:  # type: ignore[no-untyped-def]
        data = session.post(url, data=body, headers=HEADERS, timeout=10).json()
        if data.get("errorCode") != 0:
            raise RuntimeError(f"errorCode {data.get('errorCode')}")
        return data

    def probe_requests(host: str, port: int, _ctx: ssl.SSLContext, timeout: float = 10.0) -> Dict[str, float]:
        with requests.Session() as session:
            session.trust_env = False
            session.verify = ca
            session.mount("https://", ContextAdapter())
            created = post(session, CREATE)
            token = (created.get("result") or {}).get("authToken") or created.get("authToken")
            try:
                post(session, json.dumps({"api": "db", "action": "listDatabases", "authToken": token},
                                         separators=(",", ":")).encode())
            finally:
                post(session, json.dumps({"api": "admin", "action": "deleteSession", "authToken": token},
                                         separators=(",", ":")).encode())
        return {}

    return probe_requests


def run_rate(host: str, port: int, ctx: ssl.SSLContext, rate: float, windows: int, window: float,
             warmup: float, probe=probe) -> None:  # type: ignore[no-untyped-def]
    """Probes at `rate` per second; one JSON line per window of `window` seconds."""
    period = 1.0 / rate
    print("started", flush=True)  # the bench lines its own windows up with this
    next_at = time.monotonic()
    end_warmup = next_at + warmup
    while time.monotonic() < end_warmup:
        probe(host, port, ctx)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    for _ in range(windows):
        n = failures = 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        end = wall0 + window
        while time.monotonic() < end:
            try:
                probe(host, port, ctx)
            except Exception:
                failures += 1
            n += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        print(json.dumps({"probes": n, "cpu": time.process_time() - cpu0,
                          "wall": time.monotonic() - wall0, "failures": failures}), flush=True)


def serve(host: str, port: int, ctx: ssl.SSLContext) -> None:
    for line in sys.stdin:
        if line.strip() != "probe":
            continue
        try:
            out = probe(host, port, ctx)
        except Exception as exc:  # reported, the bench decides
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rawclient")
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client", choices=("raw", "requests"), default="raw")
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--rate", type=float, default=20.0)
    r.add_argument("--windows", type=int, default=3)
    r.add_argument("--window", type=float, default=5.0)
    r.add_argument("--warmup", type=float, default=1.0)
    sub.add_parser("serve")
    args = ap.parse_args()
    parts = urlsplit(args.url)
    ctx = make_context(args.ca, args.cert, args.key)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    if args.mode == "rate":
        fn = probe if args.client == "raw" else requests_prober(args.url, ctx, args.ca)
        run_rate(host, port, ctx, args.rate, args.windows, args.window, args.warmup, fn)
    else:
        serve(host, port, ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
