"""Fault injection for the emulator: what to break, for which action, how often.

A `Fault` describes one misbehaviour (or several combined). The `FaultTable`
maps an action name, or "*" for any request, to the fault that the next
matching requests get.

Faults fall in two groups, and the split matters for leak tests:

- Faults that *replace* the answer stop the request before the API logic
  runs, so nothing happens on the server side: `hang`, `reset`,
  `http500_html`, `error_code`, `limit_reached`.
- Faults that *spoil the delivery* let the API logic run first, as a real
  server whose answer is lost or garbled on the way would: `delay`, `drip`,
  `malformed_json`, `non_object_json`, `oversized`, `missing_auth_token`.
- Answer variants let the API logic run and change only the shape of its
  answer, as servers of other releases do: `token_at`, `bare_errors`,
  `faircom_messages`, `delete_gone_as_error`, `warning_code_keys` (see
  `Variants` in state.py).
- `session_gone` lets the API logic answer, then ends the session the
  request named (or created) on the server, as an idle timeout or a restart
  would: the client's next call with that token finds no session.
  A createSession under one of these creates a session that the client may
  be unable to delete: exactly the leak a monitor must bound.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger(__name__)

ANY_ACTION = "*"
#: Where createSession's answer carries the token ("" in a Fault: the server's setting).
TOKEN_PLACES = ("both", "root", "result")


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; every field is optional and they combine.

    Order of application: `delay`, then `hang`, then `reset`, then
    `http500_html`, then `error_code` / `limit_reached`, then the API logic,
    then the body transformations (`missing_auth_token`, `oversized`,
    `malformed_json`, `non_object_json`), then `drip` for the delivery.
    `http_status` applies to every JSON answer given under the fault (a JSON
    `errorCode` must win over the status in a correct client).
    `error_message` is the errorMessage sent with `error_code` (a server's
    text reaches logs and the status page: tests send hostile ones).
    """

    delay: float = 0.0
    hang: bool = False
    drip: bool = False
    drip_interval: float = 1.0
    reset: bool = False
    http500_html: bool = False
    malformed_json: bool = False
    non_object_json: bool = False
    oversized: int = 0
    error_code: Optional[int] = None
    error_message: Optional[str] = None
    http_status: int = 200
    missing_auth_token: bool = False
    limit_reached: bool = False
    # Answer variants real clients have met (fcmon/emulator/state.py
    # `Variants`); set here they apply to this fault's requests on top of
    # the emulator's own setting.
    token_at: str = ""
    bare_errors: bool = False
    faircom_messages: bool = False
    delete_gone_as_error: bool = False
    warning_code_keys: bool = False
    session_gone: bool = False
    count: Optional[int] = None

    def __post_init__(self) -> None:
        # Validate here so a bad control request fails loudly instead of
        # producing a fault that silently never fires.
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.drip_interval <= 0:
            raise ValueError("drip_interval must be > 0")
        if self.oversized < 0:
            raise ValueError("oversized must be >= 0")
        if not 100 <= self.http_status <= 599:
            raise ValueError("http_status must be between 100 and 599")
        if self.token_at not in ("",) + TOKEN_PLACES:
            raise ValueError(f"token_at must be one of {', '.join(TOKEN_PLACES)}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1 (or None for every request)")

    def is_noop(self) -> bool:
        """True when the fault changes nothing (the control API's "clear")."""
        return dataclasses.replace(self, count=None) == Fault()

    def to_dict(self) -> Dict[str, Any]:
        """Only the fields that differ from the defaults, for readable output."""
        default = Fault()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "Fault":
        """Build from JSON (the control endpoint); unknown keys are errors."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("fault must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        kwargs: Dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _coerce(name, value)
        return cls(**kwargs)


_BOOL_FIELDS = frozenset(
    f.name for f in dataclasses.fields(Fault) if f.type in ("bool", bool)
)
_FLOAT_FIELDS = frozenset({"delay", "drip_interval"})
_INT_FIELDS = frozenset({"oversized", "http_status"})
_OPTIONAL_INT_FIELDS = frozenset({"error_code", "count"})
_OPTIONAL_STR_FIELDS = frozenset({"error_message"})
_STR_FIELDS = frozenset({"token_at"})


def _coerce(name: str, value: Any) -> Any:
    # JSON has no distinction the dataclass can rely on (true vs 1), so check
    # types explicitly rather than trusting whatever arrived.
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    if name in _STR_FIELDS:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if name in _OPTIONAL_STR_FIELDS:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if name in _FLOAT_FIELDS:
        if not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if name in _INT_FIELDS or name in _OPTIONAL_INT_FIELDS:
        if value is None and name in _OPTIONAL_INT_FIELDS:
            return None
        if not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    raise ValueError(f"unknown fault field: {name}")  # pragma: no cover


@dataclass(frozen=True)
class _Entry:
    fault: Fault
    remaining: Optional[int]


class FaultTable:
    """Thread-safe action -> fault map with per-entry use counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[str, _Entry] = {}

    def set(self, action: str, fault: Fault) -> None:
        if not action:
            raise ValueError("action must be a non-empty string (or '*')")
        with self._lock:
            if fault.is_noop():
                self._entries.pop(action, None)
            else:
                self._entries[action] = _Entry(fault, fault.count)
        log.info("fault for %s: %s", action, fault.to_dict() or "cleared")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def snapshot(self) -> Dict[str, Dict[str, Any]]:
        with self._lock:
            result = {}
            for action, entry in self._entries.items():
                shown = entry.fault.to_dict()
                if entry.remaining is not None:
                    shown["count"] = entry.remaining
                result[action] = shown
            return result

    def take(self, action: Optional[str]) -> Optional[Fault]:
        """The fault for one request, consuming one use of a counted fault.

        An action-specific fault wins over "*"; a request whose action could
        not be determined (bad JSON) matches only "*".
        """
        with self._lock:
            key = action if action is not None and action in self._entries else None
            if key is None and ANY_ACTION in self._entries:
                key = ANY_ACTION
            if key is None:
                return None
            entry = self._entries[key]
            if entry.remaining is not None:
                if entry.remaining <= 1:
                    del self._entries[key]
                else:
                    self._entries[key] = _Entry(entry.fault, entry.remaining - 1)
            return entry.fault
