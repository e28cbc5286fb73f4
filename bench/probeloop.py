"""fcmon's probe path without the daemon: `python -m bench.probeloop -c CONFIG ...`.

Prober.probe + MetricsStore.record for the first target of CONFIG, in one
thread at a steady rate; one JSON line per window, as bench.rawclient prints.
This splits the daemon's CPU per probe into "the probe" and "the machinery
around it" (scheduler, thread pool, deadline thread, web server).
With --profile FILE it writes cProfile stats (CPU time of this thread) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.probeloop")
    ap.add_argument("-c", "--config", required=True, type=Path)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=10, help="probes before measuring")
    ap.add_argument("--warmup-seconds", type=float, default=0.0,
                    help="then keep probing at the rate until this many seconds after start")
    ap.add_argument("--profile", type=Path, help="write cProfile stats (thread CPU time) here")
    ap.add_argument("--profile-probes", type=int, default=300)
    args = ap.parse_args()
    t_begin = time.monotonic()

    from fcmon.config import load_config
    from fcmon.export.metrics import MetricsStore
    from fcmon.probe.run import Prober

    config = load_config(args.config)
    target = config.targets[0]
    prober = Prober()
    store = MetricsStore()
    store.set_targets([target])
    for _ in range(args.warmup):
        store.record(prober.probe(target))

    if args.profile is not None:
        import cProfile

        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        for _ in range(args.profile_probes):
            store.record(prober.probe(target))
        prof.disable()
        prof.dump_stats(str(args.profile))
        print(json.dumps({"profiled": args.profile_probes}), flush=True)
        return 0

    period = 1.0 / args.rate
    next_at = time.monotonic()
    while time.monotonic() < t_begin + args.warmup_seconds:
        store.record(prober.probe(target))
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    for _ in range(args.windows):
        n = failures = 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        while time.monotonic() < wall0 + args.window:
            result = prober.probe(target)
            store.record(result)
            failures += 0 if result.up else 1
            n += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        print(json.dumps({"probes": n, "cpu": time.process_time() - cpu0,
                          "wall": time.monotonic() - wall0, "failures": failures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
