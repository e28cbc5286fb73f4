"""The /metrics text, rendered fast enough for fleets.

prometheus_client formats every sample on every scrape, with label
validation and escaping: about 2 s for 3,000 targets (180,000 lines). Here
each target's lines are rendered as bytes when its state changes, in the
thread that records the change (`MetricsStore` calls `render_target` under
its lock), and kept until it changes again: the request-duration
histograms (85% of the text) deflated, the certificate lines as labels
shared between targets. A scrape takes the store's lock only to collect
references to those fragments; then, outside any lock, it formats the
certificate values (expiry days move with the clock) and hands the WSGI
server the fragments in blocks (`Body`). Nothing is rendered per scrape
and the 17 MB body is never built as one piece.

What a target says is what `metrics.target_samples` and
`metrics.expiry_samples` say (the Collector's path, for /probe and
`check`); tests/test_exposition.py compares the two texts sample by sample.
"""

from __future__ import annotations

import functools
import time
import zlib
from array import array
from bisect import bisect_left
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from ..probe.levels import SECONDS_PER_DAY
from .metrics import (
    FAMILIES,
    REQUEST_BUCKETS,
    BY_NAME,
    Family,
    MetricsStore,
    Sample,
    _global_families,
    _Histogram,
    _TargetState,
    label_pairs,
)

# Blocks handed to the WSGI server: few enough hand-overs (about 140 for
# 3,000 targets), and small, because a client that reads slowly holds the
# block in progress: 300 slow readers of 1 MB blocks held about 900 MB.
BLOCK_BYTES = 128 * 1024


def _escape(value: str) -> str:
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # the common case, three scans instead of three copies
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(value: float) -> str:
    # Counters and codes are ints; floatToGoString would make them "3.0" too.
    if type(value) is int and -(10**15) < value < 10**15:
        return f"{value}.0"
    return floatToGoString(value)


def _line(sample: Sample) -> str:
    name, labels, value = sample
    if labels:
        inner = ",".join([f'{k}="{_escape(v)}"' for k, v in labels])
        return f"{name}{{{inner}}} {_value(value)}\n"
    return f"{name} {_value(value)}\n"


def _header(family: Family) -> str:
    name = family.name + "_total" if family.type == "counter" else family.name
    return f"# HELP {name} {family.help}\n# TYPE {name} {family.type}\n"


_HEADERS = tuple(_header(f).encode() for f in FAMILIES)


def _labels(family: Family) -> str:
    # `%s` for the target's label, then one per label of the family
    return "%s" + "".join([f',{k}="%s"' for k in family.labels])


def _histogram(family: Family) -> str:
    # One series of a histogram: (labels, cumulative count) per bucket, then
    # labels, count, labels, sum. Counts are ints: "%d.0" is what
    # floatToGoString makes of them.
    le = ["+Inf" if b == float("inf") else repr(b) for b in REQUEST_BUCKETS]
    name = family.sample
    return "".join([f'{name}_bucket{{%s,le="{x}"}} %d.0\n' for x in le]
                   + [f"{name}_count{{%s}} %d.0\n", f"{name}_sum{{%s}} %s\n"])


# Families whose series are put together per scrape (`Fragment.at_scrape`):
# those a days family counts down to. Their labels are shared between
# targets and their values formatted once per scrape.
_SCRAPED = tuple(dict.fromkeys(f.days_until for f in FAMILIES if f.days_until is not None))
# family index -> (index into Fragment.at_scrape, whether the value is days left)
_SCRAPE_INDEX = {i: (_SCRAPED.index(f.days_until or f.name), f.days_until is not None)
                 for i, f in enumerate(FAMILIES) if f.days_until is not None or f.name in _SCRAPED}
_STARTS = tuple(f"{f.sample}{{".encode() for f in FAMILIES)
_I_HISTOGRAMS = tuple(i for i, f in enumerate(FAMILIES) if f.type == "histogram" and i not in _SCRAPE_INDEX)

# The parts of a target's state that families read (`Family.source`),
# besides the state itself: each read once per render.
_SOURCES = tuple(dict.fromkeys(f.source for f in FAMILIES if f.source is not None))
# One family's series of one target: (target="NAME", what it reads) -> text
Writer = Callable[[str, Any], str]


