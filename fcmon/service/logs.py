"""Logging to stderr: text or one JSON object per line.

Under systemd (JOURNAL_STREAM set) journald adds its own timestamps, so the
text format leaves them out. When stderr really is that journal stream,
every line also carries a `<N>` syslog priority prefix, which journald
strips and stores as the entry's priority: `journalctl -p warning` then
shows failures only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Mapping, Optional, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """Python level -> syslog priority (3 err, 4 warning, 6 info, 7 debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stream_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether `stream` is the journal connection named by $JOURNAL_STREAM ("DEV:INODE").

    The variable is inherited by anything the service starts, including a
    shell whose stderr goes to a file: only the device and inode tell (as
    systemd.exec(5) advises).
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (pytest capture, closed stream)
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: newlines inside a message are escaped, never emitted."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class JournalPriorityFormatter(logging.Formatter):
    """Wraps another formatter and prefixes each line with `<N>` for journald.

    journald reads the prefix per line, so a multi-line message (a config
    reload listing every problem) keeps its priority on every line.
    """

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class EncodableFormatter(logging.Formatter):
    """Wraps another formatter so that every line can be written as UTF-8.

    Server text is cleaned before it reaches a result (fcmon/probe/servertext.py),
    but a lone surrogate from any other path (an exception's message, a
    library) would make the handler fail to write the line, and the record
    would be lost behind a "Logging error" traceback: such a character is
    written as its escape (`\\ud800`) instead. One encode per record.
    """

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
        return line


def make_formatter(fmt: str, environ: Mapping[str, str], stream: TextIO) -> logging.Formatter:
    formatter: logging.Formatter
    if fmt == "json":
        # JSON keeps its own "time": whoever parses it may not read the journal.
        formatter = JsonFormatter()
    elif environ.get("JOURNAL_STREAM"):
        formatter = logging.Formatter(JOURNAL_TEXT_FORMAT)
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    if stream_is_journal(environ, stream):
        formatter = JournalPriorityFormatter(formatter)
    return EncodableFormatter(formatter)


class NoHeaderParsingWarnings(logging.Filter):
    """urllib3 logs a warning with a traceback for every response whose
    headers it cannot parse: a hostile server would write tracebacks into
    fcmon's log (or `fcmon check`'s stderr) at will. The probe names what
    follows from such a response itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to parse headers")


def filter_library_logs() -> None:
    """Install fcmon's filters on library loggers, once however often called.

    Here, where logging is set up (`setup_logging`; `fcmon check`, which logs
    through Python's last-resort handler, calls it directly), not when a
    module is imported: importing fcmon must not change another program's
    logging."""
    connection = logging.getLogger("urllib3.connection")
    if not any(isinstance(f, NoHeaderParsingWarnings) for f in connection.filters):
        connection.addFilter(NoHeaderParsingWarnings())


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    environ: Mapping[str, str] = os.environ,
    stream: Optional[TextIO] = None,
) -> None:
    """(Re)configure the root logger; safe to call again on reload."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter(fmt, environ, out))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    # A library's warnings.warn() would otherwise print raw, multi-line text
    # to stderr: in JSON format that is a line no log shipper can parse.
    logging.captureWarnings(True)
    filter_library_logs()
    # urllib3 logs request lines at debug; keep fcmon's own debug readable.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    # Skipped and missed runs are logged (and counted) by fcmon itself.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))
