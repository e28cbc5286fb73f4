"""The systemd notify protocol: one datagram on $NOTIFY_SOCKET, no dependency.

Also the watchdog decision, kept pure so it can be tested without a clock:
systemd restarts the service when the pings stop, so the pings must stop
exactly when the daemon no longer does its job (probes stop completing),
not merely when the process dies.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Iterable, Mapping, Optional

log = logging.getLogger(__name__)

#: Seconds added to interval + timeout before a scheduler counts as wedged.
#: A probe ends within timeout + 1 s (its hard deadline); the rest absorbs
#: scheduling latency on a loaded host.
STALL_SLACK = 5.0


def notify_address(value: Optional[str]) -> Optional[str]:
    """$NOTIFY_SOCKET -> an address for sendto(), or None when unusable.

    `@name` is the abstract namespace (a leading NUL byte for the kernel);
    otherwise only absolute paths, as in sd_notify(3). A relative path would
    depend on the working directory, so it is refused rather than guessed.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%s is neither an absolute path nor an @abstract name: "
                "not notifying systemd", value)
    return None


def watchdog_interval(environ: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds of $WATCHDOG_USEC when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) <= 0:
        return None
    # WATCHDOG_PID, when set, names the process the watchdog is meant for: a
    # child that inherited the environment must not ping on its parent's behalf.
    wanted = environ.get("WATCHDOG_PID", "").strip()
    if wanted and wanted != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


def stall_limit(intervals: Iterable[float], timeouts: Iterable[float]) -> float:
    """Seconds without any completed probe after which the scheduler counts as wedged.

    One target alone completes a probe at least every interval + timeout + 1 s
    (a quick probe right after its run starts, then a probe that runs into
    its deadline). A run skipped because the previous one overran is covered
    too: that needs timeout + 1 > interval, and then two intervals are still
    below interval + timeout + 1. Any target's completion counts, so the
    largest interval and timeout bound the gap for all of them.
    """
    intervals, timeouts = list(intervals), list(timeouts)
    if not intervals:
        return 60.0
    return max(intervals) + max(timeouts, default=0.0) + STALL_SLACK


def probes_keep_completing(
    *,
    scheduler_running: bool,
    scheduled_targets: int,
    last_completion: Optional[float],
    since: float,
    now: float,
    limit: float,
) -> bool:
    """Whether the daemon is doing its job: the source of WATCHDOG=1 and /-/healthy.

    `since` is when the clock started: the daemon's start, or the last reload
    that rescheduled the jobs (a probe cut short by a reload reports nothing).
    All times are monotonic seconds.
    """
    if not scheduler_running:
        return False
    if scheduled_targets == 0:
        return True  # probes run on request only: nothing can stall
    reference = since if last_completion is None else max(last_completion, since)
    return now - reference < limit


def watchdog_ping_due(now: float, last_ping: Optional[float], interval: float) -> bool:
    """Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises."""
    return last_ping is None or now - last_ping >= interval / 2


class Notifier:
    """Sends sd_notify messages; does nothing when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self._address = notify_address(environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval(environ) if self._address else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def address(self) -> Optional[str]:
        """The address as systemd spells it (`@name` for the abstract namespace)."""
        return None if self._address is None else self._address.replace("\0", "@", 1)

    def send(self, *fields: str) -> bool:
        """Send one message of `KEY=value` fields; False if it could not be sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            # Once per outage: a missing socket would otherwise log every tick.
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify to %s works again", self.address)
            self._failed = False
        return True
