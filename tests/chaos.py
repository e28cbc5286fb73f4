"""A hostile FairCom JSON DB API for tests: the chaos server.

A real TLS listener on loopback (client certificates required, as the
emulator and FairCom do) that answers createSession, listDatabases and
deleteSession like a server, except for one call per case, where it
misbehaves as a `Fault` says. The TLS layer is an `ssl.SSLObject` over
memory buffers, so every byte that goes on the wire is the server's to
choose: a handshake dripped a byte at a time, raw garbage inside the TLS
stream, an alert, a close_notify, a FIN or an RST at any offset of any
response.

The server keeps the sessions it created and deleted, so a test can prove
that every session is deleted or counted as a leak. `reset()` ends every
connection and waits for its threads, so a test can prove the process is
back to its baseline of threads and descriptors.

tests/test_chaos.py draws `Fault`s with hypothesis (see `faults()`).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from fcmon.emulator.tlscontext import server_ssl_context

ACTIONS = ("createSession", "listDatabases", "deleteSession")
STAGE_OF = {"createSession": "create_session", "listDatabases": "list_databases", "deleteSession": "delete_session"}
NEXT_STAGE = {"createSession": "list_databases", "listDatabases": "delete_session", "deleteSession": None}

# Where the server misbehaves. accept and handshake hit the probe's first
# connection; the others the response to the call `Fault.action`.
CONNECTION_WHERE = ("accept", "handshake")
MESSAGE_WHERE = ("before_status", "in_headers", "in_body", "after_body")
WHERE = CONNECTION_WHERE + MESSAGE_WHERE
# How: nothing odd (the framing and JSON alone misbehave), stop sending
# (stall), send the rest one byte per `rate` seconds (drip), FIN without
# close_notify, RST, a fatal TLS alert, a close_notify, garbage in the
# HTTP stream, garbage in the TLS stream.
HOW = ("none", "stall", "drip", "fin", "rst", "alert", "close_notify", "garbage", "garbage_tls")
CONNECTION_HOW = ("stall", "drip", "fin", "rst", "alert", "close_notify", "garbage_tls")
FRAMING = (
    "length",  # Content-Length right
    "length_long",  # Content-Length larger than the body
    "length_short",  # Content-Length smaller than the body
    "chunked",  # valid chunks
    "chunked_endless",  # chunks forever
    "chunked_invalid",  # a chunk size that is not hex
    "chunked_huge",  # a chunk size of 2**64 - 1
    "close",  # no length: the body ends with the connection
)
EXTRA = ("none", "continue_flood", "many_headers", "long_header")
BODY = (
    "ok",
    "not_object",
    "truncated",
    "invalid_utf8",
    "deep",
    "huge_number",
    "big_code",
    "code_string",
    "code_float",
    "code_bool",
    "code_missing",
    "code_null",
    "token_empty",
    "token_number",
    "token_huge",
    "duplicate_keys",
    "html",
    "padded",  # a good answer with 1 MB more: over a small size cap
)

# A fatal TLS alert record (internal_error), and one that is a close_notify.
_ALERT = b"\x15\x03\x03\x00\x02\x02\x50"
_CLOSE_NOTIFY_RAW = b"\x15\x03\x03\x00\x02\x01\x00"
_GARBAGE_TLS = b"\x17\x03\x03\x00\x20" + bytes(range(32))
_GARBAGE_HTTP = b"\x00\xffgarbage\r\n\x7f<<>>\r\n"
MAX_REQUEST = 4 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    where: str = "in_body"
    how: str = "none"
    action: str = "listDatabases"
    rate: float = 0.01  # drip: seconds per byte
    offset: float = 0.5  # in_headers / in_body: where, as a fraction of that part
    framing: str = "length"
    keep_alive: bool = True  # False: `Connection: close`
    http10: bool = False
    extra: str = "none"
    body: str = "ok"
    status: int = 200
    content_length: Optional[int] = None  # a Content-Length to announce instead, whatever the framing

    def stages(self) -> Tuple[str, ...]:
        """The stages where this fault may show: where it happened, or (for
        what it leaves on a kept-alive connection) the next call's."""
        if self.where in CONNECTION_WHERE:
            return ("connect",)
        nxt = NEXT_STAGE[self.action]
        return (STAGE_OF[self.action],) + ((nxt,) if nxt else ())

    def allows(self, stage: str, reason: str) -> bool:
        """Whether a probe failure at (stage, reason) is where this fault
        shows. A drip that ends just in time has spent the time of the calls
        after it: they may time out."""
        if stage in self.stages():
            return True
        if self.how == "drip" and reason == "timeout":
            first = "connect" if self.where in CONNECTION_WHERE else STAGE_OF[self.action]
            order = ("connect",) + tuple(STAGE_OF[a] for a in ACTIONS)
            return order.index(stage) > order.index(first)
        return False


