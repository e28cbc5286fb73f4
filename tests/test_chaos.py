"""The probe against a hostile server (tests/chaos.py): real TLS, client
certificates required, misbehaviour drawn by hypothesis from a grammar.

Explicit regression cases first, then the generated adversary. On every
case: the probe returns within timeout + 1 s, raises nothing, names its
failure with a reason of the contract at the stage where the server
misbehaved (never `internal`: the server's fault is not fcmon's), leaks no
secret into the log, and every session the server created is deleted or
counted as a leak. After each case the process's threads and file
descriptors are back to their baseline. The server's own text (every
field a renderer shows) is drawn from a grammar of lone surrogates,
controls, bidi controls and very long text: every renderer (exposition,
status page and JSON, check text/json/prometheus, debug log, log lines)
takes it without raising, nothing rendered holds a raw control or
surrogate, and one log record stays one line.

`make test` runs a derandomized, bounded set; `make chaos` a long random
run (CHAOS_EXAMPLES, CHAOS_SEED) that prints the seed of a failure.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import time
import warnings
from typing import Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fcmon.commands import check
from fcmon.probe import debuglog
from fcmon.web import statuspage
from fcmon.probe.client import ApiClient
from fcmon.config import TargetConfig
from fcmon.export.exposition import TextRenderer
from fcmon.probe.listeners import ListenerResult, ListenerRound, parse_listeners
from fcmon.service.logs import TEXT_FORMAT, JsonFormatter, filter_library_logs
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober
from fcmon.probe.result import REASONS, STAGES, ProbeResult
from fcmon.probe.servertext import REPLACED, clean
from fcmon.export.status import StatusBoard

from chaos import (
    ACTIONS,
    BODY,
    CONNECTION_HOW,
    CONNECTION_WHERE,
    EXTRA,
    FRAMING,
    HOW,
    STAGE_OF,
    WHERE,
    ChaosServer,
    Fault,
    Texts,
)
from support import PKI, threads_besides_resolver

TIMEOUT = 1.0
PASSWORD = "Chaos-pa55-word-never-logged"


@pytest.fixture(scope="module")
def chaos(test_pki: PKI) -> Iterator[ChaosServer]:
    with ChaosServer(test_pki.server.cert, test_pki.server.key, test_pki.ca_file) as server:
        yield server


def chaos_target(test_pki: PKI, server: ChaosServer, **overrides: object) -> TargetConfig:
    params = dict(
        name="chaos", endpoint=server.url, username="ADMIN", password=PASSWORD, ca_file=test_pki.ca_file,
        client_cert_file=test_pki.client.cert, client_key_file=test_pki.client.key,
        timeout=TIMEOUT, interval=10.0,
    )
    params.update(overrides)
    return TargetConfig(**params)  # type: ignore[arg-type]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_case(server: ChaosServer, prober: Prober, target: TargetConfig, fault: Optional[Fault],
             texts: Optional[Texts] = None) -> ProbeResult:
    """One probe against `fault` (and the server's `texts`), checked against every invariant."""
    lines = _Lines()
    root, own = logging.getLogger(), logging.getLogger("fcmon")
    root.addHandler(lines)
    level = own.level
    own.setLevel(logging.DEBUG)
    threads, fds = threads_besides_resolver(), open_fds()
    server.arm(fault, texts)
    started = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            result = prober.probe(target)
            elapsed = time.monotonic() - started
            server.reset()
            # Back to the baseline before any garbage collection: every
            # socket was closed by fcmon, none waits for the collector.
            if open_fds() != fds:
                time.sleep(0.2)  # a thread of the server may still be closing its end
            assert open_fds() == fds, (open_fds(), fds, result.failure)
            assert threads_besides_resolver() == threads
            gc.collect()
    finally:
        root.removeHandler(lines)
        own.setLevel(level)
    assert server.errors == [], server.errors
    assert elapsed < target.timeout + 1.0, (elapsed, result.failure)
    assert result.duration < target.timeout + 1.0
    failure = result.failure
    if failure is not None:
        assert failure.reason in REASONS and failure.stage in STAGES, failure
        assert failure.reason != "internal", failure
        if fault is not None:
            assert fault.allows(failure.stage, failure.reason), (failure, fault)
        else:  # only the server's own error answer may fail the probe
            assert texts is not None and texts.fail_action is not None, failure
            assert (failure.stage, failure.reason) == (STAGE_OF[texts.fail_action], "api_error"), failure
    elif texts is not None and texts.fail_action is not None and fault is None:
        assert texts.fail_action == "deleteSession" and texts.error_code == 12031 and result.session_gone
    # Every session the server created is deleted or counted as a leak, in
    # the result and in fcmon_session_leaks_total.
    if server.open_sessions():
        assert result.session_leaked, (failure, len(server.open_sessions()))
    store = MetricsStore()
    store.set_targets([target])
    store.record(result)
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    leaks = registry.get_sample_value("fcmon_session_leaks_total", {"target": target.name})
    assert leaks == (1 if result.session_leaked else 0)
    # Sockets are closed by fcmon, not left to the garbage collector.
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
    # Everything logged (fcmon's and its libraries'), bar the test server's.
    lines.records = [r for r in lines.records if r.levelno >= logging.WARNING or r.name.startswith("fcmon")]
    text = lines.text() + repr(result)
    for secret in [PASSWORD] + [t for t in server.tokens if len(t) < 1000]:
        assert secret not in text
    assert "Traceback" not in text
    check_renderers(result, target, texts or Texts(), lines.records)
    return result


def _raw(text: str) -> str:
    """What clean() would have replaced, in `text` split into lines."""
    return "".join(ch for line in text.split("\n") for ch in line if ord(ch) in REPLACED)


def check_renderers(result: ProbeResult, target: TargetConfig, texts: Texts,
                    records: List[logging.LogRecord]) -> None:
    """Every renderer takes the result (and a listener round parsed from the
    server's listServices in its words) without raising, and nothing it
    renders holds a raw control, surrogate or bidi control; one log record
    stays one line."""
    now = time.time()
    listed = ApiClient._parse(200, json.dumps(texts.list_services()).encode())
    round_ = ListenerRound(target.name, True, texts.error_message, tuple(
        ListenerResult(x, now, 0.01, reason="tls_verify", message=f"{x.name}: {texts.error_message}")
        for x in parse_listeners(listed.body, 8443)), now)
    assert round_.results and all(x.listener.name.startswith(clean(texts.service_name, 200)[:1])
                                  for x in round_.results)
    store = MetricsStore()
    renderer = TextRenderer(store)
    store.set_targets([target])
    store.record(result)
    store.record_listeners(round_)
    board = StatusBoard("chaos")
    board.set_targets([target])
    board.record(result)
    board.record_listeners(round_)
    snap = board.snapshot()
    verdict = check.judge(result, 30.0, 7.0, now, round_)
    outputs = {
        "exposition": b"".join(renderer.body()),
        "status page": statuspage.render_html(snap),
        "status json": statuspage.render_json(snap),
        "check text": check.render_text([verdict], now=now),
        "check json": check.render_json([verdict], now),
        "check prometheus": check.render_prometheus([target], [result], rounds=[round_]),
        "debug log": debuglog.render(result, target),
        "debug summary": debuglog.summary(result),
    }
    f = result.failure
    daemon_like = [  # what the daemon logs of a result
        logging.makeLogRecord({"name": "fcmon.service.daemon", "levelno": logging.WARNING, "levelname": "WARNING",
                               "msg": "target %s: probe failed at %s: %s (%s)",
                               "args": (result.target, f.stage, f.reason, f.message) if f else ("", "", "", "")}),
        logging.makeLogRecord({"name": "fcmon.service.daemon", "levelno": logging.INFO, "levelname": "INFO",
                               "msg": "target %s: server version changed from %r to %r",
                               "args": (result.target, "old", result.server.version if result.server else None)}),
        logging.makeLogRecord({"name": "fcmon.service.daemon", "levelno": logging.DEBUG, "levelname": "DEBUG",
                               "msg": "target %s: %s", "args": (result.target, debuglog.summary(result))}),
    ]
    for formatter in (logging.Formatter(TEXT_FORMAT), JsonFormatter()):
        for record in [r for r in records if r.name.startswith("fcmon")] + daemon_like:
            line = formatter.format(record)
            assert "\n" not in line, line  # one record, one line
            outputs[f"log {record.name}"] = line
    for what, out in outputs.items():
        text = out.decode("utf-8") if isinstance(out, bytes) else out
        text.encode("utf-8")  # a lone surrogate cannot be encoded
        assert _raw(text) == "", (what, [hex(ord(c)) for c in _raw(text)][:10])


@pytest.fixture(scope="module")
def prober() -> Prober:
    # urllib3's header-parsing tracebacks filtered, as `fcmon run` and `fcmon
    # check` filter them where they set up logging (importing fcmon does not).
    filter_library_logs()
    p = Prober()
    p.deadlines.at(0.0, lambda: None)  # its one thread, started before any baseline is taken
    return p


def _expect(result: ProbeResult, stage: Optional[str], reason: Optional[str]) -> None:
    got = (result.failure.stage, result.failure.reason) if result.failure else (None, None)
    assert got == (stage, reason), result.failure


# ------------------------------------------------------------ defect 1

DRIP = dict(where="in_body", how="drip", offset=0.0, rate=0.3)


@pytest.mark.parametrize("fault", [
    # The issue's case: Content-Length 99000, `Connection: close`, a byte at a time.
    Fault(framing="length_long", keep_alive=False, **DRIP),  # type: ignore[arg-type]
    Fault(framing="close", http10=True, **DRIP),  # type: ignore[arg-type]
    Fault(framing="chunked", keep_alive=False, **DRIP),  # type: ignore[arg-type]
], ids=["content-length+close", "http/1.0 close-delimited", "chunked+close"])
def test_dripped_body_of_a_closing_response_is_cut_at_the_deadline(
        fault: Fault, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    """Each byte comes before any socket timeout could fire; http.client has
    taken the socket from the connection. The deadline still cuts it, and
    deleteSession still runs, over a new connection, in the grace time."""
    result = run_case(chaos, prober, chaos_target(test_pki, chaos), fault)
    _expect(result, "list_databases", "timeout")
    assert chaos.deleted and not chaos.open_sessions()
    assert not result.session_leaked


@pytest.mark.slow
def test_issue_case_content_length_99000_connection_close_one_byte_a_second(
        test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    """As reported: timeout 3 s, `Content-Length: 99000`, `Connection: close`,
    one byte a second (each before the 3 s socket timeout could fire). It
    ran past 15 s and leaked its session."""
    fault = Fault(where="in_body", how="drip", offset=0.0, rate=1.0, framing="close", content_length=99000)
    result = run_case(chaos, prober, chaos_target(test_pki, chaos, timeout=3.0), fault)
    _expect(result, "list_databases", "timeout")
    assert result.duration < 4.0
    assert chaos.deleted and not chaos.open_sessions() and not result.session_leaked


def test_dripped_create_session_of_a_closing_response_is_cut(test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    fault = Fault(action="createSession", framing="length_long", keep_alive=False, **DRIP)  # type: ignore[arg-type]
    result = run_case(chaos, prober, chaos_target(test_pki, chaos), fault)
    _expect(result, "create_session", "timeout")
    # The session exists and its token never arrived: counted.
    assert result.session_leaked and len(chaos.open_sessions()) == 1


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_body_over_the_cap_is_closed_at_once(framing: str, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    """A body over max_response_bytes is cut and its socket closed by fcmon
    (with `Connection: close` the response alone holds it)."""
    fault = Fault(framing=framing, keep_alive=False, body="padded")
    result = run_case(chaos, prober, chaos_target(test_pki, chaos, max_response_bytes=1000), fault)
    _expect(result, "list_databases", "bad_response")
    assert "cap of 1000" in result.failure.message  # type: ignore[union-attr]
    assert not result.session_leaked and not chaos.open_sessions()


@pytest.mark.parametrize("framing", ["length", "close"])
def test_cut_body_is_closed_even_while_its_error_is_held(
        framing: str, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    """The error (and its traceback, which holds the response) may live on;
    the socket must not: fcmon closes it where it cuts the body."""
    from fcmon.probe.client import ApiClient, ProbeError

    target = chaos_target(test_pki, chaos, max_response_bytes=1000)
    chaos.arm(Fault(action="createSession", framing=framing, keep_alive=False, body="padded"))
    fds = open_fds()
    client = ApiClient(prober.plan(target), prober.contexts.get(target))
    try:
        client.connect(5)
        with pytest.raises(ProbeError) as err:
            client.call(client.plan.create_session(), 5)
        client.close()
        chaos.reset()
        assert err.value.reason == "bad_response"
        assert open_fds() == fds  # while `err` still holds the traceback
    finally:
        client.close()
        chaos.reset()


# ------------------------------------------------------------ defect 5 and other JSON

JSON_CASES = [
    # (body, action, stage, reason, leaked)
    ("deep", "createSession", "create_session", "bad_response", True),
    ("deep", "listDatabases", "list_databases", "bad_response", False),
    ("deep", "deleteSession", "delete_session", "bad_response", True),
    ("huge_number", "listDatabases", "list_databases", "bad_response", False),
    ("big_code", "listDatabases", "list_databases", "bad_response", False),
    ("invalid_utf8", "createSession", "create_session", "bad_response", True),
    ("invalid_utf8", "listDatabases", "list_databases", "bad_response", False),
    ("duplicate_keys", "listDatabases", None, None, False),  # the last errorCode (0) wins
    ("code_string", "listDatabases", "list_databases", "bad_response", False),
    ("code_float", "listDatabases", "list_databases", "bad_response", False),
    ("code_bool", "listDatabases", "list_databases", "bad_response", False),
    ("code_null", "deleteSession", "delete_session", "bad_response", True),
    ("code_missing", "createSession", "create_session", "bad_response", True),
    ("token_empty", "createSession", "create_session", "bad_response", True),
    ("token_number", "createSession", "create_session", "bad_response", True),
    ("token_huge", "createSession", None, None, False),  # a 1 MB token works, and is deleted
    ("not_object", "listDatabases", "list_databases", "bad_response", False),
    ("truncated", "deleteSession", "delete_session", "bad_response", True),
]


@pytest.mark.parametrize("body,action,stage,reason,leaked", JSON_CASES,
                         ids=[f"{c[0]}@{c[1]}" for c in JSON_CASES])
def test_hostile_json_has_a_named_reason_at_its_stage(
        body: str, action: str, stage: Optional[str], reason: Optional[str], leaked: bool,
        test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    result = run_case(chaos, prober, chaos_target(test_pki, chaos), Fault(action=action, body=body))
    _expect(result, stage, reason)
    assert result.session_leaked == leaked


# ------------------------------------------------------------ internal


def test_out_of_file_descriptors_is_internal_at_the_stage_it_hit(
        test_pki: PKI, chaos: ChaosServer, prober: Prober, caplog: pytest.LogCaptureFixture) -> None:
    """The server answers createSession with `Connection: close`, and the
    process then runs out of descriptors: listDatabases cannot open its
    connection. That is fcmon's failure, at list_databases, not the server's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    exhausted: List[bool] = []

    def exhaust(action: str) -> None:
        # A soft limit below every free descriptor number: from now on no
        # new descriptor, even when others are closed (as a full table).
        if action == "createSession":
            resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
            exhausted.append(True)

    chaos.on_request = exhaust
    caplog.set_level(logging.ERROR, logger="fcmon")
    try:
        chaos.arm(Fault(action="createSession", keep_alive=False))
        result = prober.probe(chaos_target(test_pki, chaos))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        chaos.on_request = None
        chaos.reset()
    assert exhausted
    _expect(result, "list_databases", "internal")
    assert "file descriptors" in result.failure.message  # type: ignore[union-attr]
    assert result.session_leaked  # deleteSession could not connect either
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "file descriptors" in r.getMessage()]
    assert errors and all(PASSWORD not in r.getMessage() for r in caplog.records)
    # And with descriptors back, the next probe is fine (and frees nothing twice).
    assert prober.probe(chaos_target(test_pki, chaos)).failure is None


_NO_THREADS = """
import json, resource, threading
from fcmon.config import TargetConfig
from fcmon.probe.run import Prober

prober = Prober()  # its deadline thread starts with the first probe
target = TargetConfig(name="t", endpoint="https://localhost:1/api", timeout=1.0, interval=10.0)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
# No room for another thread's stack: pthread_create fails, as when the
# process is out of threads.
threading.stack_size(256 * 1024 * 1024)
resource.setrlimit(resource.RLIMIT_AS, (vm + 128 * 1024 * 1024, resource.RLIM_INFINITY))
r = prober.probe(target)
print(json.dumps([r.failure.stage, r.failure.reason, r.failure.message]))
"""


def test_no_thread_for_the_deadline_is_internal() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_THREADS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stage, reason, message = json.loads(proc.stdout)
    assert (stage, reason) == ("connect", "internal")
    assert "cannot start a thread" in message
    assert "cannot start a thread" in proc.stderr  # logged (at error level)


def test_a_bug_is_internal_with_a_redacted_traceback(test_pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    """A target no config would produce (port out of range) makes the probe's
    own code raise: `internal`, logged at error level, password redacted."""
    caplog.set_level(logging.ERROR, logger="fcmon")
    target = TargetConfig(name="odd", endpoint="https://localhost:99999/api", username="ADMIN",
                          password=PASSWORD, timeout=TIMEOUT, interval=10.0)
    result = Prober().probe(target)
    _expect(result, "connect", "internal")
    assert "ValueError" in result.failure.message  # type: ignore[union-attr]
    text = caplog.text
    assert "a bug in fcmon" in text and "Traceback" in text and PASSWORD not in text


@pytest.mark.slow
@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "close"])
@pytest.mark.parametrize("framing", FRAMING)
def test_every_framing_of_list_databases(framing: str, keep_alive: bool, test_pki: PKI, chaos: ChaosServer,
                                         prober: Prober) -> None:
    """Each framing once, whatever the generated set happens to draw."""
    result = run_case(chaos, prober, chaos_target(test_pki, chaos),
                      Fault(framing=framing, keep_alive=keep_alive))
    if framing in ("length", "chunked", "close"):
        _expect(result, None, None)
    else:
        assert result.failure is not None and result.failure.stage == "list_databases", result.failure
        assert result.failure.reason in ("timeout", "bad_response"), result.failure
    assert not chaos.open_sessions()


# ------------------------------------------------------------ the generated adversary

RATES = (0.0002, 0.003, 0.05, 0.3)  # drip: seconds per byte
# Repeats weight the draw: most cases bend one thing, not all at once.
_HOWS = ("none",) * 3 + HOW[1:]
_EXTRAS = ("none",) * 6 + EXTRA[1:]
_BODIES = ("ok",) * 6 + BODY[1:]
_FRAMINGS = ("length",) * 3 + FRAMING[1:]


@st.composite
def faults(draw: st.DrawFn) -> Fault:
    where = draw(st.sampled_from(WHERE))
    rate = draw(st.sampled_from(RATES))
    if where in CONNECTION_WHERE:
        return Fault(where=where, how=draw(st.sampled_from(CONNECTION_HOW)), action="", rate=rate)
    return Fault(
        where=where,
        how=draw(st.sampled_from(_HOWS)),
        action=draw(st.sampled_from(ACTIONS)),
        rate=rate,
        offset=draw(st.sampled_from((0.0, 0.1, 0.5, 0.9))),
        framing=draw(st.sampled_from(_FRAMINGS)),
        keep_alive=draw(st.booleans()),
        http10=draw(st.booleans()),
        extra=draw(st.sampled_from(_EXTRAS)),
        body=draw(st.sampled_from(_BODIES)),
        status=draw(st.sampled_from((200, 200, 200, 401, 500))),
    )


# `make test`: a fixed, derandomized set (about 30 s); `make chaos`: a long
# random run from the seed the Makefile prints.
CHAOS_EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "0") or 0)
if CHAOS_EXAMPLES:
    _chaos_settings = settings(max_examples=CHAOS_EXAMPLES, derandomize=False, deadline=None, database=None,
                               print_blob=True, suppress_health_check=list(HealthCheck))
else:
    _chaos_settings = settings(max_examples=50, derandomize=True, deadline=None, database=None,
                               print_blob=True, suppress_health_check=list(HealthCheck))


@pytest.mark.slow
@_chaos_settings
@given(fault=faults())
def test_generated_adversary(fault: Fault, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    run_case(chaos, prober, chaos_target(test_pki, chaos), fault)


# ------------------------------------------------------------ server text

# The pieces of hostile server text: lone surrogates (JSON escapes them as
# "\udXXX", the client decodes them alone), C0 and C1 controls, DEL, ANSI
# escapes, line breaks that would forge a log line, bidi controls and marks,
# and characters that mean something to a renderer (labels, HTML, Nagios).
HOSTILE_PIECES = (
    "\ud800", "\udfff", "\udc80", "\x00", "\x01", "\x1b[31m", "\x1b]0;title\x07", "\n", "\r\n",
    "\nERROR fcmon.service.daemon: target x: forged line", "\t", "\x0b", "\x0c", "\x1c", "\x7f", "\x85", "\x9b",
    "\u202a", "\u202e", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\ufeff",
    "|", "'", '"', "\\", "<script>", "&amp;", "=", "{", "}", "é", "漢", "🙂", " ", "v",
)


def server_text(long: bool = True) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=4))
    short = st.lists(pieces, max_size=12).map("".join)
    if not long:
        return short
    very_long = st.tuples(st.sampled_from(HOSTILE_PIECES), st.sampled_from((600, 5000))).map(
        lambda p: p[0] * p[1])
    return st.one_of(short, short, very_long)


@st.composite
def texts(draw: st.DrawFn) -> Texts:
    fail = draw(st.sampled_from((None, None, "createSession", "listDatabases", "deleteSession")))
    return Texts(
        server_version=draw(server_text()),
        hostname=draw(server_text()),
        host_uuid=draw(server_text(long=False)),
        database_names=tuple(draw(st.lists(server_text(long=False), min_size=1, max_size=4))),
        error_message=draw(server_text()),
        fail_action=fail,
        error_code=draw(st.sampled_from((150, 12031, 12012, 84))) if fail else 150,
        warning_message=draw(server_text()),
        warning_code_keys=draw(st.booleans()),
        service_name="m" + draw(server_text()),
        description=draw(server_text(long=False)),
    )


ISSUE_TEXT = "v\ud800"


@pytest.mark.parametrize("field", ["server_version", "hostname", "database_names", "error_message",
                                   "warning_message", "service_name"])
def test_a_lone_surrogate_in_each_server_field(field: str, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    """The issue's string in each field: the probe's state is right (down
    with errorCode 150 when the text is the error's), every renderer takes it."""
    value: object = (ISSUE_TEXT,) if field == "database_names" else ISSUE_TEXT
    extra = {"fail_action": "createSession"} if field == "error_message" else {}
    result = run_case(chaos, prober, chaos_target(test_pki, chaos), None,
                      Texts(**{field: value}, **extra))  # type: ignore[arg-type]
    if field == "error_message":
        _expect(result, "create_session", "api_error")
        assert "v\ufffd" in result.failure.message  # type: ignore[union-attr]
    else:
        _expect(result, None, None)


TEXT_EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "0") or 0)


@settings(max_examples=TEXT_EXAMPLES or 12, derandomize=not TEXT_EXAMPLES, deadline=None, database=None,
          print_blob=True, suppress_health_check=list(HealthCheck))
@given(server_texts=texts())
def test_generated_server_text(server_texts: Texts, test_pki: PKI, chaos: ChaosServer, prober: Prober) -> None:
    run_case(chaos, prober, chaos_target(test_pki, chaos), None, server_texts)