def _plan(f: Family) -> Tuple[int, Optional[Callable[[Any], Any]], str, Optional[Writer]]:
    """How `render_target` writes family `f`, made once: (which part of the
    state it reads, 0 for the state itself; for one value: its getter and
    format string; else a writer that fills the family's format string
    (target first, then its labels, then the value) for each series)."""
    k = 0 if f.source is None else 1 + _SOURCES.index(f.source)
    if FAMILIES.index(f) in _SCRAPE_INDEX:
        return k, None, "", lambda t, x: ""  # put together per scrape
    if f.value is not None:
        return k, f.value, f"{f.sample}{{%s}} %s\n", None
    series = f.series
    assert series is not None
    if f.type == "histogram":
        fmt, labels = _histogram(f), _labels(f)
        return k, None, "", lambda t, x: "".join([_histogram_lines(fmt, labels, t, values, h)
                                                   for values, h in series(x)])
    if f.sparse:
        return k, None, "", lambda t, x: "".join([_sparse_line(f, t, values, value) for values, value in series(x)])
    fmt = f"{f.sample}{{{_labels(f)}}} %s\n"
    # one and two labels unpacked in the comprehension: most families, and
    # the fastest way Python has to fill the format
    if len(f.labels) == 1:
        return k, None, "", lambda t, x: "".join([fmt % (t, _escape(a), _value(value)) for (a,), value in series(x)])
    if len(f.labels) == 2:
        return k, None, "", lambda t, x: "".join([fmt % (t, _escape(a), _escape(b), _value(value))
                                                   for (a, b), value in series(x)])
    return k, None, "", lambda t, x: "".join([fmt % (t, *map(_escape, values), _value(value))
                                               for values, value in series(x)])


_PLAN = tuple(_plan(f) for f in FAMILIES)
# the families put together per scrape: (which part they read, labels, series)
_SCRAPED_SERIES = tuple((_PLAN[FAMILIES.index(BY_NAME[name])][0], BY_NAME[name].labels, BY_NAME[name].series)
                        for name in _SCRAPED)


class Fragment(NamedTuple):
    """One target's exposition, ready to be joined into a scrape."""

    # bytes per family in FAMILIES order (b"" where the target has no series,
    # and for the families put together per scrape); a histogram family's as
    # a raw-deflate segment (see `_deflate`)
    parts: Tuple[bytes, ...]
    # length of each histogram family's text before deflating, in FAMILIES order
    histogram_sizes: Tuple[int, ...]
    # `target="NAME"` as bytes
    target: bytes
    # per family in `_SCRAPED` (the certificate expiry times), its series:
    # (the labels after the target's, shared by every target with that
    # certificate, as `,cert="..",...} `; the value)
    at_scrape: Tuple[Tuple[Tuple[bytes, float], ...], ...]

    @property
    def histogram_size(self) -> int:
        return sum(self.histogram_sizes)


@functools.lru_cache(maxsize=8192)
def _shared_labels(names: Tuple[str, ...], values: Tuple[str, ...]) -> bytes:
    """`,name="value",...} `: one copy for every target that has this series
    (a fleet shares its client certificate and CA, often its servers' CA
    chain)."""
    return ("".join([f',{k}="{_escape(v)}"' for k, v in zip(names, values)]) + "} ").encode()


def _deflate(data: bytes) -> bytes:
    """`data` as a raw-deflate segment that ends on a byte boundary without a
    final block: such segments, concatenated, are one deflate stream that a
    single decompressor inflates to the concatenated data (no segment refers
    back into another). The request-duration histograms are 85% of the text
    and shrink about tenfold: 14 MB held for 3,000 targets becomes 1-2 MB,
    for ~10 us in the recording thread and one inflate per scrape (which
    runs without the GIL)."""
    if not data:
        return b""
    c = zlib.compressobj(1, zlib.DEFLATED, -12, 6)  # small window and state: fragments are ~4 KB
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


def render_target(name: str, s: _TargetState) -> Fragment:
    """Every line of one target (what `target_samples` says, formatted).

    Runs in the thread that recorded the change, under the store's lock, a
    hundred times a second at fleet scale: each family's format string is
    made once (`_plan`), so a line is one %-format.
    """
    t = f'target="{_escape(name)}"'
    read = [s] + [get(s) for get in _SOURCES]
    text: List[str] = []
    for k, get, fmt, write in _PLAN:
        x = read[k]
        if x is None:
            text.append("")
        elif write is not None:
            text.append(write(t, x))
        else:
            value = get(x)  # type: ignore[misc]
            text.append("" if value is None else fmt % (t, _value(value)))
    parts = [x.encode() if x else b"" for x in text]
    sizes = []
    for i in _I_HISTOGRAMS:
        sizes.append(len(parts[i]))
        parts[i] = _deflate(parts[i])
    at_scrape = tuple([() if read[k] is None else tuple([(_shared_labels(labels, values), value)
                                                         for values, value in series(read[k])])  # type: ignore[misc]
                       for k, labels, series in _SCRAPED_SERIES])
    return Fragment(tuple(parts), tuple(sizes), t.encode(), at_scrape)


def _sparse_line(f: Family, t: str, values: Tuple[Optional[str], ...], value: float) -> str:
    labels = "".join([f',{k}="{_escape(v)}"' for k, v in label_pairs(f, values)])
    return f"{f.sample}{{{t}{labels}}} {_value(value)}\n"


def _histogram_lines(fmt: str, labels: str, t: str, values: Tuple[str, ...], h: _Histogram) -> str:
    a = labels % (t, *map(_escape, values))
    counts = list(accumulate(h.counts))
    # (labels, count) per bucket, then labels, count, labels, sum
    return fmt % (*chain.from_iterable(zip(repeat(a), counts)), a, counts[-1], a, _value(h.total))