class _Closed(Exception):
    """The connection is over (the peer closed it, or the test reset the server)."""


class _Conn:
    """One accepted connection: TLS through memory buffers, bytes under control."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext, stop: threading.Event):
        self.raw = raw
        self.stop = stop
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_side=True)
        self.buf = b""

    # -- raw bytes
    def _send_raw(self, data: bytes, rate: Optional[float] = None) -> None:
        if rate is None:
            self.raw.sendall(data)
            return
        for i in range(len(data)):
            if self.stop.wait(rate):
                raise _Closed()
            self.raw.sendall(data[i:i + 1])

    def _flush(self, rate: Optional[float] = None) -> None:
        data = self.out.read()
        if data:
            self._send_raw(data, rate)

    def _fill(self) -> None:
        data = self.raw.recv(65536)
        if not data:
            raise _Closed()
        self.inc.write(data)

    # -- TLS
    def handshake(self, rate: Optional[float] = None) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush(rate)
                return
            except ssl.SSLWantReadError:
                self._flush(rate)
                self._fill()

    def recv(self) -> bytes:
        while True:
            try:
                data = self.tls.read(65536)
                if not data:
                    raise _Closed()
                return data
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                raise _Closed() from None

    def send(self, data: bytes, rate: Optional[float] = None) -> None:
        if rate is None:
            for i in range(0, len(data), 16384):
                self.tls.write(data[i:i + 16384])
                self._flush()
            return
        for i in range(len(data)):  # one byte, one TLS record, per tick
            if self.stop.wait(rate):
                raise _Closed()
            self.tls.write(data[i:i + 1])
            self._flush()

    def read_request(self) -> Optional[bytes]:
        """The body of the next request, None when the client is gone."""
        try:
            while b"\r\n\r\n" not in self.buf:
                self.buf += self.recv()
                if len(self.buf) > MAX_REQUEST:
                    return None
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(rest) < length:
                rest += self.recv()
        except _Closed:
            return None
        self.buf = rest[length:]
        return rest[:length]

    # -- endings
    def wait_for_end(self) -> None:
        """Hold the connection open (a stall) until the test resets the server
        or the client goes away."""
        self.raw.settimeout(0.05)
        while not self.stop.is_set():
            try:
                if not self.raw.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def end(self, how: str, before_tls: bool = False) -> None:
        """Misbehave with `how` at the current point of the stream, then hold
        or drop the connection. `before_tls`: no TLS session yet, records are
        written raw."""
        if before_tls and how in ("alert", "close_notify"):
            self._send_raw(_ALERT if how == "alert" else _CLOSE_NOTIFY_RAW)
            self.wait_for_end()
        elif how == "stall":
            self.wait_for_end()
        elif how == "fin":
            self.raw.shutdown(socket.SHUT_WR)
            self.wait_for_end()
        elif how == "rst":
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "alert":
            self._send_raw(_ALERT)
            self.wait_for_end()
        elif how == "close_notify":
            try:
                self.tls.unwrap()
            except (ssl.SSLError, ssl.SSLWantReadError):
                pass
            self._flush()
            self.raw.shutdown(socket.SHUT_WR)
            self.wait_for_end()
        elif how == "garbage_tls":
            self._send_raw(_GARBAGE_TLS)
            self.wait_for_end()
        else:
            raise AssertionError(how)


@dataclass(frozen=True)
class Texts:
    """What the server says in its own words, for one case: every server
    field a renderer shows (tests/test_chaos.py draws them from a grammar of
    lone surrogates, controls, bidi controls and very long text)."""

    server_version: str = "FairCom chaos"
    hostname: str = "chaos"
    host_uuid: str = "u"
    database_names: Tuple[str, ...] = ("faircom",)
    error_message: str = ""
    # the action answered with `error_code` and `error_message` (None: none)
    fail_action: Optional[str] = None
    error_code: int = 150
    warning_message: str = ""  # deleteSession's answer carries a warning with this text
    warning_code_keys: bool = False  # {warningCode, warningMessage} instead of {code, message}
    service_name: str = "mqtts8883"
    description: str = "MQTT"

    def list_services(self) -> Dict[str, object]:
        """A listServices answer naming a listener with these texts."""
        return {"errorCode": 0, "errorMessage": self.error_message, "result": {"listeners": [
            {"serviceName": self.service_name, "description": self.description, "enabled": True,
             "port": "8883", "protocol": "mqtts"},
            {"serviceName": self.service_name + "2", "description": self.description, "enabled": True,
             "port": "9002", "protocol": "mqttwss"},
        ]}}


class ChaosServer:
    """The listener and its sessions. One fault is armed at a time (`arm`);
    it fires once, on the first call (or connection) it applies to."""

    def __init__(self, cert: Path, key: Path, client_ca: Path, databases: Tuple[str, ...] = ("faircom",)):
        self.ctx = server_ssl_context(cert, key, client_ca)
        self.databases = databases
        # describeSessions / listSessions answers (census_answer): None
        # answers them as unknown actions, like a server without them
        self.census_kind: Optional[str] = None
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"https://localhost:{self.port}/api"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        self._threads: List[threading.Thread] = []
        self._socks: Set[socket.socket] = set()
        self._fault: Optional[Fault] = None
        self.texts = Texts(database_names=databases)
        self._fired = False
        self._conn_index = 0
        self.created: Set[str] = set()
        self.deleted: Set[str] = set()
        self.tokens: List[str] = []
        self.errors: List[str] = []  # the server's own failures (a broken test, not the probe)
        # called with each action, in the connection's thread, before it is answered
        self.on_request: Optional[Callable[[str], None]] = None
        self._accepter = threading.Thread(target=self._accept, name="chaos-accept", daemon=True)
        self._accepter.start()

    # -- test interface
    def arm(self, fault: Optional[Fault], texts: Optional[Texts] = None) -> None:
        with self._lock:
            self._fault = fault
            self.texts = texts or Texts(database_names=self.databases)
            self._fired = False
            self._conn_index = 0
            self.created.clear()
            self.deleted.clear()
            self.tokens.clear()
            self.errors.clear()
            self._stop.clear()

    @property
    def fired(self) -> bool:
        return self._fired

    def open_sessions(self) -> Set[str]:
        with self._lock:
            return self.created - self.deleted

    def reset(self, wait: float = 10.0) -> None:
        """End every connection and wait for its thread."""
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(wait)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            alive = len(self._threads)
        assert alive == 0, f"{alive} chaos connection threads did not end"

    def close(self) -> None:
        self._closing = True
        self.reset()
        try:
            socket.socket.shutdown(self._listener, socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepter.join(10)

    def __enter__(self) -> "ChaosServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server
    def _accept(self) -> None:
        while not self._closing:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                raw.close()
                return
            with self._lock:
                index = self._conn_index
                self._conn_index += 1
                self._socks.add(raw)
                thread = threading.Thread(target=self._serve, args=(raw, index), name="chaos-conn", daemon=True)
                self._threads.append(thread)
            thread.start()

    def _take(self, where: str, action: str = "") -> Optional[Fault]:
        """The armed fault if it applies here and has not fired yet."""
        with self._lock:
            f = self._fault
            if f is None or self._fired or f.where != where and not (
                    where == "message" and f.where in MESSAGE_WHERE):
                return None
            if action and f.action != action:
                return None
            self._fired = True
            return f

    def _serve(self, raw: socket.socket, index: int) -> None:
        conn = _Conn(raw, self.ctx, self._stop)
        try:
            fault = self._take("accept") if index == 0 else None
            if fault is not None:
                if fault.how == "drip":
                    conn._send_raw(b"\x16\x03\x01" + os.urandom(64), fault.rate)
                    conn.wait_for_end()
                else:
                    conn.end(fault.how, before_tls=True)
                return
            fault = self._take("handshake") if index == 0 else None
            if fault is not None:
                if fault.how == "drip":
                    conn.handshake(rate=fault.rate)
                else:
                    conn._fill()  # the ClientHello, then misbehave
                    conn.end(fault.how, before_tls=True)
                    return
            else:
                conn.handshake()
            while True:
                body = conn.read_request()
                if body is None:
                    return
                if not self._answer(conn, body):
                    return
        except (_Closed, OSError, ssl.SSLError):
            pass
        except Exception as exc:  # the chaos server's own bug: fail the test, not silently
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._socks.discard(raw)
            try:
                raw.close()
            except OSError:
                pass

    def _handle(self, body: bytes) -> Tuple[str, Dict[str, object]]:
        """What a FairCom server does with the request: (action, answer)."""
        try:
            request = json.loads(body)
        except ValueError:
            return "", {"errorCode": 4001, "errorMessage": "not JSON"}
        action = request.get("action", "")
        token = request.get("authToken")
        texts = self.texts
        with self._lock:
            if action == "createSession":
                if texts.fail_action == action:
                    return action, {"errorCode": texts.error_code, "errorMessage": texts.error_message}
                token = os.urandom(12).hex()
                self.created.add(token)
                self.tokens.append(token)
                return action, {"errorCode": 0, "result": {
                    "authToken": token, "serverVersion": texts.server_version, "hostname": texts.hostname,
                    "hostUuid": texts.host_uuid}}
            live = token in self.created and token not in self.deleted
            if not live:
                return action, {"errorCode": 12031, "errorMessage": "session not found"}
            if texts.fail_action == action:
                if action == "deleteSession" and texts.error_code == 12031:
                    self.deleted.add(token)  # type: ignore[arg-type]  # gone, as the code says
                return action, {"errorCode": texts.error_code, "errorMessage": texts.error_message}
            if action == "listDatabases":
                return action, {"errorCode": 0, "result": {"data": [{"databaseName": d}
                                                                    for d in texts.database_names]}}
            if action == "deleteSession":
                self.deleted.add(token)  # type: ignore[arg-type]
                if texts.warning_message:
                    keys = ("warningCode", "warningMessage") if texts.warning_code_keys else ("code", "message")
                    return action, {"errorCode": 0, "debugInfo": {"warnings": [
                        {keys[0]: 1001, keys[1]: texts.warning_message}]}}
                return action, {"errorCode": 0}
            if action in ("describeSessions", "listSessions") and self.census_kind is not None:
                return action, census_answer(self.census_kind, action, str(token), sorted(self.created - self.deleted))
        return action, {"errorCode": 4002, "errorMessage": "unknown action"}

    def _answer(self, conn: _Conn, body: bytes) -> bool:
        """Answer one request; False when the connection is over."""
        action, answer = self._handle(body)
        fault = self._take("message", action)
        if self.on_request is not None:
            self.on_request(action)
        if fault is None:
            payload = json.dumps(answer).encode()
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(payload), payload))
            return True
        if fault.body == "token_huge" and action == "createSession":
            # The session goes by the 1 MB token instead (mutate_body adds it).
            with self._lock:
                self.created.discard(str(answer["result"]["authToken"]))  # type: ignore[index]
        payload = mutate_body(answer, fault.body, self if action == "createSession" else None)
        return _misbehave(conn, fault, payload)


def mutate_body(answer: Dict[str, object], kind: str, server: Optional[ChaosServer] = None) -> bytes:
    """The JSON answer, spoilt as `kind` says. `server`: the answer is
    createSession's, and a token it carries names a session of that server."""
    if kind == "ok":
        return json.dumps(answer).encode()
    if kind == "not_object":
        return b"[0, 1, 2]"
    if kind == "truncated":
        raw = json.dumps(answer).encode()
        return raw[: len(raw) // 2]
    if kind == "invalid_utf8":
        return b'{"errorCode":0,"errorMessage":"\xff\xfe\xc3(","result":{"authToken":"x\xff","data":[]}}'
    if kind == "deep":
        # ~600 KB, under the default size cap: deeper than any recursion limit.
        return b'{"errorCode":0,"result":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    if kind == "huge_number":
        return b'{"errorCode":1' + b"0" * 5000 + b"}"  # past Python's int digit limit
    if kind == "big_code":
        return b'{"errorCode":1' + b"0" * 40 + b', "result": {"data": []}}'
    if kind == "html":
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    out = dict(answer)
    if kind == "code_string":
        out["errorCode"] = str(out.get("errorCode"))
    elif kind == "code_float":
        out["errorCode"] = float(out.get("errorCode", 0))  # type: ignore[arg-type]
    elif kind == "code_bool":
        out["errorCode"] = False
    elif kind == "code_missing":
        out.pop("errorCode", None)
    elif kind == "code_null":
        out["errorCode"] = None
    elif kind in ("token_empty", "token_number", "token_huge"):
        value: object = {"token_empty": "", "token_number": 12345, "token_huge": None}[kind]
        if kind == "token_huge":
            # A usable 1 MB token: the server accepts it in the next calls.
            value = "t" * 1_000_000
            if server is not None:
                with server._lock:
                    server.created.add(value)  # type: ignore[arg-type]
                    server.tokens.append(value)  # type: ignore[arg-type]
        result = out.get("result")
        out["result"] = dict(result, authToken=value) if isinstance(result, dict) else {"authToken": value}
    elif kind == "padded":
        out["pad"] = " " * 1_000_000
    elif kind == "duplicate_keys":
        raw = json.dumps(out).encode()
        return b'{"errorCode":7,' + raw[1:]
    else:
        raise AssertionError(kind)
    return json.dumps(out).encode()


# -- the session census: describeSessions and listSessions answers, each
# field of the documented shape spoilt in turn (fcmon/probe/census.py must read
# them all without a failure of the probe).

CENSUS_BODY = (
    "listed",  # the documented shape, every live session, stamps local without zone
    "own_missing",  # the probe's own session left out
    "no_result",
    "result_list",
    "sessions_object",
    "sessions_null",
    "junk_entries",  # null, numbers, strings, lists among the sessions
    "field_types",  # each field of the wrong type
    "bad_stamps",  # impossible dates, huge strings, numbers
    "aware_stamps",  # with a zone: not comparable with local ones
    "orphans",  # sessions naming an fcmon instance, old, with tokens the server does not know
    "many",  # 5,000 sessions: more than any server allows
    "long_text",  # 1 MB descriptions and user names
    "error_bare",  # errorCode 12031 without result, authToken echoed
)


def census_answer(kind: str, action: str, token: str, live: List[str]) -> Dict[str, object]:
    """A describeSessions (or listSessions) answer of `kind` for the session
    `token`, `live` being the server's live sessions."""
    def entry(t: str, description: str = "fcmon health check", start: object = "2026-12-03T10:00:00",
              last: object = "2026-12-03T10:00:01") -> Dict[str, object]:
        full: Dict[str, object] = {"authToken": t, "username": "ADMIN", "description": description,
                                   "sessionStartTimestamp": start, "sessionLastAccessedTimestamp": last,
                                   "idleConnectionTimeoutSeconds": 300, "permanentSession": False}
        if action == "listSessions":
            return {k: full[k] for k in ("authToken", "username", "description")}
        return full

    sessions: object = [entry(t) for t in live]
    if kind == "own_missing":
        sessions = [entry(t) for t in live if t != token]
    elif kind == "no_result":
        return {"errorCode": 0, "errorMessage": ""}
    elif kind == "result_list":
        return {"errorCode": 0, "result": [entry(t) for t in live]}
    elif kind == "sessions_object":
        sessions = {t: entry(t) for t in live}
    elif kind == "sessions_null":
        sessions = None
    elif kind == "junk_entries":
        sessions = [None, 7, "x", [entry(token)], {}] + [entry(t) for t in live]
    elif kind == "field_types":
        sessions = [{"authToken": 5, "username": [], "description": {"fcmon": True},
                     "sessionStartTimestamp": 1.5, "sessionLastAccessedTimestamp": None}] + [entry(t) for t in live]
    elif kind == "bad_stamps":
        sessions = [entry(t, start="2026-02-30T25:61:00", last="9" * 100_000) for t in live]
    elif kind == "aware_stamps":
        sessions = [entry(t, start="2026-12-03T09:00:00Z", last="2026-12-03T09:00:00+05:00") for t in live]
    elif kind == "orphans":
        sessions = [entry(t) for t in live] + [
            entry(os.urandom(12).hex(), f"fcmon health check, instance {who}", start="2026-12-03T08:00:00")
            for who in ("chaos-me", "chaos-me", "someone-else", "chaos-me x")]
    elif kind == "many":
        sessions = [entry(os.urandom(8).hex(), "app") for _ in range(5000)] + [entry(t) for t in live]
    elif kind == "long_text":
        sessions = [entry(t, description="d" * 1_000_000) for t in live]
    elif kind == "error_bare":
        return {"authToken": token, "errorCode": 12031,
                "errorMessage": "'authToken' does not match any existing session."}
    elif kind != "listed":
        raise AssertionError(kind)
    return {"authToken": token, "result": {"sessions": sessions}, "errorCode": 0, "errorMessage": ""}


def _chunks(body: bytes, piece: int = 512) -> bytes:
    out = b""
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def _misbehave(conn: _Conn, f: Fault, payload: bytes) -> bool:
    """Send the response to the faulted call as `f` says; False when the
    connection is over."""
    version = b"HTTP/1.0" if f.http10 else b"HTTP/1.1"
    head = [b"%s %d %s" % (version, f.status, b"OK" if f.status == 200 else b"Oops"),
            b"Content-Type: application/json"]
    if f.framing == "length":
        head.append(b"Content-Length: %d" % len(payload))
        body = payload
    elif f.framing == "length_long":
        head.append(b"Content-Length: %d" % (len(payload) + 99_000))
        body = payload
    elif f.framing == "length_short":
        head.append(b"Content-Length: %d" % max(len(payload) - 5, 0))
        body = payload
    elif f.framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        body = _chunks(payload)
    elif f.framing == "chunked_endless":
        head.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n" % (len(payload), payload)  # then chunks forever, below
    elif f.framing == "chunked_invalid":
        head.append(b"Transfer-Encoding: chunked")
        body = b"zz\r\n" + payload + b"\r\n0\r\n\r\n"
    elif f.framing == "chunked_huge":
        head.append(b"Transfer-Encoding: chunked")
        body = b"ffffffffffffffff\r\n" + payload
    elif f.framing == "close":
        body = payload
    else:
        raise AssertionError(f.framing)
    if f.content_length is not None:
        head = [h for h in head if not h.startswith((b"Content-Length", b"Transfer-Encoding"))]
        head.append(b"Content-Length: %d" % f.content_length)
    keep = f.keep_alive and f.framing != "close"
    head.append(b"Connection: keep-alive" if keep else b"Connection: close")
    if f.extra == "many_headers":
        head.extend(b"X-Pad-%d: %d" % (i, i) for i in range(5000))
    elif f.extra == "long_header":
        head.append(b"X-Long: " + b"a" * 1_048_576)
    if f.extra == "continue_flood":
        # Interim responses, endlessly: the final one never comes.
        flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 100
        while not conn.stop.wait(0.002):
            conn.send(flood)
        return False
    head_bytes = b"\r\n".join(head) + b"\r\n\r\n"

    if f.where == "before_status":
        cut, stream = 0, head_bytes + body
    elif f.where == "in_headers":
        cut, stream = int(len(head_bytes) * f.offset), head_bytes + body
    elif f.where == "in_body":
        cut, stream = len(head_bytes) + int(len(body) * f.offset), head_bytes + body
    else:  # after_body
        cut, stream = len(head_bytes) + len(body), head_bytes + body

    conn.send(stream[:cut])
    rest = stream[cut:]
    how = f.how
    if how == "none":
        conn.send(rest)
    elif how == "drip":
        conn.send(rest if rest else b" " * 1000, rate=f.rate)
    elif how == "garbage":
        conn.send(_GARBAGE_HTTP + rest)
    else:
        conn.end(how)
        return False
    if f.framing == "chunked_endless":
        piece = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
        while not conn.stop.wait(0.001):
            conn.send(piece)
    if f.framing in ("length_long", "chunked_huge", "chunked_invalid") and keep:
        conn.wait_for_end()  # the client waits for bytes that never come
        return False
    if not keep:
        try:
            conn.tls.unwrap()
        except (ssl.SSLError, ssl.SSLWantReadError):
            pass
        conn._flush()
        return False
    return True
