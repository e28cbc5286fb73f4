"""The status page and /api/v1/status, rendered once per period and shared.

Rendering either page at 3,000 targets costs about 0.13 s of CPU (holding
the GIL) and 3-5 MB; rendered per request, 20 pollers kept the process busy
and a scrape waited 30 s. Here each page is a `Rendered`: the bytes, and
the same bytes gzipped, both made once, handed to every caller until the
next rebuild. A page is rebuilt when a caller asks for it and it is at
least `period` seconds old and the status changed since (or it is
`max_age` old: the page shows times relative to its snapshot); so at most
one render of each page per period, however many callers. A reload (the
operator's doing, and rare) makes the next caller rebuild it at once. While one
caller rebuilds it, the others get the previous one at once; only the very
first callers wait for the first render.

What the pages contain is `statuspage.py`'s; this module only decides
when to call its render functions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from ..export.status import StatusSnapshot

# A page is rebuilt at most this often...
PERIOD = 5.0
# ...and, when nothing changed, at least this often.
MAX_AGE = 30.0


@dataclass(frozen=True)
class Rendered:
    plain: bytes
    gzip: bytes
    built: float  # monotonic clock
    changes: int  # the status' change count it was built from
    reloads: int  # and its reload count

    def age(self, now: float) -> float:
        return max(0.0, now - self.built)


class Pages:
    """`get(kind)`: the latest rendering of one page (`renderers[kind]`)."""

    def __init__(self, status: Callable[[], StatusSnapshot],
                 renderers: Dict[str, Callable[[StatusSnapshot], bytes]],
                 compress: Callable[[bytes], bytes],
                 changes: Callable[[], int] = lambda: -1,
                 reloads: Callable[[], int] = lambda: 0,
                 period: float = PERIOD, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic):
        self._status = status
        self._renderers = dict(renderers)
        self._compress = compress
        self._changes = changes
        self._reloads = reloads
        self.period = period
        self.max_age = max_age
        self._clock = clock
        self._cond = threading.Condition()
        self._pages: Dict[str, Rendered] = {}
        self._building: Dict[str, bool] = {}
        self.renders = 0  # rebuilds done (tests, bench)

    def _stale(self, page: Rendered, now: float, changes: int, reloads: int) -> bool:
        if reloads != page.reloads:
            return True
        age = page.age(now)
        if age < self.period:
            return False
        # -1: no change count given, so assume a change
        return changes == -1 or changes != page.changes or age >= self.max_age

    def get(self, kind: str) -> Rendered:
        render = self._renderers[kind]
        with self._cond:
            while True:
                page = self._pages.get(kind)
                changes, reloads = self._changes(), self._reloads()
                if page is not None and not self._stale(page, self._clock(), changes, reloads):
                    return page
                if not self._building.get(kind):
                    break
                if page is not None:
                    return page  # another caller is rebuilding it: the previous one now
                self._cond.wait()  # the first rendering: wait for it
            self._building[kind] = True
        try:
            # The change count first: a change during the render makes the next one due.
            snapshot = self._status()
            plain = render(snapshot)
            fresh = Rendered(plain, self._compress(plain), self._clock(), changes, reloads)
        except BaseException:
            with self._cond:
                self._building[kind] = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._pages[kind] = fresh
            self._building[kind] = False
            self.renders += 1
            self._cond.notify_all()
        return fresh

    def latest(self, kind: str) -> Optional[Rendered]:
        with self._cond:
            return self._pages.get(kind)
