"""The account's sessions as the server reports them (describeSessions), and
which of them are fcmon's own orphans.

Pure parsing: no sockets, no clocks. The probe sends describeSessions on its
own connection and hands the answer here; what comes back is a
`SessionCensus` or a `CensusUnavailable` naming why not. Every field is
optional and checked for its type: none of this is verified against a real
FairCom server (docs/design-notes.md#faircom-sessions-of-an-account).

Ages. `sessionStartTimestamp` and `sessionLastAccessedTimestamp` are the
server's local time without a zone, to the second. fcmon never compares
them with its own clock (another zone, another clock, a skew): every age
is measured against the server's own timestamp of the probe's current
session (its `sessionLastAccessedTimestamp` in the same answer, else its
`sessionStartTimestamp`, else createSession's), which the server wrote a
moment ago. The doubt left: a daylight-saving change between the two
stamps shifts an age by the change (an hour), and the stamps' one-second
resolution; the reaping margin covers the latter, and an orphan made to
look younger by the former is reaped an hour later.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .result import SessionCensus

# An fcmon session's description: "fcmon health check, instance ID".
DESCRIPTION_PREFIX = "fcmon health check"
INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INSTANCE_IN_DESCRIPTION = re.compile(r"fcmon health check, instance ([A-Za-z0-9_.-]{1,64})")
# Timestamps longer than this are not timestamps.
_STAMP_MAX = 40
# Sessions a describeSessions answer may list before fcmon stops reading
# it: FairCom's own cap is 1,024 live sessions in all.
SESSIONS_READ_MAX = 4096


def session_description(instance_id: Optional[str]) -> str:
    """What fcmon writes into each session it creates."""
    return f"{DESCRIPTION_PREFIX}, instance {instance_id}" if instance_id else DESCRIPTION_PREFIX


def description_instance(description: object) -> Optional[str]:
    """The fcmon instance id a session's description names, or None."""
    if not isinstance(description, str):
        return None
    m = _INSTANCE_IN_DESCRIPTION.fullmatch(description.strip())
    return m.group(1) if m else None


def is_fcmon(description: object) -> bool:
    """Any fcmon's session (this instance's, another's, or an older fcmon's without an id)."""
    return isinstance(description, str) and description.strip().startswith(DESCRIPTION_PREFIX)


def _sessions(action: str, error_code: int, body: Any) -> List[Any]:
    """`result.sessions` of a describeSessions or listSessions answer, or
    CensusUnavailable saying why not."""
    if error_code != 0:
        raise CensusUnavailable(f"{action} answered errorCode {error_code}")
    result = body.get("result") if isinstance(body, dict) else None
    sessions = result.get("sessions") if isinstance(result, dict) else None
    if not isinstance(sessions, list):
        raise CensusUnavailable(f"{action} answer has no result.sessions list")
    if len(sessions) > SESSIONS_READ_MAX:
        raise CensusUnavailable(f"{action} listed {len(sessions)} sessions, more than any server allows")
    return sessions


def list_sessions_request(token: str, usernames: Sequence[str]) -> dict:
    return {"api": "admin", "action": "listSessions", "authToken": token,
            "params": {"usernameFilter": list(usernames)}}


def parse_user_counts(error_code: int, body: Any, usernames: Sequence[str]) -> Tuple[Tuple[str, int], ...]:
    """listSessions' answer -> (username, live sessions) for each configured
    user name, in config order (names compare case-insensitively, as
    FairCom's do). Only the configured names: no label set grows with what
    the server sends. Raises CensusUnavailable."""
    sessions = _sessions("listSessions", error_code, body)
    counts = {name.upper(): 0 for name in usernames}
    for s in sessions:
        user = s.get("username") if isinstance(s, dict) else None
        if isinstance(user, str) and user.upper() in counts:
            counts[user.upper()] += 1
    return tuple((name, counts[name.upper()]) for name in usernames)


def describe_sessions_request(token: str) -> dict:
    return {"api": "admin", "action": "describeSessions", "authToken": token}


class CensusUnavailable(Exception):
    """describeSessions gave nothing usable; the message says why (no secret in it)."""


@dataclass(frozen=True)
class Orphan:
    token: str
    age: float  # seconds, on the server's clock


def parse_stamp(value: object) -> Optional[dt.datetime]:
    """A timestamp as FairCom writes it (local time, no zone), or with a
    zone / fraction / "Z"; aware ones in UTC. None for anything else."""
    if not isinstance(value, str) or not value or len(value) > _STAMP_MAX:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is not None:
        try:
            stamp = stamp.astimezone(dt.timezone.utc)
        except (OverflowError, ValueError):
            return None
    return stamp


def _seconds(later: Optional[dt.datetime], earlier: Optional[dt.datetime]) -> Optional[float]:
    if later is None or earlier is None or (later.tzinfo is None) != (earlier.tzinfo is None):
        return None
    return (later - earlier).total_seconds()


def parse_census(
    error_code: int,
    body: Any,
    own_token: str,
    instance_id: Optional[str],
    limit: int,
    created_stamp: object = None,
    reap_after: Optional[float] = None,
) -> Tuple[SessionCensus, List[Orphan]]:
    """describeSessions' answer -> (census, this instance's orphans oldest
    first). `reap_after`: sessions of this instance older than this many
    seconds are orphans (None: none are). Raises CensusUnavailable."""
    sessions = _sessions("describeSessions", error_code, body)
    entries = [s for s in sessions if isinstance(s, dict)]
    own = next((s for s in entries if s.get("authToken") == own_token), None)
    now: Optional[dt.datetime] = None
    if own is not None:
        now = parse_stamp(own.get("sessionLastAccessedTimestamp")) or parse_stamp(own.get("sessionStartTimestamp"))
    if now is None:
        now = parse_stamp(created_stamp)
    fcmon = 0
    oldest_idle: Optional[float] = None
    orphans: List[Orphan] = []
    for s in entries:
        description = s.get("description")
        token = s.get("authToken")
        if is_fcmon(description):
            fcmon += 1
        idle = _seconds(now, parse_stamp(s.get("sessionLastAccessedTimestamp")))
        if idle is not None:
            oldest_idle = max(oldest_idle or 0.0, idle, 0.0)
        if (reap_after is None or instance_id is None or token == own_token
                or not isinstance(token, str) or not token
                or description_instance(description) != instance_id):
            continue
        age = _seconds(now, parse_stamp(s.get("sessionStartTimestamp")))
        if age is not None and age > reap_after:
            orphans.append(Orphan(token, age))
    orphans.sort(key=lambda o: -o.age)
    # The probe's own session is live: a server that leaves it out of the
    # list still has it (the HELP promises it is counted).
    total = len(sessions) + (0 if own is not None else 1)
    census = SessionCensus(sessions=total, fcmon=fcmon + (0 if own is not None else 1), limit=limit,
                           oldest_idle=oldest_idle)
    return census, orphans
