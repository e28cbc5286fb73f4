"""The goals of the issue, one function per suite. Each returns plain data for the report."""

from __future__ import annotations

import gzip
import json
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fcmon.probe.run import CLEANUP_GRACE
from fcmon.service.scheduler import first_round_offset

from . import blackbox
from .procs import (
    LOOPBACK,
    PYTHON,
    BenchError,
    EmulatorProc,
    FcmonProc,
    Pki,
    Procs,
    fcmon_config,
    free_port,
    wait_http,
    histogram_quantile,
    http_get,
    metric_sum,
    samples,
    steal_seconds,
    thread_count,
)

LATENESS = "fcmon_probe_start_lateness_seconds"
SCALE_PER_SERVER = 64
MB = 1024 * 1024


@dataclass
class Ctx:
    procs: Procs
    pki: Pki
    work: Path
    quick: bool
    log: Callable[[str], None]
    _emulator: Optional[EmulatorProc] = None
    _hang_port: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    def emulator(self) -> EmulatorProc:
        if self._emulator is None or not self._emulator.proc.alive():
            self._emulator = EmulatorProc(self.procs, self.pki)
            self.log(f"emulator (pid {self._emulator.proc.pid}) on {self._emulator.url}")
        return self._emulator

    def fresh_emulator(self, name: str) -> EmulatorProc:
        emu = EmulatorProc(self.procs, self.pki, name=name)
        self.log(f"{name} (pid {emu.proc.pid}) on {emu.url}")
        return emu

    def hang_port(self) -> int:
        if self._hang_port is None:
            proc = self.procs.start("hangserver", [PYTHON, "-m", "bench.hangserver"])
            self._hang_port = int(proc.wait_for_line(r"listening on (\d+)", 20).group(1))
            self.log(f"hanging server (pid {proc.pid}) on {LOOPBACK}:{self._hang_port}")
        return self._hang_port


