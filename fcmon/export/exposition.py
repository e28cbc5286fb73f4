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
from itertools import accumulate
from operator import itemgetter
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from .metrics import (
    EXPIRY_DAYS,
    FAMILIES,
    LISTENER_EXPIRY_DAYS,
    LISTENER_NOT_AFTER,
    REQUEST_BUCKETS,
    SECONDS_PER_DAY,
    Family,
    MetricsStore,
    Sample,
    _global_families,
    _TargetState,
    server_labels,
)
from ..probe.result import CertInfo

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


_INDEX = {f.name: i for i, f in enumerate(FAMILIES)}
_HEADERS = tuple(_header(f).encode() for f in FAMILIES)
_I_EXPIRY = _INDEX[EXPIRY_DAYS]
_I_NOT_AFTER = _INDEX["fcmon_cert_not_after_timestamp_seconds"]
_I_HISTOGRAM = _INDEX["fcmon_request_duration_seconds"]
_I_L_EXPIRY = _INDEX[LISTENER_EXPIRY_DAYS]
_I_L_NOT_AFTER = _INDEX[LISTENER_NOT_AFTER]
_LE = tuple("+Inf" if b == float("inf") else repr(b) for b in REQUEST_BUCKETS)
# One action's histogram: (labels, cumulative count) per bucket, then
# labels, count, labels, sum. Counts are ints: "%d.0" is what
# floatToGoString makes of them.
_HISTOGRAM = "".join(
    [f'fcmon_request_duration_seconds_bucket{{%s,le="{le}"}} %d.0\n' for le in _LE]
    + ["fcmon_request_duration_seconds_count{%s} %d.0\n", "fcmon_request_duration_seconds_sum{%s} %s\n"])


class Fragment(NamedTuple):
    """One target's exposition, ready to be joined into a scrape."""

    # bytes per family in FAMILIES order (b"" where the target has no series,
    # and for the two certificate families); the histogram family's as a
    # raw-deflate segment (see `_deflate`)
    parts: Tuple[bytes, ...]
    # length of the histogram family's text before deflating
    histogram_size: int
    # `target="NAME"` as bytes
    target: bytes
    # the certificate families, put together per scrape: (the labels after
    # the target's, shared by every target with that certificate; not_after)
    certs: Tuple[Tuple[bytes, float], ...]
    # the listener certificate families, the same way (the labels after the
    # target's: listener, port, cert, subject, serial)
    listener_certs: Tuple[Tuple[bytes, float], ...] = ()


