"""The emulator's session census actions, limits and answer variants.

describeSessions and listSessions in FairCom's documented shapes, the
per-IP session limit next to the per-user one, permanent sessions
(idleConnectionTimeoutSeconds 0), the answer variants real clients have
met, and the promise that every errorCode the emulator sends means in
fcmon/probe/codes.py what the emulator means by it. Real TLS with client
certificates, as everywhere.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Dict, Iterator

import pytest
import requests

from fcmon.probe import codes
from fcmon.emulator import (
    ERR_INVALID_PARAMETER,
    ERR_SESSION_LIMIT,
    ERR_UNKNOWN_ACTION,
    ERR_UNKNOWN_TOKEN,
    FAIRCOM_UNKNOWN_TOKEN_MESSAGE,
    SENT,
    Emulator,
    Fault,
    Variants,
)
from support import PKI

USERS = {"ADMIN": "ADMIN", "APP": "app-pw", "OTHER": "other-pw"}
LOCAL_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _emu(test_pki: PKI, **kwargs: Any) -> Emulator:
    kwargs.setdefault("users", USERS)
    return Emulator(test_pki.server.cert, test_pki.server.key, client_ca_file=test_pki.ca_file, **kwargs)


@pytest.fixture
def http(test_pki: PKI) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(test_pki.ca_file)
    session.cert = (str(test_pki.client.cert), str(test_pki.client.key))
    yield session
    session.close()


def post(http: requests.Session, emu: Emulator, body: Any) -> Dict[str, Any]:
    response = http.post(emu.url, json=body, timeout=10)
    assert response.headers["Content-Type"].startswith("application/json")
    data = response.json()
    assert isinstance(data, dict)
    return data


def login(http: requests.Session, emu: Emulator, user: str = "ADMIN", **params: Any) -> str:
    body = {"api": "admin", "action": "createSession",
            "params": {"username": user, "password": USERS[user], **params}}
    data = post(http, emu, body)
    assert data["errorCode"] == 0, data
    return str(data["result"]["authToken"])


def admin(http: requests.Session, emu: Emulator, action: str, token: str, **params: Any) -> Dict[str, Any]:
    return post(http, emu, {"api": "admin", "action": action, "authToken": token, "params": params})


def test_describe_sessions_lists_the_calling_accounts_sessions_in_full(test_pki: PKI, http: requests.Session) -> None:
    with _emu(test_pki) as emu:
        mine = login(http, emu, description="fcmon health check")
        other = login(http, emu, description="loader", idleConnectionTimeoutSeconds=0)
        login(http, emu, "APP", description="the application")
        answer = admin(http, emu, "describeSessions", mine)
        assert answer["errorCode"] == 0 and answer["authToken"] == mine
        sessions = answer["result"]["sessions"]
        assert {s["authToken"] for s in sessions} == {mine, other}  # not APP's
        by_token = {s["authToken"]: s for s in sessions}
        assert by_token[mine]["description"] == "fcmon health check"
        assert by_token[other]["permanentSession"] is True and by_token[other]["idleConnectionTimeoutSeconds"] == 0
        for s in sessions:
            assert s["username"] == "ADMIN"
            for key in ("sessionStartTimestamp", "sessionLastAccessedTimestamp"):
                # local time, no zone, to the second: FairCom's documented form
                assert LOCAL_STAMP.fullmatch(s[key]), s[key]
                stamp = dt.datetime.strptime(s[key], "%Y-%m-%dT%H:%M:%S")
                assert abs((stamp - dt.datetime.now()).total_seconds()) < 60
            for key in ("idleCursorTimeoutSeconds", "defaultApi", "defaultDatabaseName", "hostname", "hostUuid"):
                assert key in s
        narrowed = admin(http, emu, "describeSessions", mine, authTokens=[other])
        assert [s["authToken"] for s in narrowed["result"]["sessions"]] == [other]
        assert admin(http, emu, "describeSessions", mine, authTokens="x")["errorCode"] == ERR_INVALID_PARAMETER
        # an admin action: the db api does not know it
        wrong = post(http, emu, {"api": "db", "action": "describeSessions", "authToken": mine})
        assert wrong["errorCode"] == ERR_UNKNOWN_ACTION


def test_list_sessions_admin_sees_all_others_their_own_and_the_filter_narrows(
        test_pki: PKI, http: requests.Session) -> None:
    with _emu(test_pki) as emu:
        boss = login(http, emu)
        app = login(http, emu, "APP", description="app")
        login(http, emu, "OTHER")
        everyone = admin(http, emu, "listSessions", boss)["result"]["sessions"]
        assert sorted(s["username"] for s in everyone) == ["ADMIN", "APP", "OTHER"]
        assert all(set(s) == {"authToken", "username", "description"} for s in everyone)
        filtered = admin(http, emu, "listSessions", boss, usernameFilter=["app"])["result"]["sessions"]
        assert [(s["username"], s["description"]) for s in filtered] == [("APP", "app")]
        # not an administrator: only its own sessions, whatever the filter asks
        own = admin(http, emu, "listSessions", app, usernameFilter=["ADMIN", "APP"])["result"]["sessions"]
        assert [s["username"] for s in own] == ["APP"]
        for bad in ("APP", [""], ["x" * 65], [1]):
            assert admin(http, emu, "listSessions", boss, usernameFilter=bad)["errorCode"] == ERR_INVALID_PARAMETER
        assert admin(http, emu, "listSessions", "no-such-token")["errorCode"] == ERR_UNKNOWN_TOKEN


def test_per_ip_limit_next_to_the_per_user_limit(test_pki: PKI, http: requests.Session) -> None:
    with _emu(test_pki, max_sessions_per_ip=3, max_sessions_per_user=2) as emu:
        login(http, emu)
        login(http, emu)
        refused = post(http, emu, {"api": "admin", "action": "createSession",
                                   "params": {"username": "ADMIN", "password": "ADMIN"}})
        assert refused["errorCode"] == ERR_SESSION_LIMIT and "per user" in refused["errorMessage"]
        login(http, emu, "APP")
        refused = post(http, emu, {"api": "admin", "action": "createSession",
                                   "params": {"username": "OTHER", "password": USERS["OTHER"]}})
        assert refused["errorCode"] == ERR_SESSION_LIMIT
        assert "per IP address (3) reached for 127.0.0.1" in refused["errorMessage"]
        assert emu.open_sessions() == 3 and emu.open_sessions("admin") == 2
    with pytest.raises(ValueError):
        _emu(test_pki, max_sessions_per_ip=0)


def test_idle_timeout_zero_never_expires(test_pki: PKI, http: requests.Session) -> None:
    clock = Clock()
    with _emu(test_pki, clock=clock) as emu:
        permanent = login(http, emu, idleConnectionTimeoutSeconds=0)
        login(http, emu, idleConnectionTimeoutSeconds=5)
        clock.now += 10 * 365 * 86400
        assert emu.open_sessions() == 1
        assert admin(http, emu, "describeSessions", permanent)["errorCode"] == 0
        negative = post(http, emu, {"api": "admin", "action": "createSession",
                                    "params": {"username": "ADMIN", "password": "ADMIN",
                                               "idleConnectionTimeoutSeconds": -1}})
        assert negative["errorCode"] == ERR_INVALID_PARAMETER


@pytest.mark.parametrize("where", ["both", "root", "result"])
def test_token_placement_switch(test_pki: PKI, http: requests.Session, where: str) -> None:
    body = {"api": "admin", "action": "createSession", "params": {"username": "ADMIN", "password": "ADMIN"}}
    with _emu(test_pki, variants=Variants(token_at=where)) as emu:
        data = post(http, emu, body)
        assert ("authToken" in data) == (where in ("both", "root"))
        assert ("authToken" in data["result"]) == (where in ("both", "result"))
    with _emu(test_pki) as emu:  # the same through the fault API, once
        emu.set_fault("createSession", Fault(token_at=where, count=1))
        data = post(http, emu, body)
        assert ("authToken" in data) == (where in ("both", "root"))
        assert ("authToken" in data["result"]) == (where in ("both", "result"))
        again = post(http, emu, body)
        assert "authToken" in again and "authToken" in again["result"]


def test_bare_errors_and_faircom_message_give_the_documented_error_shape(
        test_pki: PKI, http: requests.Session) -> None:
    with _emu(test_pki, variants=Variants(bare_errors=True, faircom_messages=True)) as emu:
        answer = admin(http, emu, "listSessions", "stale-token")
        # FairCom's listSessions example for a bad token, key for key
        assert answer == {"authToken": "stale-token", "errorCode": 12031,
                          "errorMessage": FAIRCOM_UNKNOWN_TOKEN_MESSAGE}
        assert post(http, emu, {"api": "admin"})["errorCode"] != 0  # no token to echo: none echoed
        assert "authToken" not in post(http, emu, {"api": "admin"})
        token = login(http, emu)
        assert "result" in admin(http, emu, "describeSessions", token)  # success keeps its result
    with _emu(test_pki) as emu:
        plain = admin(http, emu, "listSessions", "stale-token")
        assert plain["result"] == {} and "authToken" not in plain
        assert plain["errorMessage"] != FAIRCOM_UNKNOWN_TOKEN_MESSAGE
        emu.set_fault("*", Fault(bare_errors=True, faircom_messages=True))
        assert admin(http, emu, "listSessions", "stale-token")["errorMessage"] == FAIRCOM_UNKNOWN_TOKEN_MESSAGE


def test_delete_of_a_gone_session_as_warning_or_as_error(test_pki: PKI, http: requests.Session) -> None:
    delete = {"api": "admin", "action": "deleteSession", "authToken": "gone"}
    with _emu(test_pki) as emu:
        newer = post(http, emu, delete)
        assert newer["errorCode"] == 0 and newer["debugInfo"]["warnings"][0]["code"] == 12031
        emu.set_fault("deleteSession", Fault(delete_gone_as_error=True))
        assert post(http, emu, delete)["errorCode"] == 12031
    with _emu(test_pki, variants=Variants(delete_gone_as_error=True)) as emu:
        assert post(http, emu, delete)["errorCode"] == 12031
        token = login(http, emu)
        assert post(http, emu, dict(delete, authToken=token))["errorCode"] == 0


def test_variant_switches_are_validated() -> None:
    with pytest.raises(ValueError):
        Variants(token_at="nowhere")
    with pytest.raises(ValueError):
        Fault.from_dict({"token_at": "nowhere"})
    with pytest.raises(ValueError):
        Fault.from_dict({"bare_errors": 1})
    assert Fault.from_dict({"token_at": "root"}).token_at == "root"
    assert not Fault(faircom_messages=True).is_noop()


def test_every_code_the_emulator_sends_means_the_same_in_codes_py(test_pki: PKI, http: requests.Session) -> None:
    for code, meaning in SENT.items():
        assert codes.meaning(code) in (meaning, f"{meaning}, candidate"), code
    # and SENT is complete: every way of getting an error out of it
    with _emu(test_pki, max_sessions_per_user=1) as emu:
        token = login(http, emu)
        seen = set()
        requests_ = [
            {"api": "admin"},
            {"action": 5},
            {"action": "noSuchAction", "api": "admin"},
            {"action": "listDatabases", "api": "nope", "authToken": token},
            {"action": "listDatabases", "api": "admin", "authToken": token},
            {"action": "listDatabases", "api": "db", "authToken": "gone"},
            {"action": "listDatabases", "api": "db", "authToken": token, "params": {"skipRecords": -1}},
            {"action": "listDatabases", "api": "db", "authToken": token, "params": []},
            {"action": "createSession", "api": "admin", "params": {"username": "ADMIN", "password": "x"}},
            {"action": "createSession", "api": "admin", "params": {"username": "NOBODY", "password": "x"}},
            {"action": "createSession", "api": "admin", "params": {"username": "ADMIN", "password": "ADMIN"}},
            {"action": "listSessions", "api": "admin", "authToken": token, "params": {"usernameFilter": 1}},
            {"action": "describeSessions", "api": "admin", "authToken": "gone"},
            {"action": "pingSession", "api": "admin", "authToken": "gone"},
        ]
        for body in requests_:
            seen.add(post(http, emu, body)["errorCode"])
        seen.add(http.post(emu.url, data=b"{not json", timeout=10).json()["errorCode"])
        seen.add(http.post(emu.url, json=[1], timeout=10).json()["errorCode"])
    assert seen <= set(SENT), seen - set(SENT)
    assert seen == set(SENT) - {0}
