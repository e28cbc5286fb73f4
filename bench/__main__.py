"""`python -m bench [--only cpu,fidelity,startup,scale,memory,scrape,hostile,listeners,starve] [--quick]` (or `make bench`).

Writes bench/results/latest.json and latest.md. Every process it starts is
stopped on the way out, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

from . import report, suites
from .procs import ROOT, Procs, machine_facts, make_pki

SUITES = ("cpu", "fidelity", "startup", "scale", "memory", "scrape", "hostile", "listeners", "starve")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f" (load average at its end {one:.2f}, 5 min {five:.2f})"


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SUITES),
                    help=f"comma-separated subset of {','.join(SUITES)} (default: all). memory and scrape "
                         "come from the largest (long) scale step")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds and samples, a 1.5-minute long step: a smoke run, not the goals' conditions")
    ap.add_argument("--scale-targets", default="100,1000,3000", help="scale steps (default 100,1000,3000)")
    ap.add_argument("--long-minutes", type=float, help="length of the largest scale step (default 10; --quick 1.5)")
    ap.add_argument("--scrapes", type=int, help="scrapes in the burst (default 20; --quick 5)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SUITES)
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    sizes = sorted(int(x) for x in args.scale_targets.split(","))
    long_minutes = args.long_minutes if args.long_minutes is not None else (1.5 if args.quick else 10.0)
    scrapes = args.scrapes if args.scrapes is not None else (5 if args.quick else 20)

    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[bench {time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    results: Dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "only": sorted(only), "machine": machine_facts(), "durations": [], "notes": [],
    }
    log(f"machine: {results['machine']}")
    work = Path(tempfile.mkdtemp(prefix="fcmon-bench-"))
    code = 0
    try:
        with Procs() as procs:
            ctx = suites.Ctx(procs=procs, pki=make_pki(work / "pki"), work=work, quick=args.quick, log=log)
            runs = [
                ("cpu", "cpu" in only, lambda: suites.suite_cpu(ctx)),
                ("fidelity", "fidelity" in only, lambda: suites.suite_fidelity(ctx)),
                ("startup", "startup" in only, lambda: suites.suite_startup(ctx)),
                ("hostile", "hostile" in only, lambda: suites.suite_hostile(ctx)),
                ("listeners", "listeners" in only, lambda: suites.suite_listeners(ctx)),
                ("starve", "starve" in only, lambda: suites.suite_starve(ctx)),
            ]
            for name, wanted, fn in runs:
                if not wanted:
                    continue
                t0 = time.monotonic()
                try:
                    results[name] = fn()
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    log(f"{name} failed: {exc}\n{traceback.format_exc()}")
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    code = 1
                results["durations"].append(f"{name}: {time.monotonic() - t0:.0f} s{_load()}")
            if ctx._emulator is not None:
                procs.stop(ctx._emulator.proc)
                ctx._emulator = None

            long_wanted = bool(only & {"scale", "memory", "scrape"})
            if long_wanted:
                run_sizes = sizes if "scale" in only else [sizes[-1]]
                long_minutes_eff = long_minutes
                t0 = time.monotonic()
                try:
                    results["scale"] = suites.suite_scale(ctx, run_sizes, long_minutes_eff,
                                                          scrapes if long_wanted else 0)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    log(f"scale failed: {exc}\n{traceback.format_exc()}")
                    results["scale"] = {"error": f"{type(exc).__name__}: {exc}", "steps": []}
                    code = 1
                results["durations"].append(
                    f"scale steps {', '.join(map(str, run_sizes))} targets: {time.monotonic() - t0:.0f} s "
                    f"(the largest for {long_minutes_eff:g} min, the others 45 s each){_load()}")
            results["notes"] += ctx.notes
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}): processes stopped, writing what was measured")
        results["notes"].append(f"interrupted: {exc}")
        code = 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.monotonic() - t_start
    results["loadavg_at_end"] = list(os.getloadavg())
    results["durations"].insert(0, f"total: {results['total_s']:.0f} s")
    start_load = results["machine"]["loadavg_at_start"][0]
    if start_load > (os.cpu_count() or 1) / 2:
        results["notes"].append(
            f"load average {start_load:.1f} on {os.cpu_count()} CPUs when the bench started (other work on the "
            "machine): absolute figures may be inflated; compare the side-by-side ratios, or re-run")
    results["notes"].append(
        "the load average at the end includes the bench's own processes (the 3,000-target step runs "
        "hundreds of fcmon threads plus the emulator); hypervisor steal is given per suite")
    results["durations"] += [
        "cpu: the clients run at the same time against one emulator, each at the same rate, measured over "
        "the same windows (phase 1: raw, fcmon daemon, blackbox_exporter; phase 2: raw, plain requests, fcmon's "
        "probe loop); fcmon warmed up one interval first; CPU from /proc/PID/stat (raw, requests and probe "
        "loop: time.process_time in their own process); ratio = median of the per-window ratios",
        "startup: fcmon run with 100 healthy targets at a 30 s interval, from exec to the first 200 of "
        "/-/ready (polled every 5 ms)",
        "hostile: fcmon run with 500 healthy targets (30 s interval); 3,000 connections that send a request "
        "line then a header byte a second, each one fcmon drops replaced at once, for 45 s; /metrics scraped "
        "every 2 s for 10 s before, during (after a 5 s ramp) and 15 s after the attack; then page pollers "
        "(bench/pollers.py: keep-alive clients asking for / again as soon as they have read it): fcmon run "
        "with 3,000 targets (10 healthy, the others refusing connections), /metrics (gzip) scraped every "
        "0.5 s for 20 s idle and with 20 pollers; then a fresh process with 3,000 pollers for 20 s: peak "
        "RSS, and the seconds from SIGTERM to its exit",
        "scale: fcmon run with N targets (every tenth pointing at a TCP server that accepts and never "
        "answers), interval 30 s, timeout 10 s; lateness from fcmon_probe_start_lateness_seconds; "
        "missed = runs due by the schedule (first round 5 ms apart, then each target's phase; counted from when /-/healthy first answered) minus probes run",
    ]
    report.write(results, args.out)
    md = (args.out / "latest.md").read_text()
    print(md)
    log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    failed = [r for r in results.get("rows", []) if r["pass"] is False]
    if failed:
        log(f"{len(failed)} goal(s) missed (the report says which); exit code reflects only errors")
    return code


if __name__ == "__main__":
    sys.exit(main())