@functools.lru_cache(maxsize=8192)
def _cert(c: CertInfo) -> Tuple[bytes, float]:
    """(`,cert=..,subject=..,serial=..} `, not_after): one copy for every
    target that reports this certificate (a fleet shares its client
    certificate and CA, often its servers' CA chain)."""
    labels = f',cert="{_escape(c.role)}",subject="{_escape(c.subject)}",serial="{_escape(c.serial)}"}} '
    return labels.encode(), c.not_after


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

    Runs in the thread that recorded the change, under the store's lock:
    written out family by family because it runs a hundred times a second
    at fleet scale.
    """
    t = f'target="{_escape(name)}"'
    p: List[str] = [""] * len(FAMILIES)
    p[_INDEX["fcmon_target_info"]] = (
        f'fcmon_target_info{{{t},endpoint="{_escape(s.endpoint)}",username="{_escape(s.username)}"}} 1.0\n')
    p[_INDEX["fcmon_probes"]] = f"fcmon_probes_total{{{t}}} {_value(s.probes)}\n"
    p[_INDEX["fcmon_probes_skipped"]] = "".join([
        f'fcmon_probes_skipped_total{{{t},reason="{_escape(reason)}"}} {_value(n)}\n'
        for reason, n in sorted(s.skipped.items())])
    p[_INDEX["fcmon_session_leaks"]] = f"fcmon_session_leaks_total{{{t}}} {_value(s.leaks)}\n"
    if s.failures:
        p[_INDEX["fcmon_probe_failures"]] = "".join([
            f'fcmon_probe_failures_total{{{t},stage="{_escape(stage)}",reason="{_escape(reason)}"}} {_value(n)}\n'
            for (stage, reason), n in sorted(s.failures.items())])
    if s.api_errors:
        p[_INDEX["fcmon_api_errors"]] = "".join([
            f'fcmon_api_errors_total{{{t},action="{_escape(action)}",code="{code}"}} {_value(n)}\n'
            for (action, code), n in sorted(s.api_errors.items())])
    if s.last_error_code:
        p[_INDEX["fcmon_api_error_code"]] = "".join([
            f'fcmon_api_error_code{{{t},action="{_escape(action)}"}} {_value(code)}\n'
            for action, code in sorted(s.last_error_code.items())])
    if s.requests:
        hists = []
        for action, hist in sorted(s.requests.items()):
            a = f'{t},action="{_escape(action)}"'
            args: List[object] = []
            for running in accumulate(hist.counts):
                args.append(a)
                args.append(running)
            hists.append(_HISTOGRAM % (*args, a, running, a, _value(hist.total)))
        p[_INDEX["fcmon_request_duration_seconds"]] = "".join(hists)
    if s.last_success is not None:
        p[_INDEX["fcmon_last_success_timestamp_seconds"]] = (
            f"fcmon_last_success_timestamp_seconds{{{t}}} {_value(s.last_success)}\n")
    if s.databases is not None:
        p[_INDEX["fcmon_databases"]] = f"fcmon_databases{{{t}}} {_value(s.databases)}\n"
    if s.server is not None:
        labels = "".join([f',{k}="{_escape(v)}"' for k, v in server_labels(s.server)])
        p[_INDEX["fcmon_server_info"]] = f"fcmon_server_info{{{t}{labels}}} 1.0\n"
    certs: Tuple[Tuple[bytes, float], ...] = ()
    r = s.latest
    if r is not None:
        p[_INDEX["fcmon_up"]] = f"fcmon_up{{{t}}} {'1.0' if r.up else '0.0'}\n"
        p[_INDEX["fcmon_probe_duration_seconds"]] = f"fcmon_probe_duration_seconds{{{t}}} {_value(r.duration)}\n"
        p[_INDEX["fcmon_last_probe_timestamp_seconds"]] = (
            f"fcmon_last_probe_timestamp_seconds{{{t}}} {_value(r.ended)}\n")
        if r.steps:
            p[_INDEX["fcmon_step_duration_seconds"]] = "".join([
                f'fcmon_step_duration_seconds{{{t},step="{_escape(step)}"}} {_value(seconds)}\n'
                for step, seconds in r.steps])
        certs = tuple([_cert(c) for c in r.certs])
        if r.tls_version:
            p[_INDEX["fcmon_tls_info"]] = (
                f'fcmon_tls_info{{{t},version="{_escape(r.tls_version)}",'
                f'cipher="{_escape(r.tls_cipher or "")}"}} 1.0\n')
    listener_certs = _render_listeners(t, s, p)
    _render_census(t, s, p)
    parts = [x.encode() if x else b"" for x in p]
    histogram = parts[_I_HISTOGRAM]
    parts[_I_HISTOGRAM] = _deflate(histogram)
    return Fragment(tuple(parts), len(histogram), t.encode(), certs, listener_certs)


def _render_census(t: str, s: _TargetState, p: List[str]) -> None:
    """The session census families into `p` (target_samples says the same)."""
    p[_INDEX["fcmon_sessions_reaped"]] = f"fcmon_sessions_reaped_total{{{t}}} {_value(s.reaped)}\n"
    c = s.census
    if c is None:
        return
    p[_INDEX["fcmon_account_sessions"]] = f"fcmon_account_sessions{{{t}}} {_value(c.sessions)}\n"
    p[_INDEX["fcmon_account_sessions_limit"]] = f"fcmon_account_sessions_limit{{{t}}} {_value(c.limit)}\n"
    p[_INDEX["fcmon_account_sessions_fcmon"]] = f"fcmon_account_sessions_fcmon{{{t}}} {_value(c.fcmon)}\n"
    if c.oldest_idle is not None:
        p[_INDEX["fcmon_account_sessions_oldest_idle_seconds"]] = (
            f"fcmon_account_sessions_oldest_idle_seconds{{{t}}} {_value(c.oldest_idle)}\n")
    if c.by_user:
        p[_INDEX["fcmon_account_sessions_by_user"]] = "".join([
            f'fcmon_account_sessions_by_user{{{t},username="{_escape(user)}"}} {_value(n)}\n'
            for user, n in c.by_user])


def _render_listeners(t: str, s: _TargetState, p: List[str]) -> Tuple[Tuple[bytes, float], ...]:
    """The listener families into `p`; returns the listener certificates."""
    if s.listener_failures:
        p[_INDEX["fcmon_listener_failures"]] = "".join([
            f'fcmon_listener_failures_total{{{t},listener="{_escape(listener)}",reason="{_escape(reason)}"}} '
            f'{_value(n)}\n'
            for (listener, reason), n in sorted(s.listener_failures.items())])
    lr = s.listeners
    if lr is None:
        return ()
    p[_INDEX["fcmon_listeners"]] = f"fcmon_listeners{{{t}}} {_value(len(lr.results))}\n"
    p[_INDEX["fcmon_listeners_not_checked"]] = (
        f'fcmon_listeners_not_checked{{{t},reason="over_cap"}} {_value(lr.over_cap)}\n'
        f'fcmon_listeners_not_checked{{{t},reason="round_deadline"}} {_value(lr.not_reached)}\n')
    if lr.discovery is not None:
        p[_INDEX["fcmon_listener_discovery_success"]] = (
            f"fcmon_listener_discovery_success{{{t}}} {'1.0' if lr.discovery else '0.0'}\n")
    up: List[str] = []
    certs: List[Tuple[bytes, float]] = []
    for x in lr.results:
        where = f'listener="{_escape(x.listener.name)}",port="{x.listener.port}"'
        up.append(f'fcmon_listener_up{{{t},{where},protocol="{_escape(x.listener.protocol)}"}} '
                  f'{"1.0" if x.up else "0.0"}\n')
        for c in x.certs:
            labels, not_after = _cert(c)
            certs.append((f",{where}".encode() + labels, not_after))
    p[_INDEX["fcmon_listener_up"]] = "".join(up)
    return tuple(certs)


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
            if i == _I_EXPIRY:
                parts.extend(_cert_lines(b"fcmon_cert_expiry_days{", fragments, _days_left(now)))
            elif i == _I_NOT_AFTER:
                parts.extend(_cert_lines(b"fcmon_cert_not_after_timestamp_seconds{", fragments, _value))
            elif i == _I_L_EXPIRY:
                parts.extend(_cert_lines(b"fcmon_listener_cert_expiry_days{", fragments, _days_left(now),
                                         listeners=True))
            elif i == _I_L_NOT_AFTER:
                parts.extend(_cert_lines(b"fcmon_listener_cert_not_after_timestamp_seconds{", fragments, _value,
                                         listeners=True))
            elif i == _I_HISTOGRAM:
                size = sum([f.histogram_size for f in fragments])
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


def _cert_lines(start: bytes, fragments: Sequence[Fragment], value: Callable[[float], str],
                listeners: bool = False) -> List[bytes]:
    # Each distinct expiry is formatted once per scrape.
    values: Dict[float, bytes] = {}
    out: List[bytes] = []
    for f in fragments:
        for labels, not_after in (f.listener_certs if listeners else f.certs):
            text = values.get(not_after)
            if text is None:
                text = values[not_after] = f"{value(not_after)}\n".encode()
            out += (start, f.target, labels, text)
    return out
