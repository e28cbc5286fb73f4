"""`fcmon check`: probe once, judge, print; Nagios plugin exit codes."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from ..probe import debuglog, levels
from ..export import schema
from ..probe.certs import CERT_CRIT_DAYS, CERT_WARN_DAYS
from ..config import MAX_CONNECTIONS_PER_HOST, TargetConfig
from ..probe.flight import Flights
from ..probe.listeners import ListenerChecker, ListenerRound
from ..export.metrics import FcmonCollector, MetricsStore
from ..probe.run import Prober
from ..probe.result import CertInfo, ProbeResult
from ..runbook import RUNBOOK_URL

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Verdict:
    result: ProbeResult
    status: int
    why: str
    # the target's listener round (None when it checks no listener)
    listeners: Optional[ListenerRound] = None


def judge(result: ProbeResult, warn_days: float, crit_days: float, now: float,
          listeners: Optional[ListenerRound] = None, sessions_warn: float = levels.SESSIONS_WARN_PERCENT,
          sessions_crit: float = levels.SESSIONS_CRIT_PERCENT) -> Verdict:
    """The one rule of fcmon/probe/levels.py, as a Nagios status."""
    j = levels.judge(result, listeners, now, levels.Thresholds(warn_days, crit_days, sessions_warn, sessions_crit))
    return Verdict(result, levels.EXIT_CODES[j.level], j.why, listeners)


def sessions_perfdata(result: ProbeResult, warn_percent: float, crit_percent: float) -> List[str]:
    """The account's sessions from the census, `label=N;warn;crit;0;limit` (thresholds as counts)."""
    c = result.census
    if c is None:
        return []
    warn, crit = c.limit * warn_percent / 100.0, c.limit * crit_percent / 100.0
    return [f"{_perf_label(result.target, 'account_sessions')}={c.sessions};{warn:g};{crit:g};0;{c.limit}",
            f"{_perf_label(result.target, 'account_sessions_fcmon')}={c.fcmon};;;0;{c.limit}",
            f"{_perf_label(result.target, 'sessions_reaped')}={c.reaped}c"]


def probe_all(targets: Sequence[TargetConfig], prober: Optional[Prober] = None,
              max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST) -> List[ProbeResult]:
    prober = prober or Prober()
    flights = Flights(max_connections_per_host)

    def one(target: TargetConfig) -> ProbeResult:
        return flights.run(target, prober.probe)[0]

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(targets)))) as pool:
        try:
            return list(pool.map(one, targets))
        except KeyboardInterrupt:
            # Leaving the `with` waits for the probes in flight: each ends
            # within its timeout and deletes its session. Say so, or Ctrl-C
            # looks ignored.
            longest = max((t.timeout for t in targets), default=0.0)
            sys.stderr.write(f"fcmon check: interrupted; letting the probes in flight end and delete "
                             f"their sessions (at most {longest:g} s); Ctrl-C again quits at once and "
                             "may leave a session open until its idle timeout\n")
            sys.stderr.flush()
            raise


def check_all(targets: Sequence[TargetConfig], prober: Optional[Prober] = None,
              max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST) -> Tuple[List[ProbeResult], List[Optional[ListenerRound]]]:
    """Probe every target and, meanwhile, run its listener round."""
    prober = prober or Prober()
    checker = ListenerChecker(prober)
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(targets)))) as pool:
        rounds = [pool.submit(checker.run, t) if t.checks_listeners else None for t in targets]
        results = probe_all(targets, prober, max_connections_per_host)
        return results, [f.result() if f is not None else None for f in rounds]


def overall(verdicts: Sequence[Verdict]) -> int:
    return max((v.status for v in verdicts), default=UNKNOWN)


_NOT_IN_LABEL = re.compile(r"[='|\x00-\x1f\x7f]")


def _perf_label(*parts: str) -> str:
    """A Nagios perfdata label: quoted (so it may hold spaces); never `=`, `'`,
    `|` or a control character inside.

    Target names cannot hold any of them (config.py), nor can roles or hex
    serials, but a listener's name comes from the server (listServices).
    """
    return "'" + _NOT_IN_LABEL.sub("_", "_".join(parts)) + "'"


def _days(value: float) -> str:
    return f"{value:g}"


def _worst_days_by_role(certs: Sequence[CertInfo], now: float) -> Dict[str, float]:
    """Per role, the days left of the certificate that expires first: one
    series per role however many certificates (a CA bundle) or renewals."""
    out: Dict[str, float] = {}
    for c in certs:
        days = levels.days_left(c, now)
        out[c.role] = min(days, out.get(c.role, days))
    return out


