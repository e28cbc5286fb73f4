"""FairCom JSON DB API error codes fcmon knows, for people reading a failure.

FairCom documents few of the codes its JSON API returns. Two kinds are
listed here, and the table says which is which:

- documented: the meaning comes from FairCom's JSON API documentation
  (12031) or is a native logon code FairCom documents (84, 450, 451);
- candidate: a constant from FairCom's C SDK error header (cterrc.h) that
  the JSON API may return for that case. Which code the JSON API really
  returns for a bad password, a session limit, an unknown action or a
  permission denial is not documented, so these meanings end in
  ", candidate" wherever they are shown ("12033 (invalid password,
  candidate)").

A code not in the table is shown as the bare number. Only the meaning is
added: the errorCode itself is always shown, and metrics carry the number.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional


class Code(NamedTuple):
    meaning: str
    documented: bool  # False: a candidate constant from the C SDK header


CODES: Dict[int, Code] = {
    0: Code("success", True),
    12031: Code("authToken matches no session", True),
    -1: Code("authToken invalid or expired, older servers", True),
    84: Code("maximum users exceeded", True),
    450: Code("invalid user id", True),
    451: Code("invalid password", True),
    12033: Code("invalid password", False),  # FC_INVPASS_ERR
    12015: Code("session or connection limit reached", False),  # FC_LIMIT_ERR
    967: Code("logon limit reached", False),
    968: Code("logon limit reached", False),
    984: Code("logon limit reached", False),
    14700: Code("missing or invalid parameter", False),
    14701: Code("unknown action or method", False),
    14702: Code("parameter of the wrong type", False),
    12025: Code("missing or invalid parameter", False),
    12012: Code("missing or invalid parameter", False),
    12030: Code("not an administrator", False),
    150: Code("server shutting down", False),
}


def meaning(code: Optional[int]) -> Optional[str]:
    """What `code` means, ", candidate" appended when FairCom does not
    document it for the JSON API; None for a code not in the table."""
    if code is None or isinstance(code, bool):
        return None
    entry = CODES.get(code)
    if entry is None:
        return None
    return entry.meaning if entry.documented else f"{entry.meaning}, candidate"


def describe(code: int) -> str:
    """`12031 (authToken matches no session)`, or the bare number when unknown."""
    text = meaning(code)
    return f"{code} ({text})" if text else str(code)
