"""Results -> goal rows -> bench/results/latest.json and latest.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional


def _f(x: Optional[float], unit: str = "", digits: int = 2) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}{unit}"


def _row(goal: str, measured: str, reference: str, ratio: str, limit: str, ok: Optional[bool],
         note: str = "") -> Dict[str, Any]:
    return {"goal": goal, "measured": measured, "reference": reference, "ratio": ratio, "limit": limit,
            "pass": ok, "note": note}


def goal_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    cpu = results.get("cpu")
    if cpu and "error" not in cpu:
        raw, fc, bb = cpu.get("raw_ms_median"), cpu.get("fcmon_ms_median"), cpu.get("blackbox_ms_median")
        r = cpu.get("ratio_fcmon_raw_median")
        rows.append(_row("1. CPU per probe: fcmon daemon vs raw ssl+http.client (3 calls each)",
                         _f(fc, " ms"), _f(raw, " ms"), _f(r, "x"), "<= 1.3x", r is not None and r <= 1.3,
                         f"medians; ratio = median of {len(cpu['ratio_fcmon_raw_windows'])} per-window ratios "
                         f"(clients running at the same time, {cpu['rate_per_s']:g} probes/s each)"))
        if bb:
            rb = cpu.get("ratio_fcmon_blackbox_median")
            rows.append(_row("1. CPU per probe: fcmon daemon (3 calls) vs blackbox_exporter (1 call, via /probe)",
                             _f(fc, " ms"), _f(bb, " ms"), _f(rb, "x"), "<= 1.5x", rb is not None and rb <= 1.5))
        else:
            rows.append(_row("1. CPU per probe vs blackbox_exporter", "skipped", "n/a", "n/a", "<= 1.5x", None,
                             f"blackbox_exporter: {cpu.get('blackbox_status')}"))
        req, loop, raw2 = cpu.get("requests_ms_median"), cpu.get("probeloop_ms_median"), cpu.get("raw_info_ms_median")
        if req and raw2:
            rows.append(_row("(info) plain requests.Session + prebuilt SSL context, 3 calls",
                             _f(req, " ms"), _f(raw2, " ms"), _f(cpu.get("ratio_requests_raw_median"), "x"), "",
                             None, "the issue's second reference row; measured beside a second raw run"))
        if loop and raw2:
            rows.append(_row("(info) fcmon Prober.probe + MetricsStore.record in a loop, no daemon",
                             _f(loop, " ms"), _f(raw2, " ms"), _f(cpu.get("ratio_probeloop_raw_median"), "x"), "",
                             None, "the probe path alone: the daemon's machinery costs the difference"))
    elif cpu:
        rows.append(_row("1. CPU per probe", "error", "", "", "", False, cpu["error"]))

    fid = results.get("fidelity")
    if fid and "error" not in fid:
        for d in fid["delays"]:
            diff = d["diff_ms"]
            rows.append(_row(
                f"2. Fidelity, listDatabases delay {d['delay_ms']:g} ms: fcmon step - delay vs raw - delay",
                _f(d["fcmon_minus_delay_ms"], " ms", 3), _f(d["raw_minus_delay_ms"], " ms", 3),
                f"{diff:+.3f} ms", "|diff| <= 0.3 ms", abs(diff) <= 0.3,
                f"medians of {fid['probes_each']} each; paired median diff {d['paired_diff_median_ms']:+.3f} ms"))
    elif fid:
        rows.append(_row("2. Fidelity", "error", "", "", "", False, fid["error"]))

    steps = (results.get("scale") or {}).get("steps", [])
    ok_steps = [s for s in steps if "error" not in s]
    big = max(ok_steps, key=lambda s: s["targets"]) if ok_steps else None
    for s in steps:
        if "error" in s:
            rows.append(_row(f"3. Scale, {s['targets']} targets", "error", "", "", "", False, s["error"]))
    if big is not None:
        n = big["targets"]
        lost = big["skipped_healthy"] + big["missed_healthy"]
        rows.append(_row(f"3. Scale {n} targets: skipped + missed probes of healthy targets",
                         f"{big['skipped_healthy']:g} + {big['missed_healthy']:g}", "0", "", "= 0", lost == 0,
                         f"{big['duration_s'] / 60:g} min at {big['interval_s']:g} s, {big['hanging']} hanging targets"
                         + (f"; {big['missed_targets']} targets each lost a run, all with a first run due "
                            f"<= {big['missed_max_first_offset_s']:g} s after start"
                            + (" (results of probes that ran while scheduler.update() was still adding jobs "
                               "are dropped)" if big["missed_max_first_offset_s"] < 5 else "")
                            if big.get("missed_targets") else "")))
        p99 = big["steady"]["lateness"]["p99_s"]
        p99w = big["whole_run"]["lateness"]["p99_s"]
        rows.append(_row(f"3. Scale {n} targets: p99 start lateness (steady state)", _f(p99, " s", 3), "2 s",
                         _f(p99 / 2.0 if p99 is not None else None, "x"), "< 2 s", p99 is not None and p99 < 2.0,
                         f"whole run incl. first round: p99 {_f(p99w, ' s', 3)}; hypervisor steal during the "
                         f"window {big['steady'].get('steal_fraction', 0) * 100:.1f}% of the machine"))
        rows.append(_row(f"3. Scale {n} targets: healthy targets with fcmon_up 1",
                         f"{big['up_healthy']}/{big['healthy']}", f"{big['healthy']}", "", "all",
                         big["up_healthy"] == big["healthy"]))
        rows.append(_row(f"3. Scale {n} targets: emulator open sessions after fcmon stopped",
                         f"{big['emulator_open_sessions_after_stop']}", "0", "", "= 0",
                         big["emulator_open_sessions_after_stop"] == 0,
                         f"{big['emulator_sessions_created']} sessions created"))
        one = big.get("companion_one_target")
        if one:
            rows.append(_row("4. Memory: RSS with 1 target", _f(one["rss_mb_at_end"], " MB", 1), "50 MB",
                             _f(one["rss_mb_at_end"] / 50, "x"), "<= 50 MB", one["rss_mb_at_end"] <= 50,
                             f"after {one['age_s'] / 60:.1f} min"))
        rows.append(_row(f"4. Memory: RSS with {n} targets", _f(big["rss_mb_at_end"], " MB", 1), "120 MB",
                         _f(big["rss_mb_at_end"] / 120, "x"), "<= 120 MB", big["rss_mb_at_end"] <= 120,
                         f"after {big['duration_s'] / 60:g} min; sampled peak {_f(big['rss_mb_peak_sampled'], ' MB', 1)}"))
        sc = big.get("scrape")
        if sc:
            rows.append(_row(f"5. Scrape: /metrics with {n} targets, median of {sc['scrapes']} "
                             f"(every {sc['spacing_s']:g} s, as Prometheus would)",
                             _f(sc["median_s"], " s", 3), "0.5 s", _f(sc["median_s"] / 0.5, "x"), "<= 0.5 s",
                             sc["median_s"] <= 0.5,
                             f"max {_f(sc['max_s'], ' s', 3)}; back to back (few targets changed): median "
                             f"{_f(sc['back_to_back_median_s'], ' s', 3)}; gzipped (as Prometheus asks) back to back: median "
                             f"{_f(sc.get('gzip_back_to_back_median_s'), ' s', 3)}, "
                             f"{sc.get('gzip_bytes', 0) / 1e6:.2f} MB on the wire; {sc['bytes'] / 1e6:.1f} MB, "
                             f"{sc['lines']} lines"))
            lat = sc["lateness_during_phase"]
            frac = sc["probes_during_phase"] / max(1.0, sc["probes_expected_during_phase"])
            blocked_ok = (lat["p99_s"] is not None and lat["p99_s"] < 2.0) and frac >= 0.9
            rows.append(_row("5. Scrape: probes keep running while it renders (during the scrape phase)",
                             f"p99 lateness {_f(lat['p99_s'], ' s', 3)}, {frac * 100:.0f}% of due probes done",
                             "p99 < 2 s", "", "not blocked", blocked_ok,
                             f"{sc['probes_during_phase']:g} probes in {sc['phase_wall_s']:.0f} s; "
                             f"steady state without scrapes: p99 {_f(big['steady']['lateness']['p99_s'], ' s', 3)}"))
    sv = results.get("starve")
    if sv and "error" not in sv:
        rows.append(_row(
            f"Isolation: {sv['healthy']} healthy targets beside {sv['hanging']:,} of a dead server, all on "
            f"{sv['host']}: due probes of the healthy ones done",
            f"{sv['healthy_done']}/{sv['healthy_due']}", f"{sv['healthy_due']}",
            f"{sv['healthy_done_fraction'] * 100:.0f}%", ">= 90%", sv["healthy_done_fraction"] >= 0.9,
            f"interval {sv['interval_s']:g} s, timeout {sv['timeout_s']:g} s, {sv['duration_s']:g} s, default "
            f"per-server cap; fewest healthy targets probed in a 10 s window after 30 s: "
            f"{sv['min_healthy_probed_per_window_after_30s']}; skips "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(sv["skipped_by_kind_and_reason"].items()) if v)
            + f"; stop {sv['stop_s']:.1f} s"))
    st = results.get("startup")
    if st and "error" not in st:
        n, iv = st["targets"], st["interval_s"]
        listen, ready = st["listening_s"], st["ready_s"]
        rows.append(_row(f"6. Start-up with {n} targets: listening (/-/healthy 200)",
                         _f(listen, " s", 3), "1 s", _f(listen, "x"), "<= 1 s", listen <= 1.0))
        second = st["second_probes_done"]
        rows.append(_row(f"6. Start-up with {n} targets: /-/ready 200 (every target probed once)",
                         _f(ready, " s", 3), "1 s", _f(ready, "x"), "<= 1 s", ready <= 1.0,
                         f"{st['up_at_ready']}/{n} up at ready; first probes 5 ms apart, 10 ms after the first 200 (span of their ends "
                         f"{_f(st['first_round_span_s'], ' s', 3)}); then on phases spread over the {iv:g} s "
                         f"interval: second probes done by 0.75 / 1.25 intervals {second['0.75']:g} / "
                         f"{second['1.25']:g} of {n} (flat: about {n // 4} / {3 * n // 4})"))
    elif st:
        rows.append(_row("6. Start-up", "error", "", "", "", False, st["error"]))
    li = results.get("listeners")
    if li and "error" not in li:
        over = li.get("overhead")
        rows.append(_row(
            f"Listeners (issue 11): {li['targets']} targets x {li['listeners_per_target']} TLS listeners, "
            f"interval {li['interval_s']:g} s, listener_interval {li['listener_interval_s']:g} s: extra CPU",
            _f(None if over is None else over * 100, " %", 1),
            f"{li['cpu_cores']['none']:.4f} cores without listeners", "", "< 10 %",
            over is not None and over < 0.10,
            f"fcmon listeners = auto vs none side by side over the same {li['window_s']:.0f} s of steady state "
            f"({li['rounds_in_window']:g} rounds = {li['rounds_per_s']:.3f}/s, steady rate "
            f"{li['steady_rounds_per_s']:.3f}/s; {li['probes']['auto']:g} / {li['probes']['none']:g} probes); "
            f"{_f(li['cpu_ms_per_round'], ' ms', 2)} per round (listServices + 2 handshakes), first round at "
            f"start-up {_f(li['first_round_cpu_ms_per_round'], ' ms', 2)} per round; {li['listeners_up']} "
            f"listeners up, {li['discovery_ok']} discoveries ok; steal {li['steal_fraction'] * 100:.1f}%"))
    elif li:
        rows.append(_row("Listeners (issue 11)", "error", "", "", "", False, li["error"]))
    for s in ok_steps:
        if s.get("ready_premature_s") is not None:
            rows.append(_row(f"(finding) {s['targets']} targets: /-/ready answered 200 before the first round",
                             f"200 at {s['ready_premature_s']:.2f} s, 503 after, 200 again at {_f(s['ready_s'], ' s', 1)}",
                             "", "", "", False,
                             "scheduler.update() fills the pending-first set after adding the jobs"))
    hostile = results.get("hostile")
    if hostile and "error" not in hostile:
        b, d, a = hostile["before"], hostile["during"], hostile["after"]
        answered = d["scrapes"] > 0 and d["scrape_failures"] == 0
        back = a["at_end"]["rss_mb"] - b["at_end"]["rss_mb"]
        rows.append(_row(
            f"7. Hostile callers: /metrics ({hostile['targets']} targets) under {hostile['clients']:,} slow clients",
            f"median {_f(d['scrape_median_s'], ' s', 3)}, max {_f(d['scrape_max_s'], ' s', 3)}, "
            f"{d['scrapes']} answered, {d['scrape_failures']} failed",
            f"before {_f(b['scrape_median_s'], ' s', 3)}, after {_f(a['scrape_median_s'], ' s', 3)}", "",
            "every scrape answered; RSS back within 20 MB", answered and back < 20,
            f"RSS before / peak during / after: {b['at_end']['rss_mb']:.1f} / {d['peak']['rss_mb']:.1f} / "
            f"{a['at_end']['rss_mb']:.1f} MB; threads {b['at_end']['threads']:g} / {d['peak']['threads']:g} / "
            f"{a['at_end']['threads']:g}; descriptors {b['at_end']['fds']:g} / {d['peak']['fds']:g} / "
            f"{a['at_end']['fds']:g}; {hostile['attack']['connects']:,} slow connects in "
            f"{hostile['attack']['seconds']:g} s, {hostile['attack']['dropped_by_fcmon']:,} dropped by the "
            f"whole-request deadline; {hostile['probes_during']:g} probes meanwhile, "
            f"{hostile['probe_failures_during']:g} failed"))
        pp = hostile.get("page_pollers")
        if pp:
            idle = pp["idle"]["metrics_median_s"]
            twenty = next((ph for ph in pp["phases"] if ph["pollers"] == 20 and ph["path"] == "/"), None)
            busy = None if twenty is None else twenty["metrics_median_s"]
            ratio = None if idle is None or busy is None or idle <= 0 else busy / idle
            many = pp["sigterm"][-1] if pp["sigterm"] else None
            rows.append(_row(
                f"7b. Page pollers: /metrics ({pp['targets']:,} targets) with 20 pollers of /",
                f"median {_f(busy, ' s', 3)}", f"idle {_f(idle, ' s', 3)}", _f(ratio, "x", 1), "< 2x",
                ratio is not None and ratio < 2.0,
                "" if many is None else (
                    f"{many['pollers']:,} pollers of /: peak RSS {many['peak_rss_mb']:.0f} MB (from "
                    f"{many['rss_mb_before']:.0f}), /metrics median {_f(many['metrics_median_s'], ' s', 2)} "
                    f"({many['scrapes']} answered, {many['failures']} failed), SIGTERM to exit "
                    f"{_f(many['sigterm_s'], ' s', 1)}; answers to the pollers {many['answers']}")))
        front = hostile.get("front_door") or {}
        tls = front.get("tls_idle")
        if tls:
            grew = tls["rss_peak_mb"] - tls["rss_before_mb"]
            rows.append(_row(
                f"7c. {tls['connections']:,} idle connections to a [web] TLS endpoint (issue 16)",
                f"RSS {tls['rss_before_mb']:.0f} -> peak {tls['rss_peak_mb']:.0f} MB (+{grew:.0f} MB)",
                "was 50 -> 1,346 MB", "",
                "at most ~100 MB more", grew <= 100,
                f"held {tls['seconds']:g} s, replaced when dropped ({tls['connects']:,} connects); peak "
                f"{tls['peak_descriptors']:,} descriptors; after: {tls['rss_after_mb']:.0f} MB; a scrape "
                f"during: {'answered' if tls['scrape_during_ok'] else 'FAILED'}"))
        for key in ("one_address", "one_address_held_back"):
            one = front.get(key)
            if not one:
                continue
            rows.append(_row(
                f"7d. {one['connections']:,} connections from one address, scraper from another, per-client "
                f"limit {one.get('per_client_limit', 'default')} (issue 16)",
                f"{one['answered']} of {one['scrapes']} scrapes answered, median "
                f"{_f(one['scrape_median_s'], ' s', 3)}, max {_f(one['scrape_max_s'], ' s', 3)}",
                "was 2 of 19", "", "every scrape answered", one["failed"] == 0,
                f"descriptor limit {front['descriptor_limit']:,} (cap 4,096); peak {one['peak_descriptors']:,} "
                f"descriptors; rejected: " + ", ".join(f"{k} {v:,.0f}" for k, v in one["rejected"].items())))
        pb = hostile.get("probe_back_to_back")
        if pb:
            bound = pb["seconds"] / 5.0 + 1  # the default probe_reuse_window
            rows.append(_row(
                "7e. /probe back to back on one connection: FairCom logins",
                f"{pb['logins']} in {pb['seconds']:.1f} s", f"{pb['calls']:,} calls", "",
                f"<= {bound:.0f} (one per 5 s window + 1)", pb["logins"] <= bound,
                f"answers {pb['statuses']}; before the reuse window: 1,000 logins in 9.1 s"))
    elif hostile:
        rows.append(_row("7. Hostile callers", "error", "", "", "", False, hostile["error"]))
    return rows


def growth_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for s in (results.get("scale") or {}).get("steps", []):
        if "error" in s:
            continue
        st = s["steady"]
        out.append({
            "targets": s["targets"], "probes_per_s": s["expected_probes_per_s"],
            "cpu_cores": st["cpu_cores"], "cpu_ms_per_probe": st["cpu_ms_per_probe"],
            "lateness_p50_s": st["lateness"]["p50_s"], "lateness_p99_s": st["lateness"]["p99_s"],
            "lateness_p99_whole_s": s["whole_run"]["lateness"]["p99_s"],
            "rss_mb": s["rss_mb_at_end"], "threads": s["threads_at_end"],
            "skipped_healthy": s["skipped_healthy"], "missed_healthy": s["missed_healthy"],
            "up": f"{s['up_healthy']}/{s['healthy']}", "open_sessions": s["emulator_open_sessions_after_stop"],
            "listening_s": s["listening_s"], "ready_s": s.get("ready_s"), "duration_s": s["duration_s"],
        })
    return out


def markdown(results: Dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# fcmon benchmark",
        "",
        f"Run {results['started']} ({results['total_s'] / 60:.1f} min{', --quick' if results['quick'] else ''}). "
        f"Python {m['python']}, {m['nproc']} CPUs ({m.get('cpu', '?')}), {m.get('openssl', '')}, "
        f"load average at start {' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, "
        f"at end {' '.join(f'{x:.2f}' for x in results.get('loadavg_at_end', []))}. "
        f"fcmon at commit {m.get('fcmon_commit', '?')}"
        + (f" with uncommitted changes in {', '.join(m['uncommitted_changes'])}" if m.get("uncommitted_changes") else "")
        + ". "
        "Loopback, emulator in its own process, ECDSA P-256, TLS 1.3. The machine is shared and noisy: "
        "medians and ratios measured side by side in this run are what count.",
        "",
        "| goal | measured | reference | ratio | limit | result | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        verdict = "n/a" if r["pass"] is None else ("PASS" if r["pass"] else "**FAIL**")
        lines.append(f"| {r['goal']} | {r['measured']} | {r['reference']} | {r['ratio']} | {r['limit']} | "
                     f"{verdict} | {r['note']} |")
    growth = results.get("growth") or []
    if growth:
        lines += [
            "",
            "## Growth (30 s interval, 10% of targets hanging, steady state = after the first interval)",
            "",
            "| targets | probes/s | CPU (cores) | CPU/probe | lateness p50 | p99 | p99 whole run | RSS | threads "
            "| skipped+missed (healthy) | up | open sessions | listening | ready | run |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for g in growth:
            lines.append(
                f"| {g['targets']} | {g['probes_per_s']:.1f} | {g['cpu_cores']:.2f} | {g['cpu_ms_per_probe']:.2f} ms "
                f"| {_f(g['lateness_p50_s'], ' s', 3)} | {_f(g['lateness_p99_s'], ' s', 3)} "
                f"| {_f(g['lateness_p99_whole_s'], ' s', 3)} | {g['rss_mb']:.1f} MB | {g['threads']} "
                f"| {g['skipped_healthy']:g}+{g['missed_healthy']:g} | {g['up']} | {g['open_sessions']} "
                f"| {g['listening_s']:.2f} s | {_f(g['ready_s'], ' s', 1)} | {g['duration_s']:g} s |")
    cpu = results.get("cpu")
    if cpu and "error" not in cpu:
        lines += ["", "## CPU per probe, every window (ms)", ""]
        lines.append(f"Clients at the same time, same rate, same windows ({cpu['window_s']:g} s each).")
        lines.append("")
        for key in ("raw", "fcmon", "blackbox", "raw_info", "requests", "probeloop"):
            ws = cpu.get(key) or []
            if ws:
                lines.append(f"- {key}: " + ", ".join(f"{w['ms_per_probe']:.2f}" for w in ws)
                             + f" (median {cpu[key + '_ms_median']:.2f})")
        for key in ("fcmon_raw", "fcmon_blackbox", "requests_raw", "probeloop_raw"):
            ws = cpu.get(f"ratio_{key}_windows") or []
            if ws:
                lines.append(f"- ratio {key.replace('_', '/')} per window: " + ", ".join(f"{x:.2f}" for x in ws))
        lines.append(f"- setup: {cpu['fcmon_setup']}; blackbox_exporter: {cpu.get('blackbox_status')}; "
                     f"hypervisor steal during the suite {cpu.get('steal_fraction', 0) * 100:.1f}% of the machine")
    fid = results.get("fidelity")
    if fid and "error" not in fid:
        lines += ["", "## Fidelity (ms)", "", f"{fid['method']}.", "",
                  "| delay | fcmon median | raw median | diff | paired diff | fcmon p10-p90 | raw p10-p90 |",
                  "|---|---|---|---|---|---|---|"]
        for d in fid["delays"]:
            lines.append(f"| {d['delay_ms']:g} | {d['fcmon_median_ms']:.3f} | {d['raw_median_ms']:.3f} "
                         f"| {d['diff_ms']:+.3f} | {d['paired_diff_median_ms']:+.3f} "
                         f"| {d['fcmon_p10_p90_ms'][0]:.2f}-{d['fcmon_p10_p90_ms'][1]:.2f} "
                         f"| {d['raw_p10_p90_ms'][0]:.2f}-{d['raw_p10_p90_ms'][1]:.2f} |")
    lines += ["", "## Durations and method", ""] + [f"- {d}" for d in results.get("durations", [])]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines.append("")
    return "\n".join(lines)


def write(results: Dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["rows"] = goal_rows(results)
    results["growth"] = growth_rows(results)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "latest.md").write_text(markdown(results))
