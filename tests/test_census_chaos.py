"""The session census against the hostile server (tests/chaos.py): every
describeSessions body of the census grammar (`CENSUS_BODY`), delivered
straight or spoilt on the wire (the chaos grammar's framing, how and JSON),
and the probe stays up within its deadline, deletes its session, names why
a census is unavailable, raises and logs nothing it should not, and leaves
threads and descriptors at their baseline (`run_case`'s invariants)."""

from __future__ import annotations

import gc
import os
import warnings
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcmon.probe.census import parse_census
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import Prober
from fcmon.service.logs import filter_library_logs
from prometheus_client import CollectorRegistry

from chaos import BODY, CENSUS_BODY, FRAMING, HOW, MESSAGE_WHERE, ChaosServer, Fault, census_answer
from support import PKI
from test_chaos import chaos_target, run_case

ME = "chaos-me"


@pytest.fixture(scope="module")
def census_server(test_pki: PKI) -> Iterator[ChaosServer]:
    # What earlier test modules left to the garbage collector (a killed
    # process's pipes) must not be collected inside a case, where an
    # unclosed-file warning counts against fcmon.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with ChaosServer(test_pki.server.cert, test_pki.server.key, test_pki.ca_file) as server:
        yield server


@pytest.fixture(scope="module")
def census_prober() -> Prober:
    # urllib3's header-parsing tracebacks filtered, as `fcmon run` and `fcmon
    # check` filter them where they set up logging (importing fcmon does not).
    filter_library_logs()
    p = Prober(instance_id=ME)
    p.deadlines.at(0.0, lambda: None)  # its one thread, started before any baseline is taken
    return p


def _check(result, server: ChaosServer, kind: str) -> None:  # type: ignore[no-untyped-def]
    assert result.up, (kind, result.failure)  # a census never fails the probe
    assert not result.session_leaked and not server.open_sessions()
    assert (result.census is None) == (result.census_unavailable is not None), kind
    c = result.census
    if c is not None:
        assert 1 <= c.sessions <= 5001 and 0 <= c.fcmon <= c.sessions and c.limit == 50
        assert c.oldest_idle is None or c.oldest_idle >= 0
        assert c.reaped == 0  # the chaos server's orphans are not live sessions: nothing to count
        store = MetricsStore()
        from fcmon.config import TargetConfig
        store.set_targets([TargetConfig(name="chaos", endpoint="https://x:1/api")])
        store.record(result)
        registry = CollectorRegistry()
        registry.register(FcmonCollector(store))
        assert registry.get_sample_value("fcmon_account_sessions", {"target": "chaos"}) == c.sessions


@pytest.mark.parametrize("kind", CENSUS_BODY)
def test_each_census_body(kind: str, test_pki: PKI, census_server: ChaosServer, census_prober: Prober) -> None:
    census_server.census_kind = kind
    try:
        result = run_case(census_server, census_prober, chaos_target(test_pki, census_server), None)
    finally:
        census_server.census_kind = None
    _check(result, census_server, kind)
    if kind in ("listed", "own_missing", "junk_entries", "field_types", "bad_stamps", "aware_stamps", "orphans",
                "long_text"):
        assert result.census is not None, (kind, result.census_unavailable)
    else:
        assert result.census is None, kind


def test_the_grammar_parses_without_surprise() -> None:
    """Every body, as parse_census sees it (listSessions' too): a census or
    CensusUnavailable, never another exception."""
    from fcmon.probe.census import CensusUnavailable

    for action in ("describeSessions", "listSessions"):
        for kind in CENSUS_BODY:
            body = census_answer(kind, action, "own", ["own", "other"])
            try:
                census, orphans = parse_census(body.get("errorCode", 0) if isinstance(body.get("errorCode"), int)
                                               else 0, body, "own", ME, 50, reap_after=1.0)
            except CensusUnavailable:
                continue
            assert census.sessions >= 1
            assert all(o.token != "own" for o in orphans)




@st.composite
def census_faults(draw: st.DrawFn) -> Fault:
    return Fault(
        where=draw(st.sampled_from(MESSAGE_WHERE)),
        how=draw(st.sampled_from(HOW)),
        action="describeSessions",
        rate=draw(st.sampled_from((0.0005, 0.01, 0.3))),
        offset=draw(st.sampled_from((0.0, 0.5, 0.9))),
        framing=draw(st.sampled_from(FRAMING)),
        keep_alive=draw(st.booleans()),
        body=draw(st.sampled_from(("ok",) * 4 + BODY[1:])),
        status=draw(st.sampled_from((200, 200, 401, 500))),
    )


# `make chaos` (CHAOS_EXAMPLES) runs it at length with random draws; `make
# test` a derandomized handful.
_EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "0") or 0)


@pytest.mark.slow
@settings(max_examples=_EXAMPLES or 15, deadline=None, derandomize=not _EXAMPLES, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(CENSUS_BODY), fault=census_faults())
def test_generated_census_adversary(kind: str, fault: Fault, test_pki: PKI, census_server: ChaosServer,
                                    census_prober: Prober) -> None:
    census_server.census_kind = kind
    try:
        result = run_case(census_server, census_prober, chaos_target(test_pki, census_server), fault)
    finally:
        census_server.census_kind = None
    _check(result, census_server, kind)
