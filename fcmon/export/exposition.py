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

Both this text and the Collector's (`metrics.target_samples` and
`metrics.expiry_samples`, for /probe and `check`) are made from one
specification of the families, `metrics.FAMILIES`: here each family's
writer is compiled from it once, at import (`_writer`).
tests/test_exposition.py compares the two texts sample by sample, and
tests/test_exposition_golden.py this one byte for byte with what it was.
"""

from __future__ import annotations

import functools
import time
import zlib
from array import array
from bisect import bisect_left
from itertools import accumulate
from operator import itemgetter
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

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
    Series,
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

# One family's series of one target: (target="NAME", what it reads) -> text
Writer = Callable[[str, Any], str]
Source = Optional[Callable[[_TargetState], Any]]


def _sparse_line(f: Family, t: str, values: Tuple[Optional[str], ...], value: float) -> str:
    labels = "".join([f',{k}="{_escape(v)}"' for k, v in label_pairs(f, values)])
    return f"{f.sample}{{{t}{labels}}} {_value(value)}\n"


def _histogram_writer(f: Family) -> Writer:
    fmt, labels = _histogram(f), _labels(f)
    one = len(f.labels) == 1
    series = f.series
    assert series is not None

    def write(t: str, x: Any) -> str:
        out = []
        for values, h in series(x):
            a = labels % ((t, _escape(values)) if one else (t, *map(_escape, values)))
            args: List[object] = []
            running = 0
            for running in accumulate(h.counts):
                args.append(a)
                args.append(running)
            out.append(fmt % (*args, a, running, a, _value(h.total)))
        return "".join(out)
    return write


def _writer(f: Family) -> Writer:
    """How `render_target` writes family `f` for one target: a function of
    (target="NAME", what the family reads) made once from the Family.

    Its lines are written by an f-string generated from the family's name
    and labels and compiled here, as dataclasses compiles the __init__ it
    writes: a %-format string would take twice as long per line, and this
    runs for every change of every target. Only names and label names of
    FAMILIES (identifiers) enter the generated source; the values come in
    as arguments, escaped by `_escape` and formatted by `_value`.
    """
    if f.type == "histogram":
        return _histogram_writer(f)
    if f.sparse:
        series = f.series
        assert series is not None
        return lambda t, x: "".join([_sparse_line(f, t, values, value) for values, value in series(x)])
    assert all(k.isidentifier() for k in (f.sample,) + f.labels), f.name
    names = [f"a{j}" for j in range(len(f.labels))]
    line = (f.sample + "{{{t}" + "".join([f',{k}="{{_escape({a})}}"' for k, a in zip(f.labels, names)])
            + "}} {_value(value)}\\n")
    if f.value is not None:
        source = f"def write(t, x):\n    value = get(x)\n    return '' if value is None else f'{line}'\n"
    else:
        each = names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"
        source = f"def write(t, x):\n    return ''.join([f'{line}' for {each}, value in series(x)])\n"
    namespace = {"get": f.value, "series": f.series, "_escape": _escape, "_value": _value}
    exec(compile(source, f"<fcmon.export.exposition writer of {f.name}>", "exec"), namespace)
    return namespace["write"]  # type: ignore[no-any-return]


def _groups() -> Tuple[Tuple[Source, Tuple[Tuple[int, Writer], ...]], ...]:
    """How `render_target` writes the families, made once from FAMILIES: by
    the part of the state they read (`Family.source`), so a part that is
    None skips all its families at once: (source, ((index, writer), ...)).
    The families put together per scrape are not written here."""
    groups: Dict[Source, List[Tuple[int, Writer]]] = {}
    for i, f in enumerate(FAMILIES):
        if i not in _SCRAPE_INDEX:
            groups.setdefault(f.source, []).append((i, _writer(f)))
    return tuple((source, tuple(writers)) for source, writers in groups.items())


_GROUPS = _groups()
# the families put together per scrape: (source, labels, series)
_SCRAPED_SERIES = tuple((BY_NAME[name].source, BY_NAME[name].labels, BY_NAME[name].series) for name in _SCRAPED)


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
def _shared(names: Tuple[str, ...], values: Tuple[str, ...], value: float) -> Tuple[bytes, float]:
    """(`,name="value",...} `, value): one copy for every target that has
    this series (a fleet shares its client certificate and CA, often its
    servers' CA chain); one object, not one per target, also keeps a
    scrape's walk over them in few cache lines."""
    return ("".join([f',{k}="{_escape(v)}"' for k, v in zip(names, values)]) + "} ").encode(), value


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
    hundred times a second at fleet scale: each family's writer is made
    once (`_writer`).
    """
    t = f'target="{_escape(name)}"'
    text = [""] * len(FAMILIES)
    for source, writers in _GROUPS:
        x = s if source is None else source(s)
        if x is not None:
            for i, write in writers:
                text[i] = write(t, x)
    parts = [x.encode() if x else b"" for x in text]
    sizes = []
    for i in _I_HISTOGRAMS:
        sizes.append(len(parts[i]))
        parts[i] = _deflate(parts[i])
    at_scrape = tuple([_shared_series(s if source is None else source(s), labels, series)
                       for source, labels, series in _SCRAPED_SERIES])
    return Fragment(tuple(parts), tuple(sizes), t.encode(), at_scrape)


def _shared_series(x: Any, labels: Tuple[str, ...], series: Callable[[Any], Iterable[Series]]
                   ) -> Tuple[Tuple[bytes, float], ...]:
    if x is None:
        return ()
    if len(labels) == 1:
        return tuple([_shared(labels, (v,), value) for v, value in series(x)])
    return tuple([_shared(labels, values, value) for values, value in series(x)])  # type: ignore[arg-type]


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
