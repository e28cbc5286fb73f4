"""How bad it is: one rule for certificates, targets and listeners, in every output.

The status page, /api/v1/status, `fcmon check` (text, JSON, perfdata), the
alert rules and the dashboard's colours judge the same way (held to this
module by tests/test_status.py::test_the_threshold_boundary_is_the_same_everywhere,
tests/test_alerts.py::test_certificate_alerts_fire_at_the_level_fcmon_levels_gives
and ::test_dashboard_colours_certificates_as_levels_does):

- a certificate with `d` days left (exact, from its notAfter) is `expired`
  when d < 0, `critical` when d < crit (7), `warning` when d < warn (30),
  else `ok`. At exactly 7 days it is a warning, at exactly 30 days ok: the
  rules' `< 7 * 86400 >= 0` and `< 30 * 86400 >= 7 * 86400`, Nagios'
  perfdata ranges `30:` and `7:` (alert below the number) and Grafana's
  threshold steps at 7 and 30 (a step applies from its value up) say the
  same.
- for people (page, check's text, logs) days are whole days, rounded down
  (`days_text`): "6 days left" is critical, "7 days left" a warning, so the
  number shown never crosses a threshold the level did not. Metrics and
  JSON carry the exact value.
- a target is `critical` when its probe failed (`unknown` when the failure
  is fcmon's own, reason `internal`), when a listener is down or a
  certificate is critical or expired, or when its account holds more than
  95 % of its session limit (the census); `warning` for a warning
  certificate or more than 80 % of the session limit (where
  FcmonAccountSessionsHigh fires); `unknown` before its first probe; else
  `ok`.
- worst first: down, then critical, warning, not yet probed, up; config
  order within each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

from .certs import CERT_CRIT_DAYS, CERT_WARN_DAYS
from .listeners import ListenerRound
from .result import CertInfo, ProbeResult, SessionCensus

SECONDS_PER_DAY = 86400.0

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
# Nagios exit codes of the levels
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
_SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}


# The account's sessions above these percentages of its limit: warning,
# critical (`fcmon check --sessions-warn / --sessions-crit`).
SESSIONS_WARN_PERCENT = 80.0
SESSIONS_CRIT_PERCENT = 95.0


@dataclass(frozen=True)
class Thresholds:
    warn_days: float = CERT_WARN_DAYS
    crit_days: float = CERT_CRIT_DAYS
    sessions_warn_percent: float = SESSIONS_WARN_PERCENT
    sessions_crit_percent: float = SESSIONS_CRIT_PERCENT


DEFAULT_THRESHOLDS = Thresholds()


def days_left(cert: CertInfo, now: float) -> float:
    return (cert.not_after - now) / SECONDS_PER_DAY


def cert_level(days: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """`ok`, `warning`, `critical` or `expired` (see the module's rule)."""
    if days < 0:
        return "expired"
    if days < thresholds.crit_days:
        return "critical"
    if days < thresholds.warn_days:
        return "warning"
    return "ok"


def whole_days(days: float) -> int:
    """The people rule: whole days, rounded down (towards the past)."""
    return int(math.floor(days))


def days_text(days: float) -> str:
    """"12 days left", "less than a day left", "expired 3 days ago"."""
    if days < 0:
        ago = whole_days(-days)
        if ago == 0:
            return "expired less than a day ago"
        return f"expired {ago} day{'s' if ago != 1 else ''} ago"
    left = whole_days(days)
    if left == 0:
        return "less than a day left"
    return f"{left} day{'s' if left != 1 else ''} left"


@dataclass(frozen=True)
class Judgement:
    level: str  # OK, WARNING, CRITICAL, UNKNOWN
    why: str  # one line, for people


def _worse(a: Judgement, b: Judgement) -> Judgement:
    return b if _SEVERITY[b.level] > _SEVERITY[a.level] else a


def _cert_judgement(certs: Iterable[CertInfo], now: float, thresholds: Thresholds, where: str = "") -> Judgement:
    worst = Judgement(OK, "")
    for c in certs:
        level = cert_level(days_left(c, now), thresholds)
        if level == "ok":
            continue
        found = Judgement(WARNING if level == "warning" else CRITICAL,
                          f"{where}{c.role} certificate {c.subject}: {days_text(days_left(c, now))}")
        worst = _worse(worst, found)
    return worst


def judge_probe(result: Optional[ProbeResult], now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Judgement:
    if result is None:
        return Judgement(UNKNOWN, "not yet probed")
    f = result.failure
    if f is not None:
        # fcmon's own failure says nothing about the server: UNKNOWN, as a
        # Nagios plugin that could not do its check.
        return Judgement(UNKNOWN if f.reason == "internal" else CRITICAL,
                         f"probe failed at {f.stage}: {f.reason} ({f.message})")
    up = Judgement(OK, f"up, {result.databases} databases in {result.duration:.3f}s")
    certs = _cert_judgement(result.certs, now, thresholds)
    return up if certs.level == OK else certs


def judge_listeners(round_: Optional[ListenerRound], now: float,
                    thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Judgement:
    """A failed listener is critical; its certificates are judged like the server's."""
    worst = Judgement(OK, "")
    if round_ is None:
        return worst
    for x in round_.results:
        where = f"listener {x.listener.name} (port {x.listener.port})"
        if x.reason is not None:
            return Judgement(CRITICAL, f"{where} failed: {x.reason} ({x.message})")
        worst = _worse(worst, _cert_judgement(x.certs, now, thresholds, where + " "))
    return worst


def judge_sessions(census: Optional[SessionCensus], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Judgement:
    """The account's headroom: its live sessions above a percentage of its limit."""
    if census is None or census.limit <= 0:
        return Judgement(OK, "")
    percent = 100.0 * census.sessions / census.limit
    why = (f"account has {census.sessions} of {census.limit} sessions ({percent:.0f}%, "
           f"{census.fcmon} fcmon's): which application shares it?")
    if percent > thresholds.sessions_crit_percent:
        return Judgement(CRITICAL, why)
    if percent > thresholds.sessions_warn_percent:
        return Judgement(WARNING, why)
    return Judgement(OK, "")


def judge(result: Optional[ProbeResult], listeners: Optional[ListenerRound], now: float,
          thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Judgement:
    """The target's level and the one line that says why (the worst thing)."""
    probe = judge_probe(result, now, thresholds)
    if result is not None and result.failure is not None:
        return probe  # the probe's failure is what matters first
    worst = _worse(probe, judge_listeners(listeners, now, thresholds))
    return _worse(worst, judge_sessions(result.census if result is not None else None, thresholds))


# -- worst first

def rank(state: str, level: str) -> int:
    """Sort key: down, critical, warning, not yet probed, up."""
    if state == "down":
        return 0
    return {CRITICAL: 1, WARNING: 2, UNKNOWN: 3, OK: 4}[level]


def worst_first(items: Sequence[Tuple[str, str]]) -> Tuple[int, ...]:
    """Indexes of (state, level) pairs, worst first; stable within a rank."""
    return tuple(sorted(range(len(items)), key=lambda i: rank(*items[i])))