class Deflated(NamedTuple):
    """Raw-deflate segments (`_deflate`) that inflate to `size` bytes."""

    segments: List[bytes]
    size: int


Section = Union[List[bytes], Deflated]


class Body:
    """A response body made of many byte strings, sent in blocks of about
    `BLOCK_BYTES`: `size` is its length (for Content-Length), iterating
    yields the blocks (the WSGI response iterable). A plain section is sent
    as C-level joins of slices of its parts (no Python loop per part, no
    copy of the whole body); a deflated one is inflated block by block."""

    def __init__(self, sections: List[Section]):
        self._sections = sections
        # bytes in all (not len(): WSGI servers take that for a count of blocks)
        self.size = sum(s.size if isinstance(s, Deflated) else sum(map(len, s)) for s in sections)

    def __iter__(self) -> Iterator[bytes]:
        for section in self._sections:
            if isinstance(section, Deflated):
                yield from _inflate(section)
            else:
                yield from _blocks(section)

    def tobytes(self) -> bytes:
        return b"".join(self)


def _blocks(parts: List[bytes]) -> Iterator[bytes]:
    # End offset of each part, as machine integers: a list would hold an int
    # object per part (100,000 for 3,000 targets) for as long as a slow
    # client takes to read, and fragment the heap.
    ends = array("q", accumulate(map(len, parts)))
    start = 0
    while start < len(parts):
        # the first part ending at or after the block's end closes the block
        stop = bisect_left(ends, (ends[start - 1] if start else 0) + BLOCK_BYTES, lo=start) + 1
        yield b"".join(parts[start:stop])
        start = stop


def _inflate(section: Deflated) -> Iterator[bytes]:
    # Segment by segment (never the whole section joined: a reader that is
    # slow would hold it), in blocks of BLOCK_BYTES.
    d = zlib.decompressobj(-15)
    out = bytearray()
    for data in section.segments:
        while data:
            out += d.decompress(data, BLOCK_BYTES)
            data = d.unconsumed_tail
            while len(out) >= BLOCK_BYTES:
                yield bytes(out[:BLOCK_BYTES])
                del out[:BLOCK_BYTES]
    out += d.flush()
    if out:
        yield bytes(out)


class TextRenderer:
    """Prometheus text format 0.0.4 of a MetricsStore plus extra registries.

    Installs `render_target` as the store's renderer: from then on every
    change of a target renders that target, and a scrape renders none.
    """

    def __init__(self, store: MetricsStore, extra: Optional[CollectorRegistry] = None,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._extra = extra
        self._clock = clock
        self.rendered_targets = 0  # targets rendered, for tests of the mechanism
        store.set_renderer(self._render_target)

    def _render_target(self, name: str, state: _TargetState) -> Fragment:
        self.rendered_targets += 1  # under the store's lock
        return render_target(name, state)

    def body(self) -> Body:
        """The whole exposition, for /metrics. Holds the store's lock only
        while it collects the fragments."""
        fragments, snap = self._store.rendered()
        now = self._clock()
        by_target = [f.parts for f in fragments]
        parts: List[bytes] = []
        sections: List[Section] = [parts]
        for i, header in enumerate(_HEADERS):
            parts.append(header)
            scraped = _SCRAPE_INDEX.get(i)
            if scraped is not None:
                k, days = scraped
                parts.extend(_scraped_lines(_STARTS[i], fragments, k, _days_left(now) if days else _value))
            elif i in _I_HISTOGRAMS:
                h = _I_HISTOGRAMS.index(i)
                size = sum([f.histogram_sizes[h] for f in fragments])
                sections.append(Deflated(list(map(itemgetter(i), by_target)), size))
                parts = []
                sections.append(parts)
            else:
                parts.extend(map(itemgetter(i), by_target))
        glob: List[str] = []
        for metric in _global_families(snap):
            glob.append(_header(Family(metric.name, metric.type, metric.documentation)))
            glob.extend(_line((s.name, tuple(s.labels.items()), s.value)) for s in metric.samples)
        parts.append("".join(glob).encode())
        if self._extra is not None:
            parts.append(generate_latest(self._extra))
        return Body(sections)

    def render(self) -> bytes:
        """The whole exposition as one byte string (tests, tools)."""
        return self.body().tobytes()


def _days_left(now: float) -> Callable[[float], str]:
    return lambda not_after: floatToGoString((not_after - now) / SECONDS_PER_DAY)


def _scraped_lines(start: bytes, fragments: Sequence[Fragment], k: int, value: Callable[[float], str]) -> List[bytes]:
    # Each distinct expiry is formatted once per scrape.
    values: Dict[float, bytes] = {}
    out: List[bytes] = []
    for f in fragments:
        for labels, not_after in f.at_scrape[k]:
            text = values.get(not_after)
            if text is None:
                text = values[not_after] = f"{value(not_after)}\n".encode()
            out += (start, f.target, labels, text)
    return out