def _days_perf(label: str, days: float, warn_days: float, crit_days: float) -> str:
    # Nagios ranges: `30:` alerts below 30, as levels.cert_level does (at
    # exactly 30 days: ok; at exactly 7: warning). The value is rounded
    # down to 0.01, never up: 6.999 days is critical, and as "7.00" Nagios
    # would have read it as fine.
    value = math.floor(days * 100) / 100
    return f"{label}={value:.2f};{_days(warn_days)}:;{_days(crit_days)}:"


def cert_perfdata(result: ProbeResult, warn_days: float, crit_days: float, now: float) -> List[str]:
    """Days left per certificate role, `'TARGET_cert_ROLE_days'=days;warn;crit`.

    Labelled by role, never by serial: a renewal continues the same graph.
    """
    return [_days_perf(_perf_label(result.target, "cert", role, "days"), days, warn_days, crit_days)
            for role, days in _worst_days_by_role(result.certs, now).items()]


def listener_perfdata(target: str, round_: Optional[ListenerRound], warn_days: float, crit_days: float,
                      now: float) -> List[str]:
    """Per listener: up (1/0) and days left per certificate role, like cert_perfdata."""
    if round_ is None:
        return []
    out: List[str] = []
    seen = set()
    for x in round_.results:
        up = _perf_label(target, "listener", x.listener.name, "up")
        if up in seen:  # two listeners whose names differ only in characters a label cannot hold
            continue
        seen.add(up)
        out.append(f"{up}={1 if x.up else 0};;1:")
        for role, days in _worst_days_by_role(x.certs, now).items():
            out.append(_days_perf(_perf_label(target, "listener", x.listener.name, role, "days"),
                                  days, warn_days, crit_days))
    return out


def render_text(verdicts: Sequence[Verdict], warn_days: float = CERT_WARN_DAYS, crit_days: float = CERT_CRIT_DAYS,
                now: Optional[float] = None, sessions_warn: float = levels.SESSIONS_WARN_PERCENT,
                sessions_crit: float = levels.SESSIONS_CRIT_PERCENT) -> str:
    status = overall(verdicts)
    up = sum(1 for v in verdicts if v.result.up)
    bad = [v for v in verdicts if v.status != OK]
    head = f"{STATUS_NAMES[status]} - {up} of {len(verdicts)} targets up"
    if len(verdicts) == 1:
        head = f"{STATUS_NAMES[status]} - {verdicts[0].result.target}: {verdicts[0].why}"
    elif bad:
        head += "; " + "; ".join(f"{v.result.target}: {v.why}" for v in bad)
    perf = []
    for v in verdicts:
        for step, seconds in v.result.steps:
            perf.append(f"{_perf_label(v.result.target, step)}={seconds:.6f}s")
        if v.result.databases is not None:
            perf.append(f"{_perf_label(v.result.target, 'databases')}={v.result.databases}")
        perf += cert_perfdata(v.result, warn_days, crit_days, time.time() if now is None else now)
        perf += listener_perfdata(v.result.target, v.listeners, warn_days, crit_days,
                                  time.time() if now is None else now)
        perf += sessions_perfdata(v.result, sessions_warn, sessions_crit)
    lines = [plugin_line(head) + (" | " + " ".join(perf) if perf else "")]
    if len(verdicts) > 1:
        # Nagios reads a `|` in the long text too, as more perfdata.
        lines += [plugin_line(f"{STATUS_NAMES[v.status]}: {v.result.target}: {v.why}") for v in verdicts]
    return "\n".join(lines) + "\n"


def render_json(verdicts: Sequence[Verdict], now: float, warn_days: float = CERT_WARN_DAYS,
                crit_days: float = CERT_CRIT_DAYS, endpoints: Optional[Dict[str, str]] = None,
                sessions_warn: float = levels.SESSIONS_WARN_PERCENT,
                sessions_crit: float = levels.SESSIONS_CRIT_PERCENT, runbook_url: str = RUNBOOK_URL) -> str:
    """The shared schema (fcmon/export/schema.py, README "JSON schema"), plus the
    plugin's status and exit code."""
    status = overall(verdicts)
    thresholds = levels.Thresholds(warn_days, crit_days, sessions_warn, sessions_crit)
    targets = [schema.target_doc(v.result.target, (endpoints or {}).get(v.result.target, ""), v.result,
                                 v.listeners, now, thresholds, debug_probe=False, base=runbook_url)
               for v in verdicts]
    doc = schema.document(targets, now, thresholds)
    out = {"schema": doc.pop("schema"), "status": STATUS_NAMES[status], "exit_code": status, **doc}
    return json.dumps(out, indent=2) + "\n"


