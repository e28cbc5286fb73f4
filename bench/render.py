"""The /metrics renderer in-process: `python -m bench.render [--targets 3000] [--repeat 20]`.

A store of N targets in the scale bench's mix (90% healthy with four API
calls, four certificates and a session census; 10% failing with a
timeout, as its hanging targets do), with the text renderer installed.
Prints one JSON line with the medians of `--repeat` rounds (wall time,
and CPU time of the thread, `_cpu_s`, steadier on a busy machine) of:
- `render_all_s`: every target rendered once (what the recording threads
  spend, spread over an interval, when every target was probed);
- `scrape_s`: one /metrics body built and read block by block (what a
  scrape costs beyond HTTP: bench row 5 measures it through the daemon).
No network, no daemon: for comparing two versions of the renderer side by
side on the same machine state (run them alternately).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.render")
    ap.add_argument("--targets", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    from prometheus_client import CollectorRegistry

    from fcmon.config import TargetConfig
    from fcmon.export.exposition import TextRenderer, render_target
    from fcmon.export.metrics import MetricsStore
    from fcmon.probe.result import CallResult, CertInfo, Failure, ProbeResult, ServerInfo, SessionCensus

    now = time.time()
    shared = (CertInfo("chain", "CN=fcmon bench CA", "2b", now + 3650 * 86400),
              CertInfo("client", "CN=ADMIN", "3c", now + 365 * 86400),
              CertInfo("ca", "CN=fcmon bench CA", "2b", now + 3650 * 86400))
    names = [f"bench-{i:05d}" for i in range(args.targets)]
    store = MetricsStore()
    store.set_targets([TargetConfig(name=n, endpoint=f"https://127.0.0.1:{20000 + i}/api", username="ADMIN",
                                    password="x") for i, n in enumerate(names)])
    for i, name in enumerate(names):
        for k in range(3):  # a few rounds: histograms with counts in several buckets
            ended = now - 30 * k
            if i % 10 == 9:
                result = ProbeResult(name, ended - 2.0, ended, 2.0, Failure("connect", "timeout", "timed out"),
                                     steps=(("connect", 2.0),))
            else:
                result = ProbeResult(
                    name, ended - 0.02, ended, 0.02 + 0.001 * k,
                    steps=(("connect", 0.004), ("create_session", 0.006), ("census", 0.004),
                           ("list_databases", 0.005), ("delete_session", 0.005)),
                    calls=(CallResult("createSession", 0.006 * (k + 1), 0), CallResult("describeSessions", 0.004, 0),
                           CallResult("listDatabases", 0.005, 0), CallResult("deleteSession", 0.05 * k, 0)),
                    databases=3,
                    certs=(CertInfo("server", "CN=127.0.0.1", f"{i:x}", now + 300 * 86400),) + shared,
                    tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384",
                    server=ServerInfo("FairCom EDGE 4.1", "bench-host", None),
                    census=SessionCensus(2, 1, 50, 3.5))
            store.record(result)
    renderer = TextRenderer(store, CollectorRegistry())
    states = store.snapshot().targets

    def render_all() -> None:
        for name, state in states.items():
            render_target(name, state)

    def scrape() -> int:
        return sum(map(len, renderer.body()))

    size = scrape()
    lines = renderer.render().count(b"\n")
    out = {"targets": args.targets, "bytes": size, "lines": lines, "repeat": args.repeat}
    for key, fn in (("render_all", render_all), ("scrape", scrape)):
        wall, cpu = [], []
        for _ in range(args.repeat):
            gc.collect()
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[key + "_s"] = round(statistics.median(wall), 4)
        out[key + "_cpu_s"] = round(statistics.median(cpu), 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
