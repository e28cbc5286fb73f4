"""Text a server chose, made safe for every renderer, once.

A FairCom server (or anything answering in its place) chooses the text of
`errorMessage`, `serverVersion`, `hostname`, database names, listener names,
certificate subjects and more. That text reaches Prometheus labels, the
status page, `/api/v1/status`, `fcmon check` (the Nagios line), the text and
JSON logs and the debug log. Each renderer would otherwise have to guard
against the same things:

- a lone surrogate (JSON allows the escape `"\\ud800"`) cannot be encoded
  as UTF-8: the renderer raises;
- a newline forges a line in the text log or ends the Nagios line early;
- NUL, ANSI escapes and the other C0/C1 controls reach terminals and plugins;
- bidirectional controls (U+202A-U+202E, U+2066-U+2069, and the marks
  U+200E, U+200F, U+061C) make a page or a log show text in another order
  than it is stored;
- unbounded length blows up labels, pages and memory.

So the result types (`fcmon/probe/result.py`, the listener results) run every
server string through `clean` when they are built: a result never holds raw
server text, and renderers need no guard of their own. See
docs/design-notes.md#server-text-is-sanitized-where-it-becomes-a-result.
"""

from __future__ import annotations

from typing import Dict, Optional

# What a replaced character becomes: visible, and valid in every encoding
# fcmon writes (UTF-8 everywhere).
REPLACEMENT = "\ufffd"
# The marker of a cut: the text went on.
ELLIPSIS = "\u2026"

# Line and column breaks become a space: the words around them stay readable.
_SPACES = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_BIDI = "\u061c\u200e\u200f" + "".join(map(chr, range(0x202A, 0x202F))) + "".join(map(chr, range(0x2066, 0x206A)))


def _table() -> Dict[int, str]:
    table: Dict[int, str] = {}
    for code in list(range(0x00, 0x20)) + [0x7F] + list(range(0x80, 0xA0)):
        table[code] = REPLACEMENT
    for code in range(0xD800, 0xE000):  # surrogates: never valid alone in a str meant for UTF-8
        table[code] = REPLACEMENT
    for ch in _BIDI:
        table[ord(ch)] = REPLACEMENT
    for ch in _SPACES:
        table[ord(ch)] = " "
    return table


_TABLE = _table()
# Every code point `clean` replaces: what it promises, which the tests hold
# every renderer's output to.
REPLACED = frozenset(_TABLE)


def clean(text: str, limit: int) -> str:
    """`text` with every control, lone surrogate and bidi control replaced
    (line breaks by a space, the rest by U+FFFD), then cut to at most
    `limit` characters (the last one an ellipsis when cut)."""
    if not (text.isprintable() and len(text) <= limit):
        # isprintable() is False for every character replaced (and for some
        # harmless ones): the common case, plain text, costs one scan.
        text = text.translate(_TABLE)
        if len(text) > limit:
            text = text[: max(limit - 1, 0)] + ELLIPSIS
    return text


def clean_optional(text: Optional[str], limit: int) -> Optional[str]:
    return None if text is None else clean(text, limit)