def plugin_line(text: str) -> str:
    """Text safe for a Nagios plugin's first line: one line, and no `|`, which starts perfdata."""
    return " ".join(text.split()).replace("|", "/")


def config_summary(problems: Sequence[str]) -> str:
    """Every config problem on one line, the file name said once.

    Config problems never hold secrets (config.py quotes no password), so
    they can go where Nagios shows them.
    """
    if not problems:
        return "invalid config"
    prefix = problems[0].split(": ", 1)[0] + ": "
    if len(problems) > 1 and all(p.startswith(prefix) for p in problems):
        rest = "; ".join(p[len(prefix):] for p in problems)
        return f"invalid config: {prefix}{len(problems)} problems: {rest}"
    return "invalid config: " + "; ".join(problems)


def render_unknown(fmt: str, summary: str, problems: Sequence[str] = (), config_ok: Optional[bool] = None) -> str:
    """UNKNOWN (nothing was probed) in the format asked for: Nagios shows stdout."""
    line = f"{STATUS_NAMES[UNKNOWN]} - {plugin_line(summary)}"
    if fmt == "json":
        doc = schema.document([], time.time())
        out = {"schema": doc.pop("schema"), "status": STATUS_NAMES[UNKNOWN], "exit_code": UNKNOWN,
               "message": summary, "problems": list(problems), **doc}
        return json.dumps(out, indent=2) + "\n"
    if fmt == "prometheus":
        return f"# fcmon check: {line}\n" + render_prometheus((), (), config_ok).decode()
    return line + "\n"


def render_prometheus(targets: Sequence[TargetConfig], results: Sequence[ProbeResult],
                      config_ok: Optional[bool] = True,
                      rounds: Sequence[Optional[ListenerRound]] = ()) -> bytes:
    """The check's series; fcmon_config_last_reload_successful says whether its config loaded."""
    store = MetricsStore()
    if config_ok is not None:
        store.record_reload(config_ok, time.time())
    store.set_targets(targets)
    for r in results:
        store.record(r)
    for round_ in rounds:
        if round_ is not None:
            store.record_listeners(round_)
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    return generate_latest(registry)


def write_atomically(path: Path, data: bytes) -> None:
    """node_exporter must never read a half-written file: write a temp file, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def run_check(
    targets: Sequence[TargetConfig],
    fmt: str,
    warn_days: float,
    crit_days: float,
    textfile: Optional[Path],
    max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST,
    debug_log: Optional[Callable[[str], object]] = None,
    instance_id: Optional[str] = None,
    sessions_warn: float = levels.SESSIONS_WARN_PERCENT,
    sessions_crit: float = levels.SESSIONS_CRIT_PERCENT,
    runbook_url: str = RUNBOOK_URL,
) -> Tuple[int, str]:
    """Probe, judge and render; returns (exit code, output). `debug_log`
    (--verbose) gets each probe's debug log, as /probe?debug=true shows it.
    `instance_id` names this fcmon in its sessions (fcmon/service/instance.py)."""
    results, rounds = check_all(targets, Prober(instance_id=instance_id),
                                max_connections_per_host=max_connections_per_host)
    if debug_log is not None:
        debug_log("\n".join(debuglog.render(r, t, instance_id) for t, r in zip(targets, results)))
    now = time.time()
    verdicts = [judge(r, warn_days, crit_days, now, x, sessions_warn, sessions_crit)
                for r, x in zip(results, rounds)]
    if textfile is not None:
        write_atomically(textfile, render_prometheus(targets, results, rounds=rounds))
    if fmt == "json":
        text = render_json(verdicts, now, warn_days, crit_days, {t.name: t.endpoint for t in targets},
                           sessions_warn, sessions_crit, runbook_url)
    elif fmt == "prometheus":
        text = render_prometheus(targets, results, rounds=rounds).decode()
    else:
        text = render_text(verdicts, warn_days, crit_days, now, sessions_warn, sessions_crit)
    return overall(verdicts), text


def select_targets(all_targets: Sequence[TargetConfig], names: Sequence[str]) -> Tuple[List[TargetConfig], List[str]]:
    """The named targets (all when none named) and the names that match nothing."""
    if not names:
        return list(all_targets), []
    by_name: Dict[str, TargetConfig] = {t.name: t for t in all_targets}
    return [by_name[n] for n in names if n in by_name], [n for n in names if n not in by_name]
