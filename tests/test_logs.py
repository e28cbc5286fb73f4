"""Logging: JSON lines, journald-friendly text, priorities, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator, List

import pytest

from fcmon import pki
from fcmon.config import TargetConfig
from fcmon.service.daemon import describe_reload
from fcmon.emulator import Emulator
from fcmon.service.logs import (
    JournalPriorityFormatter,
    JsonFormatter,
    make_formatter,
    setup_logging,
    stream_is_journal,
    syslog_priority,
)

from support import PKI, ROOT, FcmonProcess, fcmon_command, free_port, sample, scrape, wait_for

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")
PASSWORD = "Qx7-fcmon-Zebra-Sekret-9931"
WRONG_PASSWORD = "Wv3-fcmon-Marmot-Wrong-4417"


def record(message: str, level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("fcmon.test", level, __file__, 1, message, None, exc_info)


# ---------------------------------------------------------------------------
# Formatters (in-process)


def test_json_is_one_object_per_line_even_for_multiline_messages() -> None:
    line = JsonFormatter().format(record("config reload failed:\n  [fcmon] interval: bad\n  [x] y: z", exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning"
    assert obj["logger"] == "fcmon.test"
    assert obj["message"] == "config reload failed:\n  [fcmon] interval: bad\n  [x] y: z"
    assert "ValueError: boom" in obj["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])


def test_text_drops_timestamps_under_journald(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as stream:
        plain = make_formatter("text", {}, stream).format(record("target a: down"))
        journal = make_formatter("text", {"JOURNAL_STREAM": "8:12345"}, stream).format(record("target a: down"))
    assert TIMESTAMP.match(plain), plain
    assert journal == "WARNING fcmon.test: target a: down"


def test_json_keeps_its_time_under_journald(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as stream:
        line = make_formatter("json", {"JOURNAL_STREAM": "8:12345"}, stream).format(record("x"))
    assert "time" in json.loads(line)


def test_stream_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stream_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        # Inherited by a child whose stderr went elsewhere: not the journal.
        assert not stream_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        for bad in ("", "8", "a:b", ":"):
            assert not stream_is_journal({"JOURNAL_STREAM": bad}, stream)
    assert not stream_is_journal({"JOURNAL_STREAM": "8:1"}, io.StringIO())


def test_priority_prefix_on_every_line() -> None:
    f = JournalPriorityFormatter(logging.Formatter("%(levelname)s %(message)s"))
    assert f.format(record("a\nb", logging.ERROR)) == "<3>ERROR a\n<3>b"
    assert f.format(record("x", logging.INFO)) == "<6>INFO x"
    assert [syslog_priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_setup_logging_applies_level_and_format_and_can_be_repeated(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        with open(tmp_path / "log", "w") as stream:
            setup_logging("warning", "json", {}, stream)
            setup_logging("warning", "json", {}, stream)  # a reload
            logging.getLogger("fcmon.x").info("hidden")
            logging.getLogger("fcmon.x").warning("shown")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("a library complains\non two lines", UserWarning, stacklevel=2)
        lines = (tmp_path / "log").read_text().splitlines()
        objs = [json.loads(s) for s in lines]
        assert objs[0]["message"] == "shown"
        # Python warnings become JSON lines too, not raw text on stderr.
        assert len(objs) == 2 and "a library complains" in objs[1]["message"]
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


# ---------------------------------------------------------------------------
# The real daemon

HEAD = """\
[fcmon]
listen = 127.0.0.1:0
interval = 2
timeout = 1.5
log_level = {level}
log_format = {fmt}
"""


@pytest.fixture
def secret_emulator(test_pki: PKI) -> Iterator[Emulator]:
    """An emulator whose only user has a password that cannot appear by accident."""
    emu = Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                   client_ca_file=test_pki.ca_file, users={"ADMIN": PASSWORD})
    emu.start()
    yield emu
    emu.stop()


def section(test_pki: PKI, name: str, endpoint: str, password_file: Path,
            cert: Path, key: Path) -> str:
    return (f"[target:{name}]\nendpoint = {endpoint}\nusername = ADMIN\n"
            f"password_file = {password_file}\nca_file = {test_pki.ca_file}\n"
            f"client_cert_file = {cert}\nclient_key_file = {key}\n")


def secret_config(test_pki: PKI, emu: Emulator, tmp_path: Path, head: str) -> Path:
    """Targets that succeed, fail login, and have their client certificate rejected
    after the request (with the password) was sent: the paths where a public
    client has logged its request body."""
    good = tmp_path / "good.password"
    good.write_text(PASSWORD + "\n")
    wrong = tmp_path / "wrong.password"
    wrong.write_text(WRONG_PASSWORD + "\n")
    stranger = pki.make_client(pki.make_ca("Stranger CA")).write(tmp_path, "stranger")
    c = test_pki.client
    return _write(tmp_path / "config.ini", head
                  + section(test_pki, "good", emu.url, good, c.cert, c.key)
                  + section(test_pki, "badlogin", emu.url, wrong, c.cert, c.key)
                  + section(test_pki, "rejected", emu.url, good, stranger.cert, stranger.key)
                  + section(test_pki, "refused", f"https://127.0.0.1:{free_port()}/api", good, c.cert, c.key))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def json_lines(text: str) -> List[dict]:
    out = []
    for line in text.splitlines():
        obj = json.loads(line)  # every line, or the test fails here
        assert isinstance(obj, dict), line
        assert isinstance(obj.get("level"), str) and isinstance(obj.get("message"), str), line
        out.append(obj)
    return out


@pytest.mark.slow
def test_json_format_every_line_is_an_object_and_no_secret_leaks(  # type: ignore[no-untyped-def]
        test_pki: PKI, secret_emulator: Emulator, tmp_path) -> None:
    config = secret_config(test_pki, secret_emulator, tmp_path, HEAD.format(level="debug", fmt="json"))
    good_config = config.read_text()
    with FcmonProcess("run", "-c", str(config), env={"JOURNAL_STREAM": ""}) as fc:
        url = fc.wait_for_line(r'serving metrics on (http[^"\s]+)').group(1)
        fc.wait_for_line(r"target good: up")
        for name, reason in (("badlogin", "api_error"), ("rejected", "client_cert_rejected"),
                             ("refused", "connect_refused")):
            fc.wait_for_line(rf"target {name}: probe failed at \w+: {reason}")
        metrics = scrape(url)
        assert sample(metrics, "fcmon_up", target="good") == 1
        # A multi-line error (every problem of a broken config) stays one JSON line.
        config.write_text(good_config + "[target:typo]\nendpont = https://x/api\nusernme = a\n")
        fc.proc.send_signal(signal.SIGHUP)
        fc.wait_for_line(r"config reload failed")
        assert fc.stop(signal.SIGTERM) == 0
    text = fc.text()
    objs = json_lines(text)
    levels = {o["level"] for o in objs}
    assert {"info", "warning", "error"} <= levels
    reload_error = next(o for o in objs if "config reload failed" in o["message"])
    assert "endpont" in reload_error["message"] and "usernme" in reload_error["message"]
    assert "\n" in reload_error["message"]  # the message kept its lines, inside the JSON
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text
        assert secret not in metrics
    assert secret_emulator.open_sessions() == 0


@pytest.mark.slow
@pytest.mark.parametrize("journal", [False, True])
def test_text_format_timestamps_only_outside_journald(  # type: ignore[no-untyped-def]
        test_pki: PKI, secret_emulator: Emulator, tmp_path, journal: bool) -> None:
    config = secret_config(test_pki, secret_emulator, tmp_path, HEAD.format(level="debug", fmt="text"))
    # A JOURNAL_STREAM that is not our stderr (as a child of a service would inherit).
    env = {"JOURNAL_STREAM": "8:12345" if journal else ""}
    with FcmonProcess("run", "-c", str(config), env=env) as fc:
        fc.wait_for_line(r"target good: up")
        fc.wait_for_line(r"target badlogin: probe failed")
        assert fc.stop(signal.SIGTERM) == 0
    lines = [line for line in fc.text().splitlines() if line.strip()]
    assert len(lines) >= 4
    for line in lines:
        if journal:
            assert not TIMESTAMP.match(line), line
            assert re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ", line), line
        else:
            assert TIMESTAMP.match(line), line
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in fc.text()


@pytest.mark.slow
def test_priority_prefixes_when_stderr_is_the_journal_stream(  # type: ignore[no-untyped-def]
        test_pki: PKI, secret_emulator: Emulator, tmp_path) -> None:
    """As under systemd: JOURNAL_STREAM names the very pipe stderr is."""
    config = secret_config(test_pki, secret_emulator, tmp_path, HEAD.format(level="info", fmt="text"))
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", NOTIFY_SOCKET="")
    proc = subprocess.Popen(fcmon_command("run", "-c", str(config)), stdout=subprocess.DEVNULL,
                            stderr=write_fd, env=env, cwd=str(ROOT))
    os.close(write_fd)
    lines: List[str] = []
    lock = threading.Lock()

    def read() -> None:
        with os.fdopen(read_fd, "r") as r:
            for line in r:
                with lock:
                    lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def seen(pattern: str) -> bool:
        with lock:
            return any(re.search(pattern, line) for line in lines)

    try:
        wait_for(lambda: seen(r"^<6>INFO .*target good: up"), timeout=30)
        wait_for(lambda: seen(r"^<4>WARNING .*target badlogin: probe failed"), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
    with lock:
        assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
        assert not any(TIMESTAMP.match(line[3:]) for line in lines)


def test_reload_line_names_what_changed() -> None:
    def t(name: str, **kw: object) -> TargetConfig:
        return TargetConfig(name=name, endpoint=f"https://{name}.example.com/api", **kw)  # type: ignore[arg-type]

    a, b, c = t("a"), t("b"), t("c")
    assert describe_reload([a], [a]) == "1 target; no change to targets"
    assert describe_reload([a, b], [a, b]) == "2 targets; no change to targets"
    assert describe_reload([a, b], [b, c]) == "2 targets; added c; removed a"
    secret = "Hunter2-secret"
    line = describe_reload([a, b, t("c", password="old")], [t("a", interval=30), b, t("c", password=secret)])
    assert line == "3 targets; changed a, c"  # a password change counts, never shows
    assert describe_reload([], [a]) == "1 target; added a"
    many = [t(f"n{i}") for i in range(25)]
    assert describe_reload([], many) == "25 targets; added " + ", ".join(f"n{i}" for i in range(10)) + " and 15 more"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_lone_surrogate_from_any_path_does_not_lose_the_record(fmt: str, tmp_path: Path) -> None:
    """Server text is cleaned before results hold it; a surrogate from
    elsewhere (an exception's message) is written escaped, not lost."""
    path = tmp_path / "log"
    with open(path, "w", encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(make_formatter(fmt, {}, stream))
        handler.handleError = lambda r: pytest.fail("the record could not be written")  # type: ignore[method-assign]
        handler.emit(record("version v\ud800 seen"))
    text = path.read_text("utf-8")
    assert "version v\\ud800 seen" in text and text.count("\n") == 1


_URLLIB3_LOGGERS = ("urllib3", "urllib3.connection", "urllib3.connectionpool", "urllib3.response")


def test_importing_fcmon_leaves_urllib3s_loggers_alone() -> None:
    """Importing the client (or the probe, the daemon, the cli) installs no
    filter: another program importing fcmon keeps its own logging."""
    code = ("import logging, fcmon.probe.client, fcmon.probe.run, fcmon.service.daemon, fcmon.cli; "
            f"print([len(logging.getLogger(n).filters) for n in {_URLLIB3_LOGGERS!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str([0] * len(_URLLIB3_LOGGERS)), out.stderr


def test_setting_up_logging_filters_urllib3s_header_tracebacks() -> None:
    """setup_logging (the daemon; `fcmon check` calls filter_library_logs)
    drops urllib3's "Failed to parse headers" warning, with its traceback,
    and nothing else; once, however often logging is set up (reloads)."""
    code = """if True:
        import io, logging
        from fcmon.service.logs import setup_logging
        setup_logging(stream=io.StringIO())
        setup_logging(stream=io.StringIO())
        connection = logging.getLogger("urllib3.connection")
        def passes(msg):
            # bool(): from 3.12 Logger.filter returns the record, not True
            return bool(connection.filter(logging.makeLogRecord({"name": connection.name, "msg": msg, "levelno": 30})))
        print(len(connection.filters), passes("Failed to parse headers (url=%s): %s"), passes("Other warning"))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["1", "False", "True"], out.stderr


def test_fcmon_check_filters_urllib3s_header_tracebacks(tmp_path: Path) -> None:
    """`fcmon check` sets up no logging (warnings reach stderr through
    Python's last-resort handler), so it installs the filter itself."""
    code = f"""if True:
        import contextlib, io, logging
        from fcmon import cli
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(["check", "-c", {str(tmp_path / "missing.ini")!r}])
        print(code, len(logging.getLogger("urllib3.connection").filters))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["3", "1"], out.stderr
