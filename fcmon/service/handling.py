"""A failure while handling a result is a failure of that target.

After a probe (or a listener round) its result goes to the metrics store,
the status board and the log. If any of that raises (a bug, a renderer
tripping over a value), swallowing the error would freeze the target's
series at the last state that rendered: `fcmon_up` stays 1 while the server
is down. Instead the target gets a result of its own failure, reason
`internal`, carrying nothing of what broke, and the error is logged at
error level, with its traceback the first time it happens at that place for
that target.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback
from typing import Callable, Set, Tuple, TypeVar

from ..probe.listeners import ListenerRound
from ..probe.result import Failure, ProbeResult

log = logging.getLogger(__name__)

T = TypeVar("T")

# Distinct (target, what, exception type, place) whose traceback was logged;
# past this many, tracebacks are no longer remembered (nor repeated).
TRACEBACKS_KEPT = 1000


def internal_result(result: ProbeResult, exc: BaseException) -> ProbeResult:
    """`result`'s target, times and steps, failed with reason `internal`;
    none of its server data (that may be what could not be handled)."""
    if result.failure is not None:
        stage = result.failure.stage
    elif result.steps:
        stage = result.steps[-1][0]
    else:
        stage = "connect"
    return ProbeResult(
        target=result.target,
        started=result.started,
        ended=result.ended,
        duration=result.duration,
        failure=Failure(stage, "internal", f"internal error handling the probe's result: {type(exc).__name__}"),
        steps=result.steps,
        session_leaked=result.session_leaked,
    )


def internal_round(round_: ListenerRound, exc: BaseException) -> ListenerRound:
    """`round_` with every listener failed with reason `internal` and no certificate."""
    message = f"internal error handling the listener round: {type(exc).__name__}"
    return ListenerRound(
        target=round_.target,
        discovery=round_.discovery,
        discovery_message=message if round_.discovery is not None else "",
        results=tuple(dataclasses.replace(r, reason="internal", message=message, certs=(), tls_version=None)
                      for r in round_.results),
        ended=round_.ended,
    )


class ResultHandling:
    """Runs a result's handler; a failure becomes the target's `internal`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged: Set[Tuple[str, str, str, str]] = set()

    def probe(self, result: ProbeResult, handle: Callable[[ProbeResult], None]) -> None:
        self._run(result.target, "the probe's result", result, handle, internal_result)

    def listeners(self, round_: ListenerRound, handle: Callable[[ListenerRound], None]) -> None:
        self._run(round_.target, "the listener round", round_, handle, internal_round)

    def _run(self, target: str, what: str, item: T, handle: Callable[[T], None],
             internal: Callable[[T, BaseException], T]) -> None:
        try:
            handle(item)
        except Exception as exc:
            self._log(target, what, exc)
            try:
                handle(internal(item, exc))
            except Exception as again:
                self._log(target, "its internal failure", again)

    def _log(self, target: str, what: str, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        key = (target, what, type(exc).__name__, place)
        with self._lock:
            first = key not in self._logged
            if first and len(self._logged) < TRACEBACKS_KEPT:
                self._logged.add(key)
        if first:
            log.error("target %s: handling %s failed (a bug in fcmon): %s; the target is reported as "
                      "failed with reason internal", target, what, type(exc).__name__, exc_info=exc)
        else:
            log.error("target %s: handling %s failed again: %s at %s (traceback logged before)",
                      target, what, type(exc).__name__, place)
