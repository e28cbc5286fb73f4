"""The session census (describeSessions before deleteSession) and the reaping
of this instance's orphans: parsed defensively, never the probe's failure,
inside the probe's deadline. Real TLS against the emulator; "another
client" is a plain HTTPS createSession from the test.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import replace
from typing import Any, Iterator, List

import pytest
import requests

from fcmon.probe.census import (
    CensusUnavailable,
    description_instance,
    is_fcmon,
    parse_census,
    parse_stamp,
    session_description,
)
from fcmon.config import Config
from fcmon.emulator import Emulator, Fault
from fcmon.service.instance import instance_id
from fcmon.export.metrics import FcmonCollector, MetricsStore
from fcmon.probe.run import CLEANUP_GRACE, REAP_MARGIN, REAP_MAX_PER_PROBE, Prober
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from support import PKI, make_target, sample

ME = "census-test-a"


class WallClock:
    """The emulator's wall clock, settable back to make sessions look old."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def emu(test_pki: PKI, wall: WallClock) -> Iterator[Emulator]:
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file,
                  wall_clock=wall) as e:
        yield e


@pytest.fixture
def other(test_pki: PKI) -> Iterator[requests.Session]:
    """Another client of the same account."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(test_pki.ca_file)
    s.cert = (str(test_pki.client.cert), str(test_pki.client.key))
    yield s
    s.close()


def open_session(http: requests.Session, emu: Emulator, description: str = "an application") -> str:
    body = {"api": "admin", "action": "createSession",
            "params": {"username": "ADMIN", "password": "ADMIN", "description": description}}
    data = http.post(emu.url, json=body, timeout=10).json()
    assert data["errorCode"] == 0, data
    return str(data["result"]["authToken"])


def descriptions(emu: Emulator) -> List[str]:
    return sorted(s.description for s in emu.store.sessions())


def exposition(*results: Any) -> str:
    store = MetricsStore()
    from fcmon.config import TargetConfig
    store.set_targets([TargetConfig(name=results[0].target, endpoint="https://x:1/api")])
    for r in results:
        store.record(r)
    registry = CollectorRegistry()
    registry.register(FcmonCollector(store))
    return generate_latest(registry).decode()


# -- parsing, no sockets ------------------------------------------------------

NOW = "2026-12-03T10:00:00"


def _s(token: str, description: str = "app", start: str = "2026-12-03T09:00:00",
       last: str = "2026-12-03T09:30:00") -> dict:
    return {"authToken": token, "username": "ADMIN", "description": description,
            "sessionStartTimestamp": start, "sessionLastAccessedTimestamp": last}


def test_census_counts_and_ages_against_the_servers_own_stamp_of_the_probes_session() -> None:
    body = {"result": {"sessions": [
        _s("own", session_description(ME), start=NOW, last=NOW),
        _s("app"),
        _s("orphan", session_description(ME), start="2026-12-03T09:59:00", last="2026-12-03T09:59:01"),
        _s("young", session_description(ME), start="2026-12-03T09:59:58", last="2026-12-03T09:59:58"),
        _s("theirs", session_description("another-fcmon"), start="2026-12-01T00:00:00"),
        _s("old-fcmon", session_description(None), start="2026-12-01T00:00:00"),
    ]}}
    census, orphans = parse_census(0, body, "own", ME, 50, reap_after=4.0)
    assert (census.sessions, census.fcmon, census.limit) == (6, 5, 50)
    assert census.oldest_idle == 1800.0  # "app" and the others, last seen at 09:30 (server time)
    assert [(o.token, o.age) for o in orphans] == [("orphan", 60.0)]
    # no instance id, or no reaping asked: no orphans
    assert parse_census(0, body, "own", None, 50, reap_after=4.0)[1] == []
    assert parse_census(0, body, "own", ME, 50, reap_after=None)[1] == []


@pytest.mark.parametrize("code, body", [
    (14701, {"errorCode": 14701}),
    (0, {}),
    (0, {"result": []}),
    (0, {"result": {}}),
    (0, {"result": {"sessions": {"a": 1}}}),
    (0, {"result": {"sessions": None}}),
    (0, ["not", "an", "object"]),
    (0, {"result": {"sessions": [{}] * 5000}}),
])
def test_an_unusable_answer_is_unavailable_not_an_error(code: int, body: Any) -> None:
    with pytest.raises(CensusUnavailable):
        parse_census(code, body, "own", ME, 50)


def test_every_field_is_parsed_defensively() -> None:
    junk: List[Any] = [None, 1, "x", [], {}, {"authToken": 5, "description": ["fcmon"]},
                       {"authToken": "t", "description": session_description(ME), "sessionStartTimestamp": 7},
                       {"authToken": "u", "description": session_description(ME),
                        "sessionStartTimestamp": "2026-13-45T99:00:00"},
                       {"authToken": "v", "description": session_description(ME),
                        "sessionStartTimestamp": "x" * 10_000},
                       {"authToken": "w", "description": session_description(ME),
                        "sessionStartTimestamp": "2026-12-03T08:00:00Z"},  # aware vs naive: no age
                       {"authToken": "", "description": session_description(ME), "sessionStartTimestamp": "2020-01-01T00:00:00"}]
    body = {"result": {"sessions": [_s("own", session_description(ME), start=NOW, last=NOW)] + junk}}
    census, orphans = parse_census(0, body, "own", ME, 50, reap_after=1.0)
    assert census.sessions == 1 + len(junk)
    assert orphans == []
    # The probe's own session missing from the list: it is live all the same.
    census, _ = parse_census(0, {"result": {"sessions": [_s("app")]}}, "own", ME, 50)
    assert (census.sessions, census.fcmon, census.oldest_idle) == (2, 1, None)
    # ... and createSession's stamp is then the clock
    census, _ = parse_census(0, {"result": {"sessions": [_s("app")]}}, "own", ME, 50, created_stamp=NOW)
    assert census.oldest_idle == 1800.0


def test_stamps_and_descriptions() -> None:
    assert parse_stamp("2023-03-31T15:15:51") == dt.datetime(2023, 3, 31, 15, 15, 51)
    assert parse_stamp("2023-03-31T15:15:51.250") == dt.datetime(2023, 3, 31, 15, 15, 51, 250000)
    assert parse_stamp("2023-03-31T15:15:51Z").tzinfo is not None  # type: ignore[union-attr]
    for bad in (None, 5, "", "yesterday", "2023-03-31T25:00:00", "9" * 50):
        assert parse_stamp(bad) is None
    assert description_instance(session_description("a.b-c_1")) == "a.b-c_1"
    assert description_instance("fcmon health check") is None
    assert description_instance("fcmon health check, instance a b") is None
    assert description_instance(None) is None
    assert is_fcmon("fcmon health check") and is_fcmon(session_description("x")) and not is_fcmon("app")


def test_instance_id_is_stable_and_differs_where_it_must(tmp_path: Any) -> None:
    a = Config(path=tmp_path / "a.ini", listen_port=9731)
    assert instance_id(a, "machine1") == instance_id(replace(a), "machine1")  # a restart
    assert instance_id(a, "machine1") != instance_id(a, "machine2")
    assert instance_id(a, "machine1") != instance_id(replace(a, path=tmp_path / "b.ini"), "machine1")
    assert instance_id(a, "machine1") != instance_id(replace(a, listen_port=9732), "machine1")
    assert instance_id(replace(a, instance_id="east-1"), "machine1") == "east-1"
    assert description_instance(session_description(instance_id(a))) == instance_id(a)


# -- against the emulator -----------------------------------------------------


def test_probe_counts_the_accounts_sessions_its_own_included(test_pki: PKI, emu: Emulator,
                                                             other: requests.Session) -> None:
    for _ in range(3):
        open_session(other, emu)
    result = Prober(instance_id=ME).probe(make_target(test_pki, emu, account_sessions_limit=10))
    assert result.up, result.failure
    c = result.census
    assert c is not None and (c.sessions, c.fcmon, c.limit, c.reaped) == (4, 1, 10, 0)
    assert c.oldest_idle is not None and 0 <= c.oldest_idle < 5
    assert emu.open_sessions() == 3  # its own deleted, the others left alone
    sent = [r.get("action") for r in emu.requests_seen()[-3:]]
    assert sent == ["listDatabases", "describeSessions", "deleteSession"]
    # the session fcmon created says whose it is
    assert emu.requests_seen()[-4]["params"]["description"] == session_description(ME)
    text = exposition(result)
    assert sample(text, "fcmon_account_sessions", target="prod") == 4
    assert sample(text, "fcmon_account_sessions_limit", target="prod") == 10
    assert sample(text, "fcmon_account_sessions_fcmon", target="prod") == 1
    assert sample(text, "fcmon_account_sessions_oldest_idle_seconds", target="prod") is not None
    assert sample(text, "fcmon_sessions_reaped_total", target="prod") == 0


def test_census_off_sends_no_describe(test_pki: PKI, emu: Emulator) -> None:
    result = Prober(instance_id=ME).probe(make_target(test_pki, emu, session_census=False))
    assert result.up and result.census is None and result.census_unavailable is None
    assert "describeSessions" not in [r.get("action") for r in emu.requests_seen()]
    assert sample(exposition(result), "fcmon_account_sessions", target="prod") is None


def test_own_orphans_older_than_the_longest_probe_are_reaped_and_nobody_elses(
        test_pki: PKI, emu: Emulator, wall: WallClock, other: requests.Session) -> None:
    target = make_target(test_pki, emu, timeout=2.0)
    longest = target.timeout + CLEANUP_GRACE + REAP_MARGIN
    wall.offset = -(longest + 60)
    for _ in range(REAP_MAX_PER_PROBE + 1):
        open_session(other, emu, session_description(ME))  # what a killed fcmon left
    open_session(other, emu, session_description("another-fcmon"))
    open_session(other, emu, session_description(None))
    open_session(other, emu, "an application")
    wall.offset = -(longest - 1.5)  # recent enough to be another probe's, in flight
    open_session(other, emu, session_description(ME))
    wall.offset = 0.0
    prober = Prober(instance_id=ME)
    first = prober.probe(target)
    assert first.up and first.census is not None
    assert (first.census.sessions, first.census.fcmon, first.census.reaped) == (11, 10, REAP_MAX_PER_PROBE)
    second = prober.probe(target)
    assert second.census is not None and second.census.reaped == 1
    assert descriptions(emu) == sorted([session_description(ME), session_description("another-fcmon"),
                                        session_description(None), "an application"])
    assert sample(exposition(first, second), "fcmon_sessions_reaped_total", target="prod") == REAP_MAX_PER_PROBE + 1
    # Another instance sees the same orphans-by-age and deletes none of them.
    wall.offset = -(longest + 60)
    open_session(other, emu, session_description(ME))
    wall.offset = 0.0
    theirs = Prober(instance_id="third-fcmon").probe(target)
    assert theirs.census is not None and theirs.census.reaped == 0
    assert descriptions(emu).count(session_description(ME)) == 2


def test_unknown_action_is_not_available_logged_once_and_the_probe_is_up(
        test_pki: PKI, emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    emu.set_fault("describeSessions", Fault(error_code=14701, error_message="unknown action"))
    prober = Prober(instance_id=ME)
    target = make_target(test_pki, emu)
    with caplog.at_level(logging.INFO, logger="fcmon.probe.run"):
        results = [prober.probe(target) for _ in range(3)]
    assert all(r.up and r.census is None for r in results)
    assert results[0].census_unavailable == "describeSessions answered errorCode 14701"
    notes = [r for r in caplog.records if "session census not available" in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in caplog.records]
    assert emu.open_sessions() == 0
    text = exposition(*results)
    assert sample(text, "fcmon_account_sessions", target="prod") is None
    assert sample(text, "fcmon_up", target="prod") == 1
    emu.clear_faults()
    with caplog.at_level(logging.INFO, logger="fcmon.probe.run"):
        back = prober.probe(target)
    assert back.census is not None
    assert any("session census available again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", [Fault(hang=True), Fault(drip=True, drip_interval=0.2), Fault(reset=True),
                                   Fault(malformed_json=True), Fault(token_at="root", bare_errors=True)])
def test_a_census_that_fails_is_inside_the_deadline_and_the_session_is_still_deleted(
        test_pki: PKI, emu: Emulator, fault: Fault) -> None:
    emu.set_fault("describeSessions", fault)
    target = make_target(test_pki, emu, timeout=2.0)
    started = time.monotonic()
    result = Prober(instance_id=ME).probe(target)
    elapsed = time.monotonic() - started
    assert result.up, result.failure
    assert elapsed < target.timeout + 1.0, elapsed
    assert not result.session_leaked
    emu.clear_faults()
    assert emu.open_sessions() == 0


@pytest.mark.parametrize("where", ["root", "result"])
def test_census_works_wherever_the_token_is(test_pki: PKI, emu: Emulator, where: str) -> None:
    emu.api.variants = replace(emu.api.variants, token_at=where, bare_errors=True, faircom_messages=True)
    result = Prober(instance_id=ME).probe(make_target(test_pki, emu))
    assert result.up and result.census is not None and result.census.sessions == 1


def test_a_slow_census_does_not_starve_the_delete(test_pki: PKI, emu: Emulator) -> None:
    """describeSessions answers after the census's share of the timeout:
    the census is given up, the session deleted on a new connection."""
    target = make_target(test_pki, emu, timeout=2.0)
    emu.set_fault("describeSessions", Fault(delay=1.8, count=1))
    result = Prober(instance_id=ME).probe(target)
    assert result.up and result.census is None
    assert result.census_unavailable is not None and "describeSessions" in result.census_unavailable
    assert result.delete_reconnected and not result.session_leaked
    assert emu.open_sessions() == 0


def test_probe_without_instance_id_counts_but_never_reaps(test_pki: PKI, emu: Emulator, wall: WallClock,
                                                          other: requests.Session) -> None:
    wall.offset = -3600
    open_session(other, emu, session_description(None))
    wall.offset = 0
    result = Prober().probe(make_target(test_pki, emu))
    assert result.census is not None and (result.census.fcmon, result.census.reaped) == (2, 0)
    assert emu.open_sessions() == 1


# -- listSessions per-user counts (optional, administrator accounts) ---------


def test_per_user_counts_for_configured_names_only(test_pki: PKI, wall: WallClock,
                                                   other: requests.Session, caplog: pytest.LogCaptureFixture) -> None:
    users = {"ADMIN": "ADMIN", "APP": "app", "BATCH": "batch"}
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file, users=users) as emu:
        for name, n in (("APP", 2), ("BATCH", 3)):
            for _ in range(n):
                body = {"api": "admin", "action": "createSession",
                        "params": {"username": name, "password": users[name]}}
                assert other.post(emu.url, json=body, timeout=10).json()["errorCode"] == 0
        target = make_target(test_pki, emu, session_census_usernames=("app", "NOBODY"))
        prober = Prober(instance_id=ME)
        result = prober.probe(target)
        assert result.census is not None and result.census.by_user == (("app", 2), ("NOBODY", 0))
        assert result.census.sessions == 1  # describeSessions: the account's own only
        text = exposition(result)
        assert sample(text, "fcmon_account_sessions_by_user", target="prod", username="app") == 2
        assert sample(text, "fcmon_account_sessions_by_user", target="prod", username="BATCH") is None
        sent = [r for r in emu.requests_seen() if r.get("action") == "listSessions"]
        assert sent[-1]["params"] == {"usernameFilter": ["app", "NOBODY"]}
        # without permission or the action: no counts, logged once, the census and the probe fine
        emu.set_fault("listSessions", Fault(error_code=12030))
        with caplog.at_level(logging.INFO, logger="fcmon.probe.run"):
            results = [prober.probe(target) for _ in range(2)]
        assert all(r.up and r.census is not None and r.census.by_user == () for r in results)
        notes = [r for r in caplog.records if "per-user session counts not available" in r.getMessage()]
        assert len(notes) == 1 and "12030" in notes[0].getMessage()
        assert emu.open_sessions() == 5
    # off by default: no listSessions at all
    with Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file) as emu:
        Prober(instance_id=ME).probe(make_target(test_pki, emu))
        assert "listSessions" not in [r.get("action") for r in emu.requests_seen()]


@pytest.mark.parametrize("value, problem", [
    ("a, A", "listed twice"),
    ("a,,b", "1 to 64 bytes"),
    ("x" * 65, "1 to 64 bytes"),
    (", ".join(f"u{i}" for i in range(21)), "at most 20"),
])
def test_census_usernames_are_validated(tmp_path: Any, value: str, problem: str) -> None:
    from fcmon.config import ConfigError, parse_config

    text = f"[target:a]\nendpoint = https://db:8443/api\nsession_census_usernames = {value}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path, {})
    assert problem in str(err.value) and "session_census_usernames" in str(err.value)
    off = "[target:a]\nendpoint = https://db:8443/api\nsession_census = false\nsession_census_usernames = APP\n"
    with pytest.raises(ConfigError) as err:
        parse_config(off, tmp_path, {})
    assert "needs session_census = true" in str(err.value)
    good = parse_config("[target:a]\nendpoint = https://db:8443/api\nsession_census_usernames = APP, batch\n",
                        tmp_path, {})
    assert good.targets[0].session_census_usernames == ("APP", "batch")