def _median(xs: Sequence[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def _client_cmd(emu: EmulatorProc, p: Pki, client: str, *mode: str) -> List[str]:
    return [PYTHON, "-m", "bench.rawclient", "--client", client, "--url", emu.url,
            "--ca", str(p.ca_file), "--cert", str(p.client_cert), "--key", str(p.client_key), *mode]


def _json_lines(lines: Sequence[str]) -> List[dict]:
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# ---------------------------------------------------------------- 1. CPU per probe


def suite_cpu(ctx: Ctx) -> Dict[str, Any]:
    """CPU per probe: raw ssl+http.client, fcmon's daemon, blackbox_exporter; same emulator, same rate.

    The clients run at the same time, each at the same steady rate, and are
    measured over the same windows: whatever the shared machine does to one
    window, it does to all of them, so the per-window ratios hold still even
    when the absolute figures drift. Phase 1: raw + fcmon + blackbox_exporter;
    phase 2 (information): raw + plain requests + fcmon's probe loop without
    the daemon.
    """
    emu = ctx.emulator()
    rate = 20.0
    windows, window = (2, 4.0) if ctx.quick else (6, 5.0)
    info_windows = 1 if ctx.quick else 3
    n_targets, interval = 40, 2.0  # 40 targets every 2 s: 20 probes a second
    cfg_port = free_port()
    cfg = fcmon_config(ctx.work / "cpu.ini", ctx.pki, cfg_port,
                       [(f"cpu{i:02d}", emu.url) for i in range(n_targets)], interval, 1.5)
    out: Dict[str, Any] = {
        "rate_per_s": rate, "windows": windows, "info_windows": info_windows, "window_s": window,
        "fcmon_setup": f"{n_targets} targets, interval {interval:g} s (= {rate:g} probes/s), "
                       f"warm-up one interval + 1.5 s, CPU from /proc/PID/stat, probes from fcmon_probes_total",
        "method": "clients run concurrently, each at the same rate, measured over the same windows",
        "raw": [], "requests": [], "probeloop": [], "fcmon": [], "blackbox": [], "raw_info": [],
    }

    binary, why = blackbox.find_or_install(ctx.log)
    out["blackbox_status"] = why
    bb = None
    if binary:
        try:
            bb = blackbox.Blackbox(ctx.procs, binary, blackbox.write_config(ctx.work, ctx.pki), emu.url)
            if not bb.probe():
                raise BenchError("the first blackbox probe failed")
        except Exception as exc:  # the row is skipped with the reason
            out["blackbox_status"] = f"could not run: {exc}"
            bb = None

    def start_client(client: str, k: int, warmup: float):  # type: ignore[no-untyped-def]
        return ctx.procs.start(f"{client}-client", _client_cmd(
            emu, ctx.pki, client, "rate", "--rate", str(rate), "--windows", str(k),
            "--window", str(window), "--warmup", str(warmup)))

    def client_windows(p, k: int) -> List[dict]:  # type: ignore[no-untyped-def]
        p.popen.wait(60 + k * window)
        ctx.procs.stop(p)
        ws = _json_lines(list(p.out))
        if len(ws) != k:
            raise BenchError(f"{p.name}: expected {k} windows:\n{p.tail()}")
        return [dict(w, ms_per_probe=w["cpu"] / max(1, w["probes"]) * 1000) for w in ws]

    class Driver(threading.Thread):
        """blackbox_exporter's /probe at the rate, counted per window by the main thread."""

        def __init__(self) -> None:
            super().__init__(daemon=True)
            self.stop_ev = threading.Event()
            self.n = self.fails = 0
            self.error: Optional[str] = None

        def run(self) -> None:
            assert bb is not None
            period, next_at = 1.0 / rate, time.monotonic()
            while not self.stop_ev.is_set():
                try:
                    self.fails += 0 if bb.probe() else 1
                except Exception as exc:
                    self.error = str(exc)
                    return
                self.n += 1
                next_at += period
                self.stop_ev.wait(max(0.0, next_at - time.monotonic()))

    steal0, wall0 = steal_seconds(), time.monotonic()
    ctx.log(f"cpu phase 1: raw reference, fcmon daemon{', blackbox_exporter' if bb else ''} at the same time, "
            f"{windows} windows of {window:g} s")
    e0 = emu.proc.cpu()
    f = FcmonProc(ctx.procs, cfg, cfg_port, name="fcmon-cpu")
    driver = Driver() if bb is not None else None
    try:
        f.wait_listening(30)
        if driver is not None:
            driver.start()
        warm = interval + 1.5
        raw = start_client("raw", windows, warm)
        raw.wait_for_line(r"^started$", 30)
        time.sleep(warm)
        for _ in range(windows):
            n0 = metric_sum(f.metrics(), "fcmon_probes_total")
            c0, t0 = f.proc.cpu(), time.monotonic()
            b0 = (bb.proc.cpu(), driver.n, driver.fails) if driver is not None and bb is not None else None
            time.sleep(window)
            c1, t1 = f.proc.cpu(), time.monotonic()
            if driver is not None and bb is not None and b0 is not None:
                bn = driver.n - b0[1]
                bc = bb.proc.cpu() - b0[0]
                out["blackbox"].append({"probes": bn, "cpu": bc, "failures": driver.fails - b0[2],
                                        "ms_per_probe": bc / max(1, bn) * 1000})
            text = f.metrics()
            n1 = metric_sum(text, "fcmon_probes_total")
            out["fcmon"].append({"probes": n1 - n0, "cpu": c1 - c0, "wall": t1 - t0,
                                 "ms_per_probe": (c1 - c0) / max(1.0, n1 - n0) * 1000,
                                 "failures": metric_sum(text, "fcmon_probe_failures_total"),
                                 "up": metric_sum(text, "fcmon_up")})
        out["raw"] = client_windows(raw, windows)
    finally:
        if driver is not None:
            driver.stop_ev.set()
            driver.join(10)
            if driver.error:
                ctx.notes.append(f"cpu: blackbox driver stopped: {driver.error}")
        code = ctx.procs.stop(f.proc)
        if code != 0:
            ctx.notes.append(f"cpu: fcmon exited {code}")
        if bb is not None:
            bb.close()
            ctx.procs.stop(bb.proc)
    out["emulator_cpu_s_phase1"] = emu.proc.cpu() - e0

    ctx.log(f"cpu phase 2 (information): raw reference, plain requests, fcmon probe loop without the daemon, "
            f"{info_windows} windows")
    warm = 2.0
    procs2 = [start_client("raw", info_windows, warm), start_client("requests", info_windows, warm),
              ctx.procs.start("probeloop", [PYTHON, "-m", "bench.probeloop", "-c", str(cfg), "--rate", str(rate),
                                            "--windows", str(info_windows), "--window", str(window),
                                            "--warmup-seconds", str(warm)])]
    for key, p in zip(("raw_info", "requests", "probeloop"), procs2):
        out[key] = client_windows(p, info_windows)
    out["steal_fraction"] = (steal_seconds() - steal0) / max(1e-9, (time.monotonic() - wall0) * (os.cpu_count() or 1))

    def ratios(a: str, b: str) -> List[float]:
        return [x["ms_per_probe"] / y["ms_per_probe"] for x, y in zip(out[a], out[b]) if y["ms_per_probe"]]

    for key in ("raw", "requests", "probeloop", "fcmon", "blackbox", "raw_info"):
        out[f"{key}_ms_median"] = _median([w["ms_per_probe"] for w in out[key]])
    out["ratio_fcmon_raw_windows"] = ratios("fcmon", "raw")
    out["ratio_fcmon_blackbox_windows"] = ratios("fcmon", "blackbox")
    out["ratio_requests_raw_windows"] = ratios("requests", "raw_info")
    out["ratio_probeloop_raw_windows"] = ratios("probeloop", "raw_info")
    for key in ("fcmon_raw", "fcmon_blackbox", "requests_raw", "probeloop_raw"):
        out[f"ratio_{key}_median"] = _median(out[f"ratio_{key}_windows"])
    return out


# ---------------------------------------------------------------- 2. fidelity


def _step(text: str, target: str, step: str) -> Optional[float]:
    for s in samples(text, ["fcmon_step_duration_seconds"]):
        if s.labels.get("target") == target and s.labels.get("step") == step:
            return s.value
    return None


def suite_fidelity(ctx: Ctx) -> Dict[str, Any]:
    """fcmon_step_duration_seconds{step=list_databases} vs the raw client's timing of the same call."""
    emu = ctx.emulator()
    n = 50 if ctx.quick else 200
    port = free_port()
    cfg = fcmon_config(ctx.work / "fidelity.ini", ctx.pki, port, [("fid", emu.url)], 60, 10, schedule=False)
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-fidelity")
    raw = ctx.procs.start("raw-serve", _client_cmd(emu, ctx.pki, "raw", "serve"), stdin=True)
    out: Dict[str, Any] = {"probes_each": n, "method": (
        "fcmon with schedule = false, one probe per GET /probe?target=fid, alternating with one raw "
        "reference probe (own process, fresh TLS connection each); delay injected on listDatabases "
        "by the emulator's control endpoint; figure = median(fcmon step) - median(raw step)"), "delays": []}
    try:
        f.wait_listening(30)

        def one_fcmon() -> float:
            text = f.probe("fid")
            v = _step(text, "fid", "list_databases")
            if v is None or metric_sum(text, "fcmon_up", target="fid") != 1:
                raise BenchError(f"fcmon probe failed:\n{text[:2000]}")
            return v

        def one_raw() -> float:
            answer = json.loads(raw.request("probe"))
            if "error" in answer:
                raise BenchError(f"raw probe failed: {answer['error']}")
            return float(answer["list_databases"])

        for delay in (0.0, 0.005, 0.05):
            if delay:
                emu.set_fault("listDatabases", {"delay": delay})
            else:
                emu.clear_faults()
            ctx.log(f"fidelity: delay {delay * 1000:g} ms, {n} probes each")
            for _ in range(5):
                one_fcmon(), one_raw()
            fc: List[float] = []
            rw: List[float] = []
            for i in range(n):
                if i % 2 == 0:
                    fc.append(one_fcmon())
                    rw.append(one_raw())
                else:
                    rw.append(one_raw())
                    fc.append(one_fcmon())
            mf, mr = statistics.median(fc), statistics.median(rw)
            out["delays"].append({
                "delay_ms": delay * 1000,
                "fcmon_median_ms": mf * 1000, "raw_median_ms": mr * 1000,
                "fcmon_minus_delay_ms": (mf - delay) * 1000, "raw_minus_delay_ms": (mr - delay) * 1000,
                "diff_ms": (mf - mr) * 1000,
                "paired_diff_median_ms": statistics.median(a - b for a, b in zip(fc, rw)) * 1000,
                "fcmon_p10_p90_ms": [_pct(fc, 0.1) * 1000, _pct(fc, 0.9) * 1000],
                "raw_p10_p90_ms": [_pct(rw, 0.1) * 1000, _pct(rw, 0.9) * 1000],
            })
    finally:
        emu.clear_faults()
        ctx.procs.stop(raw, 5)
        ctx.procs.stop(f.proc)
    return out


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------- 3-6. scale, memory, scrape, start-up


def _lateness_buckets(text: str) -> List[Tuple[float, float]]:
    out = []
    for s in samples(text, [LATENESS + "_bucket"]):
        le = s.labels["le"]
        out.append((float("inf") if le == "+Inf" else float(le), s.value))
    return sorted(out)


def _bucket_delta(a: List[Tuple[float, float]], b: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    before = dict(a)
    return [(le, v - before.get(le, 0.0)) for le, v in b]


def _quantiles(buckets: List[Tuple[float, float]]) -> Dict[str, Optional[float]]:
    count = buckets[-1][1] if buckets else 0.0
    return {"count": count, "p50_s": histogram_quantile(0.5, buckets),
            "p99_s": histogram_quantile(0.99, buckets), "max_bucket_s": _max_bucket(buckets)}


def _max_bucket(buckets: List[Tuple[float, float]]) -> Optional[float]:
    """The upper bound of the highest non-empty bucket."""
    prev = 0.0
    top = None
    for le, v in buckets:
        if v > prev:
            top = le
        prev = v
    return top


@dataclass
class ScaleStep:
    targets: int
    duration: float
    interval: float = 30.0
    timeout: float = 10.0
    scrapes: int = 0  # the scrape burst (goal 5)
    companion: bool = False  # a one-target fcmon alongside (goal 4)
    ready_poll: float = 0.1


def runs_due(first: float, phase: float, interval: float, horizon: float, min_gap: float = 0.0) -> int:
    """Runs of one target due by `horizon` under fcmon's schedule: the first
    at `first`, then every phase + k * interval at least max(half an
    interval, min_gap) after it (fcmon.service.scheduler.PhasedTrigger; min_gap is
    the probe's timeout + cleanup grace)."""
    if horizon < first:
        return 0
    k0 = math.ceil((first + max(interval / 2, min(min_gap, interval)) - phase) / interval)
    later = phase + k0 * interval
    return 1 + (0 if horizon < later else int((horizon - later) // interval) + 1)


def _scale_targets(n: int, healthy_url: str, hang_url: str) -> Tuple[List[Tuple[str, str]], List[str], List[int]]:
    """Every tenth target hangs (10%), spread evenly through the stagger."""
    targets = []
    healthy = []
    healthy_index = []
    for i in range(n):
        if i % 10 == 9:
            targets.append((f"hang{i:04d}", hang_url))
        else:
            name = f"ok{i:04d}"
            targets.append((name, healthy_url))
            healthy.append(name)
            healthy_index.append(i)
    return targets, healthy, healthy_index


def scale_step(ctx: Ctx, emu: EmulatorProc, step: ScaleStep) -> Dict[str, Any]:
    n = step.targets
    hang_url = f"https://{LOOPBACK}:{ctx.hang_port()}/api"
    targets, healthy, healthy_index = _scale_targets(n, emu.url, hang_url)
    healthy_set = set(healthy)
    port = free_port()
    # The hanging server and the emulator share the host name (127.0.0.1, two
    # ports) under a real per-server cap: 64 lets the emulator, which stands
    # for 2,700 servers, through, while the 300 hanging targets (10 a second,
    # each holding a slot 10 s) fill their own server's share; a cap keyed
    # by host name would have let them starve the healthy ones.
    cfg = fcmon_config(ctx.work / f"scale{n}.ini", ctx.pki, port, targets, step.interval, step.timeout,
                       per_host=SCALE_PER_SERVER)
    res: Dict[str, Any] = {
        "targets": n, "healthy": len(healthy), "hanging": n - len(healthy), "interval_s": step.interval,
        "timeout_s": step.timeout, "duration_s": step.duration,
        "expected_probes_per_s": n / step.interval,
    }
    companion = None
    if step.companion:
        cport = free_port()
        ccfg = fcmon_config(ctx.work / "one.ini", ctx.pki, cport, [("one", emu.url)], 5, 4)
        companion = FcmonProc(ctx.procs, ccfg, cport, name="fcmon-one-target")
    sessions_before = emu.sessions()
    f = FcmonProc(ctx.procs, cfg, port, name=f"fcmon-{n}")
    wall_start = time.time()
    t_start = f.t_start
    try:
        res["listening_s"] = f.wait_listening(60)
        t_listen_wall = wall_start + res["listening_s"]
        # /-/ready is polled for the whole step: every change of its answer is kept,
        # so a 200 that later turns back into 503 shows.
        ready_changes: List[Tuple[float, int]] = []
        stop_polling = threading.Event()

        def poll_ready() -> None:
            last = None
            while not stop_polling.is_set():
                try:
                    status, _ = http_get(port, "/-/ready", 5)
                except OSError:
                    status = 0
                if status != last:
                    ready_changes.append((time.monotonic() - t_start, status))
                    last = status
                stop_polling.wait(step.ready_poll if status != 200 else 1.0)

        poller = threading.Thread(target=poll_ready, daemon=True)
        poller.start()
        rss_series: List[Tuple[float, float]] = []
        cpu_series: List[Tuple[float, float]] = []

        def at(t: float) -> None:
            """Sleep until t seconds after start, sampling RSS and CPU every 10 s meanwhile."""
            while True:
                now = time.monotonic() - t_start
                if now >= t:
                    return
                nxt = (int(now / 10) + 1) * 10
                time.sleep(max(0.0, min(t, nxt) - now))
                now = time.monotonic() - t_start
                if now >= nxt - 0.01 and f.proc.alive():
                    rss_series.append((round(now, 1), f.proc.rss() / MB))
                    cpu_series.append((round(now, 1), f.proc.cpu(), thread_count(f.proc.pid),
                                       os.getloadavg()[0], round(steal_seconds(), 2)))

        # Steady state: from one interval on (every target has had its first
        # probe, and built its SSL context).
        steady_from = step.interval + 3
        at(steady_from)
        text_a = f.metrics()
        cpu_a, t_a = f.proc.cpu(), time.monotonic() - t_start
        steal_a = steal_seconds()
        burst: Dict[str, Any] = {}
        if step.scrapes:
            # Scrapes spaced like Prometheus' (15 s), so each one finds the
            # targets probed since the one before changed (what a renderer
            # that caches per target really faces); then a few back to back.
            avail = step.duration - (steady_from + 10) - 15
            spacing = max(0.5, min(15.0, avail / max(1, step.scrapes - 1)))
            scrape_from = step.duration - 15 - (step.scrapes - 1) * spacing
            at(scrape_from)
            cpu_b, t_b = f.proc.cpu(), time.monotonic() - t_start
            steal_b = steal_seconds()
            times: List[float] = []
            first_body = body = b""
            for k in range(step.scrapes):
                at(scrape_from + k * spacing)
                t0 = time.monotonic()
                status, body = http_get(port, "/metrics", 60)
                times.append(time.monotonic() - t0)
                if status != 200:
                    raise BenchError(f"/metrics: HTTP {status}")
                if k == 0:
                    first_body = body
            t_c = time.monotonic() - t_start
            cpu_c = f.proc.cpu()
            text_b, text_c = first_body.decode(), body.decode()
            back_to_back = []
            for _ in range(5):
                t0 = time.monotonic()
                http_get(port, "/metrics", 60)
                back_to_back.append(time.monotonic() - t0)
            # As Prometheus asks for it: gzipped (and unpacked here, as Prometheus would).
            gzipped, gzip_bytes = [], 0
            for _ in range(5):
                t0 = time.monotonic()
                status, packed = http_get(port, "/metrics", 60, headers={"Accept-Encoding": "gzip"})
                gzip.decompress(packed)
                gzipped.append(time.monotonic() - t0)
                gzip_bytes = len(packed)
            lat_b, lat_c = _lateness_buckets(text_b), _lateness_buckets(text_c)
            probes_b = metric_sum(text_b, "fcmon_probes_total")
            probes_c = metric_sum(text_c, "fcmon_probes_total")
            burst = {
                "scrapes": step.scrapes, "spacing_s": spacing, "seconds": times,
                "median_s": statistics.median(times), "max_s": max(times), "bytes": len(body),
                "lines": text_c.count("\n"),
                "back_to_back_s": back_to_back, "back_to_back_median_s": statistics.median(back_to_back),
                "gzip_back_to_back_median_s": statistics.median(gzipped), "gzip_bytes": gzip_bytes,
                "phase_wall_s": t_c - t_b, "cpu_s_during_phase": cpu_c - cpu_b,
                "probes_during_phase": probes_c - probes_b,
                "probes_expected_during_phase": (t_c - t_b - times[0]) * n / step.interval,
                "lateness_during_phase": _quantiles(_bucket_delta(lat_b, lat_c)),
            }
            steady_text_end, steady_cpu_end, steady_t_end = text_b, cpu_b, t_b
        at(step.duration)
        res["rss_mb_at_end"] = f.proc.rss() / MB
        res["threads_at_end"] = thread_count(f.proc.pid)
        cpu_e, t_e = f.proc.cpu(), time.monotonic() - t_start
        if companion is not None:
            res["companion_one_target"] = {
                "rss_mb_at_end": companion.proc.rss() / MB, "interval_s": 5,
                "age_s": time.monotonic() - companion.t_start, "cpu_s": companion.proc.cpu(),
            }
        wall_e = time.time()  # before the final scrape: its text counts probes done by about then
        text_e = f.metrics()
        if not step.scrapes:
            steady_text_end, steady_cpu_end, steady_t_end = text_e, cpu_e, t_e
            steal_b = steal_seconds()
        stop_polling.set()

        # -- steady-state CPU and lateness
        probes_a = metric_sum(text_a, "fcmon_probes_total")
        probes_s = metric_sum(steady_text_end, "fcmon_probes_total")
        cpu_s = steady_cpu_end - cpu_a
        res["steady"] = {
            "from_s": t_a, "to_s": steady_t_end, "probes": probes_s - probes_a,
            "cpu_s": cpu_s, "cpu_cores": cpu_s / max(1e-9, steady_t_end - t_a),
            "cpu_ms_per_probe": cpu_s / max(1.0, probes_s - probes_a) * 1000,
            "lateness": _quantiles(_bucket_delta(_lateness_buckets(text_a), _lateness_buckets(steady_text_end))),
            # CPU the hypervisor gave elsewhere during the window, as a share of this machine's CPUs
            "steal_fraction": (steal_b - steal_a) / max(1e-9, (steady_t_end - t_a) * (os.cpu_count() or 1)),
        }
        res["whole_run"] = {
            "cpu_s": cpu_e, "seconds": t_e, "probes": metric_sum(text_e, "fcmon_probes_total"),
            "lateness": _quantiles(_lateness_buckets(text_e)),
        }
        res["rss_mb_series"] = rss_series
        # (t, cpu seconds, threads, 1-min load average, machine steal seconds so far)
        res["cpu_threads_load_series"] = cpu_series
        res["rss_mb_peak_sampled"] = max([v for _, v in rss_series] + [res["rss_mb_at_end"]])
        if burst:
            res["scrape"] = burst

        # -- healthy targets: skipped, missed, up
        by_target = lambda name: {s.labels["target"]: s.value for s in samples(text_e, [name])}  # noqa: E731
        skipped: Dict[str, float] = {}  # summed over the reason label
        skip_reasons: Dict[str, float] = {}
        for s in samples(text_e, ["fcmon_probes_skipped_total"]):
            skipped[s.labels["target"]] = skipped.get(s.labels["target"], 0.0) + s.value
            kind = "healthy" if s.labels["target"] in healthy_set else "hanging"
            key = f"{kind}:{s.labels.get('reason', '')}"
            skip_reasons[key] = skip_reasons.get(key, 0.0) + s.value
        res["skipped_by_reason"] = skip_reasons
        probes = by_target("fcmon_probes_total")
        up = by_target("fcmon_up")
        res["skipped_healthy"] = sum(v for k, v in skipped.items() if k in healthy_set)
        res["skipped_hanging"] = sum(v for k, v in skipped.items() if k not in healthy_set)
        # Runs due (by the stagger, counted from when the endpoint first answered,
        # which is after the scheduler started) up to 3 s before the final scrape
        # was requested (a probe counts once it has finished).
        missed = 0
        missing_targets = []
        horizon = wall_e - 3.0 - t_listen_wall
        for name, i in zip(healthy, healthy_index):
            offset = step.interval * i / n
            due = runs_due(min(offset, first_round_offset(i)), offset, step.interval, horizon, step.timeout + CLEANUP_GRACE)
            got = probes.get(name, 0)
            if got < due:
                missed += int(due - got)
                missing_targets.append((name, round(offset, 3), int(due), int(got)))
        res["missed_healthy"] = missed
        res["missed_targets"] = len(missing_targets)
        res["missed_examples"] = missing_targets[:5]
        # Targets whose first run was due this early were still being added (scheduler.update()).
        res["missed_max_first_offset_s"] = max((m[1] for m in missing_targets), default=None)
        res["missed_first_offsets_s"] = [m[1] for m in missing_targets][:200]
        res["up_healthy"] = sum(1 for k in healthy if up.get(k) == 1)
        res["failures_healthy"] = sum(
            s.value for s in samples(text_e, ["fcmon_probe_failures_total"]) if s.labels["target"] in healthy_set)
        res["ready_changes"] = ready_changes
        # Ready = the last change to 200 (a 200 that turned back to 503 was premature).
        res["ready_s"] = ready_changes[-1][0] if ready_changes and ready_changes[-1][1] == 200 else None
        firsts = [t for t, st in ready_changes if st == 200]
        res["ready_premature_s"] = firsts[0] if firsts and firsts[0] != res["ready_s"] else None
    finally:
        stop_polling_ev = locals().get("stop_polling")
        if stop_polling_ev is not None:
            stop_polling_ev.set()
        t0 = time.monotonic()
        code = ctx.procs.stop(f.proc, 60)
        res["stop_s"] = time.monotonic() - t0
        res["exit_code"] = code
        if companion is not None:
            ctx.procs.stop(companion.proc)
    sessions = emu.sessions()
    res["emulator_open_sessions_after_stop"] = sessions["open"]
    res["emulator_sessions_created"] = sessions["created"] - sessions_before["created"]
    res["fcmon_stderr_lines"] = f.proc.err_count
    return res


def suite_scale(ctx: Ctx, sizes: Sequence[int], long_minutes: float, scrapes: int) -> Dict[str, Any]:
    emu = ctx.fresh_emulator("emulator-scale")
    out: Dict[str, Any] = {"steps": []}
    for n in sizes:
        # The largest step runs long: memory after `long_minutes`, the scrape
        # burst near its end, a one-target fcmon alongside for the small RSS.
        long = n == max(sizes)
        duration = long_minutes * 60 if long else 45.0
        step = ScaleStep(targets=n, duration=duration, scrapes=scrapes if long else 0, companion=long,
                         ready_poll=0.1 if n <= 100 else 0.5)
        ctx.log(f"scale: {n} targets ({n // 10} hanging) at a {step.interval:g} s interval for {duration:g} s"
                + (f", {scrapes} scrapes near the end, a one-target fcmon alongside" if long else ""))
        try:
            out["steps"].append(scale_step(ctx, emu, step))
        except Exception as exc:
            ctx.log(f"scale step {n} failed: {exc}")
            out["steps"].append({"targets": n, "error": f"{type(exc).__name__}: {exc}"})
    ctx.procs.stop(emu.proc)
    return out


def suite_startup(ctx: Ctx, n: int = 100, interval: float = 30.0) -> Dict[str, Any]:
    """Goal 6: `fcmon run` with `n` healthy targets, from exec to /-/ready 200,
    then how the later probes spread over the interval."""
    emu = ctx.emulator()
    port = free_port()
    targets = [(f"s{i:03d}", emu.url) for i in range(n)]
    cfg = fcmon_config(ctx.work / "startup.ini", ctx.pki, port, targets, interval, 10.0)
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-startup")
    res: Dict[str, Any] = {"targets": n, "interval_s": interval}
    try:
        res["listening_s"] = f.wait_listening(60)
        res["ready_s"] = wait_http(port, "/-/ready", 60, interval=0.005) - f.t_start
        text = f.metrics()
        up = [s.value for s in samples(text, ["fcmon_up"])]
        res["up_at_ready"] = sum(1 for v in up if v == 1)
        ends = [s.value for s in samples(text, ["fcmon_last_probe_timestamp_seconds"])]
        res["first_round_span_s"] = (max(ends) - min(ends)) if ends else None
        # After the first round each target runs on its phase (interval * i / n),
        # at least half an interval after its first probe: about a quarter of the
        # second probes are done by 0.75 intervals, three quarters by 1.25.
        counts = {}
        for frac in (0.75, 1.25):
            time.sleep(max(0.0, f.t_start + res["listening_s"] + frac * interval - time.monotonic()))
            counts[str(frac)] = metric_sum(f.metrics(), "fcmon_probes_total") - n
        res["second_probes_done"] = counts
    finally:
        ctx.procs.stop(f.proc, 30)
    return res


# ---------------------------------------------------------------- 7. hostile callers


class _SlowClients:
    """`n` connections to fcmon that send a request line, then one header
    byte a second, never finishing; each one fcmon drops is replaced (a
    sustained slowloris). Non-blocking sockets in one thread."""

    def __init__(self, port: int, n: int, drip: bool = True, sources: Sequence[str] = ()):
        self.port, self.n = port, n
        self.drip = drip  # False: idle connections, nothing sent
        # the loopback addresses they come from, in turn (none: the kernel's choice)
        self.sources = list(sources)
        self.socks: Dict[Any, bool] = {}  # socket -> request line sent
        self.dropped = 0
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for s in self.socks:
            s.close()
        self.socks.clear()

    def _run(self) -> None:
        import socket

        while not self._stop.is_set():
            while len(self.socks) < self.n:
                s = socket.socket()
                s.setblocking(False)
                if self.sources:
                    s.bind((self.sources[self.connects % len(self.sources)], 0))
                s.connect_ex((LOOPBACK, self.port))
                self.socks[s] = False
                self.connects += 1
            for s in list(self.socks):
                try:
                    gone = s.recv(1) == b""
                except (BlockingIOError, InterruptedError):
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                    del self.socks[s]
                    self.dropped += 1
                    continue
                if not self.drip:
                    continue
                try:
                    s.send(b"X" if self.socks[s] else b"GET /metrics HTTP/1.1\r\n")
                    self.socks[s] = True
                except (BlockingIOError, InterruptedError, OSError):
                    pass  # not connected yet, or gone: seen next round
            self._stop.wait(1.0)


def suite_hostile(ctx: Ctx, clients: int = 3000, targets: int = 500) -> Dict[str, Any]:
    """/metrics latency, RSS and threads of `fcmon run` before, during and
    after `clients` slow clients (a header byte a second, replaced when
    dropped)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 200:  # the attacker's own descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, clients + 1000), hard))
    emu = ctx.emulator()
    port = free_port()
    cfg = fcmon_config(ctx.work / "hostile.ini", ctx.pki, port, [(f"h{i:03d}", emu.url) for i in range(targets)],
                       30.0, 10.0)
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-hostile")
    during_s = 10.0 if ctx.quick else 40.0

    def scrape() -> Tuple[Optional[float], str]:
        t0 = time.monotonic()
        try:
            status, body = http_get(port, "/metrics", timeout=30)
        except OSError as exc:
            return None, f"{type(exc).__name__}"
        return (time.monotonic() - t0 if status == 200 else None), body.decode()

    def state() -> Dict[str, float]:
        return {"rss_mb": f.proc.rss() / MB, "threads": thread_count(f.proc.pid),
                "fds": len(os.listdir(f"/proc/{f.proc.pid}/fd"))}

    def phase(seconds: float, every: float = 2.0) -> Dict[str, Any]:
        lat: List[float] = []
        failed, peak = 0, {"rss_mb": 0.0, "threads": 0.0, "fds": 0.0}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            took, _ = scrape()
            if took is None:
                failed += 1
            else:
                lat.append(took)
            for k, v in state().items():
                peak[k] = max(peak[k], v)
            time.sleep(every)
        return {"scrape_median_s": _median(lat), "scrape_max_s": max(lat) if lat else None,
                "scrapes": len(lat), "scrape_failures": failed, "peak": peak, "at_end": state()}

    res: Dict[str, Any] = {"clients": clients, "targets": targets}
    try:
        f.wait_listening(60)
        wait_http(port, "/-/ready", 120)
        time.sleep(5)
        res["before"] = phase(10.0)
        _, text = scrape()
        failures0 = metric_sum(text, "fcmon_probe_failures_total")
        probes0 = metric_sum(text, "fcmon_probes_total")
        # From 127.0.2.1, 127.0.2.2, ... 100 each: apart from the scraper's
        # 127.0.0.1 and within the per-client limit, so that all of them are
        # held (one address would be stopped at 1,024 by that limit).
        attack = _SlowClients(port, clients, sources=[f"127.0.2.{i + 1}" for i in range(clients // 100 + 1)])
        attack.start()
        time.sleep(5)  # ramp up
        res["during"] = phase(during_s)
        res["during"]["open_slow_clients"] = len(attack.socks)
        attack.stop()
        res["attack"] = {"connects": attack.connects, "dropped_by_fcmon": attack.dropped,
                         "seconds": during_s + 5}
        time.sleep(15)  # idle threads end after 10 s; freed heap is trimmed
        res["after"] = phase(10.0)
        _, text = scrape()
        res["probes_during"] = metric_sum(text, "fcmon_probes_total") - probes0
        res["probe_failures_during"] = metric_sum(text, "fcmon_probe_failures_total") - failures0
        res["connections_rejected"] = metric_sum(text, "fcmon_http_connections_rejected_total")
    finally:
        ctx.procs.stop(f.proc, 30)
    # Page pollers (issue 16): /metrics medians with 0 and 20 pollers of the
    # status page at 3,000 targets, then 3,000 pollers: RSS and SIGTERM.
    res["page_pollers"] = page_pollers(ctx, counts=(20,), paths=("/",), sigterm_pollers=(3000,),
                                       phase_s=10.0 if ctx.quick else 20.0)
    res["front_door"] = front_door(ctx)
    # /probe back to back on one connection: FairCom logins per window (issue 16).
    res["probe_back_to_back"] = probe_back_to_back(ctx, 5.0 if ctx.quick else 10.0)
    return res


def front_door(ctx: Ctx, idle: int = 4000, one_address: int = 4300, scrapes: int = 19) -> Dict[str, Any]:
    """Issue 16's measured cases, with the descriptor limit of the unit
    (LimitNOFILE=16384: connection cap 4,096): `idle` idle TCP connections
    (no handshake, replaced when dropped; two per loopback address) to a
    [web] TLS endpoint, RSS before, at its peak and after; and `one_address` idle connections from
    127.0.0.2 while a scraper on 127.0.0.1 makes `scrapes` scrapes, each on
    a new connection, a second apart."""
    import resource
    import socket
    import ssl

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))  # fcmon inherits it
    emu = ctx.emulator()
    hold_s = 10.0 if ctx.quick else 30.0
    out: Dict[str, Any] = {"descriptor_limit": min(hard, 16384)}

    def rss(f: FcmonProc) -> float:
        return f.proc.rss() / MB

    def fds(f: FcmonProc) -> int:
        return len(os.listdir(f"/proc/{f.proc.pid}/fd"))

    # 1. idle connections to the TLS endpoint
    port = free_port()
    cfg = fcmon_config(ctx.work / "front-tls.ini", ctx.pki, port, [("f0", emu.url)], 30.0, 10.0)
    cfg.write_text(cfg.read_text() + f"\n[web]\ntls_cert_file = {ctx.pki.server_cert}\n"
                                      f"tls_key_file = {ctx.pki.server_key}\n")
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-front-tls")
    tls = ssl.create_default_context(cafile=str(ctx.pki.ca_file))

    def tls_get(path: str) -> int:
        with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
            with tls.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                return int(s.recv(100).split(b" ", 2)[1])

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if tls_get("/-/ready") == 200:
                    break
            except (OSError, ValueError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise BenchError("TLS endpoint not ready within 60 s")
            time.sleep(0.2)
        time.sleep(2)
        before = rss(f)
        # From 2,000 loopback addresses, 2 each: the per-client limit and the
        # slots held back do not stop them, so the memory of `idle` is measured.
        attack = _SlowClients(port, idle, drip=False,
                              sources=[f"127.1.{i // 250}.{i % 250 + 1}" for i in range(idle // 2)])
        attack.start()
        peak, peak_fds, end = before, 0, time.monotonic() + hold_s
        while time.monotonic() < end:
            peak, peak_fds = max(peak, rss(f)), max(peak_fds, fds(f))
            time.sleep(0.5)
        scrape_ok = tls_get("/metrics") == 200
        attack.stop()
        time.sleep(5)
        out["tls_idle"] = {"connections": idle, "seconds": hold_s, "rss_before_mb": before, "rss_peak_mb": peak,
                           "rss_after_mb": rss(f), "peak_descriptors": peak_fds, "connects": attack.connects,
                           "scrape_during_ok": scrape_ok}
    finally:
        ctx.procs.stop(f.proc, 30)

    # 2. one address holding the cap, a scraper from another: with the
    # default per-client limit, and with none (the held-back slots alone)
    for name, web in (("one_address", ""), ("one_address_held_back", "max_connections_per_client = 100000\n")):
        port = free_port()
        cfg = fcmon_config(ctx.work / f"front-{name}.ini", ctx.pki, port, [("f0", emu.url)], 30.0, 10.0)
        if web:
            cfg.write_text(cfg.read_text() + "\n[web]\n" + web)
        f = FcmonProc(ctx.procs, cfg, port, name=f"fcmon-front-{name}")
        try:
            f.wait_listening(60)
            wait_http(port, "/-/ready", 60)
            attack = _SlowClients(port, one_address, drip=False, sources=["127.0.0.2"])
            attack.start()
            time.sleep(3)
            took: List[float] = []
            failed = 0
            peak_fds = 0
            for _ in range(scrapes):
                t0 = time.monotonic()
                try:
                    status, _ = http_get(port, "/metrics", timeout=10)
                except OSError:
                    status = 0
                if status == 200:
                    took.append(time.monotonic() - t0)
                else:
                    failed += 1
                peak_fds = max(peak_fds, fds(f))
                time.sleep(1.0)
            attack.stop()
            _, body = http_get(port, "/metrics", timeout=10)
            text = body.decode()
            out[name] = {
                "connections": one_address, "per_client_limit": "none" if web else "default",
                "scrapes": scrapes, "answered": len(took), "failed": failed,
                "scrape_median_s": _median(took), "scrape_max_s": max(took) if took else None,
                "peak_descriptors": peak_fds,
                "rejected": {r: metric_sum(text, "fcmon_http_connections_rejected_total", reason=r)
                             for r in ("full", "per_client", "held_back")}}
        finally:
            ctx.procs.stop(f.proc, 30)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return out


def suite_listeners(ctx: Ctx, n: int = 300) -> Dict[str, Any]:
    """Issue 11: the CPU that listener checks add to a fleet at the default intervals.

    Two fcmon processes run side by side against one emulator whose
    listServices names two TLS listeners besides the API (an MQTTS one and
    an MQTT-over-WSS one requiring client certificates, as FairCom's
    defaults): `listeners = none` (the reference) and `listeners = auto`
    (listServices plus two handshakes per target every listener_interval).
    Both run `n` targets at the default interval (60 s) and
    listener_interval (600 s). The first listener round is compressed at
    start-up, and each target's second round comes on its phase at least
    half a listener_interval later: from 300 s to 600 s the rounds run at
    exactly the steady rate (n / 600 s). That is the window measured, CPU
    from /proc for both processes over the same seconds; the emulator
    counts the handshakes, so the rounds in the window are known.
    --quick: 60 s probe interval kept, listener_interval 60 s, a 25 s window.
    """
    interval = 60.0
    listener_interval = 60.0 if ctx.quick else 600.0
    emu = EmulatorProc(ctx.procs, ctx.pki, name="emulator-listeners",
                       extra=["--listener", "mqtts8883:mqtts", "--listener", "mqttwss9002:mqttwss:client-certs"])
    ctx.log(f"listeners: emulator (pid {emu.proc.pid}) on {emu.url} with {len(emu.listeners())} listeners")
    fleet = [(f"l{i:03d}", emu.url) for i in range(n)]
    procs: Dict[str, FcmonProc] = {}
    out: Dict[str, Any] = {"targets": n, "interval_s": interval, "listener_interval_s": listener_interval,
                           "listeners_per_target": 2}
    try:
        for name in ("none", "auto"):
            port = free_port()
            cfg = fcmon_config(ctx.work / f"listeners-{name}.ini", ctx.pki, port, fleet, interval, 10.0,
                               listeners=name)
            if listener_interval != 600.0:
                cfg.write_text(cfg.read_text().replace(
                    "[defaults]\n", f"[defaults]\nlistener_interval = {listener_interval:g}\n"))
            procs[name] = FcmonProc(ctx.procs, cfg, port, name=f"fcmon-listeners-{name}")
        started = time.monotonic()
        for f in procs.values():
            f.wait_listening(60)
            wait_http(f.port, "/-/ready", 120, interval=0.1)

        def handshakes() -> int:
            return sum(x["connections"] for x in emu.listeners())

        def cpu() -> Dict[str, float]:
            return {k: f.proc.cpu() for k, f in procs.items()}

        # The first round: every target's listeners at once, at start-up.
        c0, h0 = cpu(), handshakes()
        time.sleep(20.0)
        c1, h1 = cpu(), handshakes()
        first_rounds = (h1 - h0) / 2
        out["first_round"] = {
            "rounds": first_rounds, "handshakes_before": h0,
            "extra_cpu_s": (c1["auto"] - c0["auto"]) - (c1["none"] - c0["none"]),
        }
        # Then the steady stretch: from half a listener_interval to a whole one.
        begin = started + listener_interval / 2 + 5.0
        end = started + listener_interval - 5.0
        ctx.log(f"listeners: {n} targets each; first round {first_rounds:g} rounds; measuring from "
                f"{begin - started:.0f} s to {end - started:.0f} s after start")
        time.sleep(max(0.0, begin - time.monotonic()))
        c2, h2, steal0, t0 = cpu(), handshakes(), steal_seconds(), time.monotonic()
        probes0 = {k: metric_sum(f.metrics(), "fcmon_probes_total") for k, f in procs.items()}
        time.sleep(max(1.0, end - time.monotonic()))
        c3, h3, elapsed = cpu(), handshakes(), time.monotonic() - t0
        steal = (steal_seconds() - steal0) / max(1e-9, elapsed * (os.cpu_count() or 1))
        texts = {k: f.metrics() for k, f in procs.items()}
        rounds = (h3 - h2) / 2
        none_cpu, auto_cpu = c3["none"] - c2["none"], c3["auto"] - c2["auto"]
        extra = auto_cpu - none_cpu
        out.update({
            "window_s": elapsed,
            "cpu_s": {"none": none_cpu, "auto": auto_cpu},
            "cpu_cores": {"none": none_cpu / elapsed, "auto": auto_cpu / elapsed},
            "probes": {k: metric_sum(texts[k], "fcmon_probes_total") - probes0[k] for k in procs},
            "rounds_in_window": rounds,
            "rounds_per_s": rounds / elapsed,
            "steady_rounds_per_s": n / listener_interval,
            "overhead": extra / none_cpu if none_cpu else None,
            "cpu_ms_per_round": extra / rounds * 1000 if rounds else None,
            "first_round_cpu_ms_per_round": (out["first_round"]["extra_cpu_s"] / first_rounds * 1000
                                             if first_rounds else None),
            "listeners_up": sum(1 for s in samples(texts["auto"], ["fcmon_listener_up"]) if s.value == 1),
            "listener_series_none": len(samples(texts["none"], ["fcmon_listener_up"])),
            "discovery_ok": sum(1 for s in samples(texts["auto"], ["fcmon_listener_discovery_success"])
                                if s.value == 1),
            "steal_fraction": steal,
        })
        ctx.log(f"listeners: none {out['cpu_cores']['none']:.4f} cores, auto {out['cpu_cores']['auto']:.4f} "
                f"cores, {rounds:g} rounds in {elapsed:.0f} s, overhead {out['overhead']}")
    finally:
        for f in procs.values():
            ctx.procs.stop(f.proc, 30)
        ctx.procs.stop(emu.proc)
    return out


def suite_starve(ctx: Ctx, hanging: int = 2000, healthy: int = 100, interval: float = 10.0,
                 timeout: float = 2.0, duration: float = 100.0) -> Dict[str, Any]:
    """Issue 15's measured case: `hanging` targets pointing at a server that
    accepts and never answers and `healthy` targets at the emulator, all on
    the host name `localhost` (two ports), fcmon's default per-server cap.

    /metrics is read every interval; each window counts the healthy targets
    whose fcmon_probes_total grew in it (each is due once per interval).
    Due probes over the run follow the schedule (runs_due), counted from
    when /-/healthy first answered, up to 3 s before the last scrape.
    """
    emu = ctx.fresh_emulator("emulator-starve")
    hang_port = ctx.hang_port()
    healthy_url = emu.url.replace(LOOPBACK, "localhost")
    hang_url = f"https://localhost:{hang_port}/api"
    n = hanging + healthy
    every = n // healthy
    targets: List[Tuple[str, str]] = []
    good: List[Tuple[str, int]] = []
    for i in range(n):
        if i % every == every - 1 and len(good) < healthy:
            name = f"ok{i:04d}"
            targets.append((name, healthy_url))
            good.append((name, i))
        else:
            targets.append((f"hang{i:04d}", hang_url))
    port = free_port()
    # The default per-server cap (8): what the case is about.
    cfg = fcmon_config(ctx.work / "starve.ini", ctx.pki, port, targets, interval, timeout, per_host=None)
    out: Dict[str, Any] = {"hanging": hanging, "healthy": healthy, "interval_s": interval, "timeout_s": timeout,
                           "duration_s": duration, "host": "localhost"}
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-starve")
    wall0 = time.time()
    try:
        listening = f.wait_listening(60)
        t_listen_wall = wall0 + listening
        windows: List[Dict[str, Any]] = []
        names = {name for name, _ in good}
        prev: Optional[Dict[str, float]] = None
        ready_at: Optional[float] = None
        t_next = time.monotonic()
        text = ""
        while time.monotonic() - f.t_start < duration:
            t_next += interval
            time.sleep(max(0.0, t_next - time.monotonic()))
            text = f.metrics()
            if ready_at is None and http_get(port, "/-/ready", 5)[0] == 200:
                ready_at = time.monotonic() - f.t_start
            probes = {s.labels["target"]: s.value for s in samples(text, ["fcmon_probes_total"])
                      if s.labels["target"] in names}
            if prev is not None:
                grew = sum(1 for k in names if probes.get(k, 0) > prev.get(k, 0))
                windows.append({"t_s": round(time.monotonic() - f.t_start, 1), "healthy_probed": grew})
            prev = probes
        wall_e = time.time()
        skipped: Dict[str, float] = {}
        for s in samples(text, ["fcmon_probes_skipped_total"]):
            reason = s.labels.get("reason", "(no reason label)")
            kind = "healthy" if s.labels["target"] in names else "hanging"
            skipped[f"{kind}:{reason}"] = skipped.get(f"{kind}:{reason}", 0) + s.value
        probes = {s.labels["target"]: s.value for s in samples(text, ["fcmon_probes_total"])}
        horizon = wall_e - 3.0 - t_listen_wall
        due = got = 0
        for name, i in good:
            offset = interval * i / n
            d = runs_due(min(offset, first_round_offset(i)), offset, interval, horizon, timeout + CLEANUP_GRACE)
            due += d
            got += min(d, int(probes.get(name, 0)))
        out.update({
            "windows": windows,
            # the first window holds the compressed first round (2,100 first probes take 21 s)
            "min_healthy_probed_per_window_after_30s": min(
                (w["healthy_probed"] for w in windows if w["t_s"] >= 30), default=None),
            "healthy_ever_probed": sum(1 for name in names if probes.get(name, 0) > 0),
            "healthy_due": due, "healthy_done": got, "healthy_done_fraction": got / max(1, due),
            "skipped_by_kind_and_reason": skipped,
            "ready_s": ready_at,
            "hanging_probes": sum(v for k, v in probes.items() if k not in names),
        })
        ctx.log(f"starve: healthy {got}/{due} due probes done, {out['healthy_ever_probed']}/{healthy} ever "
                f"probed, per window {[w['healthy_probed'] for w in windows]}, skipped {skipped}, ready {ready_at}")
    finally:
        t0 = time.monotonic()
        out["exit_code"] = ctx.procs.stop(f.proc, 60)
        out["stop_s"] = time.monotonic() - t0
        out["fcmon_stderr_lines"] = f.proc.err_count
        ctx.procs.stop(emu.proc)

# ---------------------------------------------------------------- 7b. page pollers (issue 16)


def _closed_port() -> int:
    """A loopback port nothing listens on: probes to it fail at connect at once."""
    return free_port()


def page_pollers(ctx: Ctx, targets: int = 3000, healthy: int = 10,
                 counts: Sequence[int] = (2, 5, 20), paths: Sequence[str] = ("/", "/api/v1/status"),
                 sigterm_pollers: Sequence[int] = (300, 3000), phase_s: float = 15.0) -> Dict[str, Any]:
    """`fcmon run` with `targets` targets (all but `healthy` of them down:
    their port refuses connections) while page pollers (from 127.0.3.x;
    the scraper from 127.0.0.1) ask for the status
    page or /api/v1/status again and again: the median /metrics latency
    (gzip, as Prometheus asks) idle and under 2, 5, 20 pollers of each page;
    then, for each of `sigterm_pollers`, a fresh process polled by that many
    for 20 s: peak RSS, and the seconds from SIGTERM to its exit."""
    import signal as _signal

    emu = ctx.emulator()
    down = f"https://{LOOPBACK}:{_closed_port()}/api"
    fleet = [(f"p{i:04d}", emu.url if i < healthy else down) for i in range(targets)]

    def start() -> Tuple[FcmonProc, int]:
        port = free_port()
        cfg = fcmon_config(ctx.work / f"pollers-{port}.ini", ctx.pki, port, fleet, 60.0, 10.0)
        f = FcmonProc(ctx.procs, cfg, port, name="fcmon-pollers")
        f.wait_listening(120)
        wait_http(port, "/-/ready", 180)
        return f, port

    def scrape(port: int) -> Optional[float]:
        t0 = time.monotonic()
        try:
            status, _ = http_get(port, "/metrics", timeout=60, headers={"Accept-Encoding": "gzip"})
        except OSError:
            return None
        return time.monotonic() - t0 if status == 200 else None

    def measure(f: FcmonProc, port: int, seconds: float) -> Dict[str, Any]:
        lat: List[float] = []
        failed, peak = 0, 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            took = scrape(port)
            if took is None:
                failed += 1
            else:
                lat.append(took)
            peak = max(peak, f.proc.rss() / MB)
            time.sleep(0.5)
        return {"metrics_median_s": _median(lat), "metrics_max_s": max(lat) if lat else None,
                "scrapes": len(lat), "failures": failed, "peak_rss_mb": peak}

    def pollers(port: int, n: int, path: str) -> Any:
        # bench.pollers connects from 127.0.3.x (100 each), the scraper from
        # 127.0.0.1: fcmon limits connections per client address.
        p = ctx.procs.start(f"pollers-{n}", [PYTHON, "-m", "bench.pollers", "--port", str(port),
                                              "--n", str(n), "--path", path])
        p.wait_for_line(r'"started"', 60)
        return p

    def stop_pollers(p: Any) -> Dict[str, Any]:
        p.popen.send_signal(_signal.SIGINT)
        try:
            p.popen.wait(30)
        except Exception:
            pass
        ctx.procs.stop(p, 5)
        for line in reversed(list(p.out)):
            if line.startswith("{") and "started" not in line:
                return dict(json.loads(line))
        return {}

    out: Dict[str, Any] = {"targets": targets, "healthy": healthy, "phase_s": phase_s, "phases": []}
    f, port = start()
    try:
        time.sleep(3)
        out["idle"] = measure(f, port, phase_s)
        ctx.log(f"page pollers: idle /metrics median {out['idle']['metrics_median_s']}")
        for path in paths:
            for n in counts:
                p = pollers(port, n, path)
                time.sleep(3)
                m = measure(f, port, phase_s)
                m.update({"path": path, "pollers": n, "answers": stop_pollers(p)})
                out["phases"].append(m)
                ctx.log(f"page pollers: {n} x {path}: /metrics median {m['metrics_median_s']}, "
                        f"{m['failures']} failed, peak RSS {m['peak_rss_mb']:.0f} MB, answers {m['answers']}")
                time.sleep(3)
        out["rss_mb_idle_end"] = f.proc.rss() / MB
    finally:
        ctx.procs.stop(f.proc, 30)
    out["sigterm"] = []
    for n in sigterm_pollers:
        f, port = start()
        try:
            rss0 = f.proc.rss() / MB
            p = pollers(port, n, "/")
            m = measure(f, port, 20.0)
            t0 = time.monotonic()
            f.proc.popen.send_signal(_signal.SIGTERM)
            try:
                f.proc.popen.wait(60)
                took: Optional[float] = time.monotonic() - t0
            except Exception:
                took = None  # still running after 60 s: killed below
            answers = stop_pollers(p)
            row = {"pollers": n, "rss_mb_before": rss0, "peak_rss_mb": m["peak_rss_mb"],
                   "metrics_median_s": m["metrics_median_s"], "scrapes": m["scrapes"], "failures": m["failures"],
                   "sigterm_s": took, "answers": answers}
            out["sigterm"].append(row)
            ctx.log(f"page pollers: {n} x /: {row}")
        finally:
            ctx.procs.stop(f.proc, 5)
    return out


def probe_back_to_back(ctx: Ctx, seconds: float = 10.0) -> Dict[str, Any]:
    """/probe?target= called back to back on one keep-alive connection for
    `seconds` (`fcmon run`, schedule = false, one target, default
    probe_reuse_window): the calls answered, and the FairCom logins they
    caused (the emulator's createSession count)."""
    import http.client

    emu = ctx.fresh_emulator("emulator-probe-loop")
    port = free_port()
    cfg = fcmon_config(ctx.work / "probe-loop.ini", ctx.pki, port, [("loop", emu.url)], 60.0, 10.0,
                       schedule=False)
    f = FcmonProc(ctx.procs, cfg, port, name="fcmon-probe-loop")
    try:
        f.wait_listening(60)
        created0 = int(emu.sessions()["created"])
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        calls, statuses = 0, {}  # type: Tuple[int, Dict[int, int]]
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            conn.request("GET", "/probe?target=loop")
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            calls += 1
        elapsed = time.monotonic() - t0
        conn.close()
        logins = int(emu.sessions()["created"]) - created0
    finally:
        ctx.procs.stop(f.proc, 30)
        ctx.procs.stop(emu.proc, 10)
    return {"seconds": elapsed, "calls": calls, "statuses": statuses, "logins": logins}
