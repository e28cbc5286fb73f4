"""`fcmon emulator` / `python -m fcmon.emulator`: run the emulator on its own.

Without --cert a throw-away PKI (CA, server and client certificates) is
generated and client certificates are required, so fcmon can be pointed at
the emulator exactly as at a FairCom server with mutual TLS. The banner says
where the files are and prints a ready-to-paste `[target:...]` section.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import ssl
import sys
import tempfile
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import pki
from .faults import TOKEN_PLACES
from .listeners import MODES, ListenerSpec
from .server import CONTROL_FAULT_PATH, CONTROL_LISTENER_PATH, CONTROL_SESSIONS_PATH, DEFAULT_DATABASES, Emulator
from .state import Variants

log = logging.getLogger(__name__)

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_DEFAULT_USER = ("ADMIN", "ADMIN")


def _listen(text: str) -> Tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


_LISTENER_FLAGS = ("other-ca", "client-certs", "tls1.2") + MODES


def _listener(text: str) -> Dict[str, Any]:
    """NAME:PROTOCOL[:OPTION,...] -> the parts; certificates are made in run()."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError("expected NAME:PROTOCOL[:OPTION,...], e.g. mqtts8883:mqtts:days=5")
    out: Dict[str, Any] = {"name": parts[0], "protocol": parts[1].lower(), "flags": set(), "port": 0, "days": None}
    for option in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, sep, value = option.strip().partition("=")
        if sep and key in ("port", "days"):
            try:
                out[key] = int(value) if key == "port" else float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key}= needs a number, got {value!r}") from None
        elif not sep and key in _LISTENER_FLAGS:
            out["flags"].add(key)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown listener option {option!r}; options: port=N, days=N, {', '.join(_LISTENER_FLAGS)}")
    modes = out["flags"] & set(MODES)
    if len(modes) > 1:
        raise argparse.ArgumentTypeError(f"give one mode of {', '.join(MODES)}")
    return out


def _user(text: str) -> Tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return name, password


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not 0 < value <= 36500:
        raise argparse.ArgumentTypeError("expected more than 0 and at most 36500 days")
    return value


def control_help() -> str:
    """The control API, for --help (the banner says it too, with the real address)."""
    from dataclasses import fields

    from .faults import Fault

    names = textwrap.fill("Fault fields: " + ", ".join(f.name for f in fields(Fault)) + ".",
                          width=78, initial_indent="      ", subsequent_indent="      ")
    return f"""\
control API (loopback only; with the client certificate when one is required):
  POST /_emulator/fault     {{"action": "listDatabases", "fault": {{"delay": 0.5}}}}
      a fault for one action ("*": any request); an empty fault clears it.
{names}
      e.g. {{"error_code": 12031, "error_message": "..."}}, {{"hang": true}},
      {{"reset": true}}; with "count": N only the next N requests
  GET  /_emulator/sessions  open sessions, in all and per user
  POST /_emulator/listener  {{"name": "mqtts8883", "mode": "hang"}}  (modes: {", ".join(MODES)})

your own certificates: --cert FILE --key FILE [--client-ca FILE] (the CA your
  fcmon client certificate comes from: then client certificates are required)
short-lived ones, to rehearse an expiry: --server-days 0.01 (expires ~10 min after the start),
  --client-days N, --listener mqtts8883:mqtts:days=N"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fcmon emulator` (also used by `python -m fcmon.emulator`)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = control_help()
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8443),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8443; port 0 picks a free one)",
    )
    parser.add_argument("--cert", type=Path, metavar="FILE", help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, metavar="FILE", help="server private key (PEM)")
    parser.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="CA for client certificates; when given, client certificates are required",
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        metavar="DIR",
        help="without --cert: where to write the generated PKI (default: a temporary "
        "folder, removed on exit)",
    )
    parser.add_argument(
        "--server-days", type=_days, default=365.0, metavar="N",
        help="with the generated PKI: the server certificate is valid N days, from 5 minutes ago "
        "(default 365; 0.01 is 14.4 minutes, so it expires about 10 minutes after the start: to rehearse an expiry)",
    )
    parser.add_argument(
        "--client-days", type=_days, default=365.0, metavar="N",
        help="with the generated PKI: the client certificate (CN=ADMIN) is valid N days, from 5 minutes ago "
        "(default 365)",
    )
    parser.add_argument(
        "--no-client-certs",
        action="store_true",
        help="with the generated PKI: do not require client certificates",
    )
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP, no TLS (to try allow_insecure_http targets)",
    )
    parser.add_argument(
        "--user",
        type=_user,
        action="append",
        metavar="NAME:PASSWORD",
        help="an account (repeatable; default ADMIN:ADMIN)",
    )
    parser.add_argument(
        "--database",
        action="append",
        metavar="NAME",
        help=f"a database listDatabases returns (repeatable; default {', '.join(DEFAULT_DATABASES)})",
    )
    parser.add_argument(
        "--max-sessions", type=_positive_int, default=1024, metavar="N",
        help="live sessions in total (default 1024, FairCom's maxJsonApiSessions)",
    )
    parser.add_argument(
        "--max-sessions-per-user", type=_positive_int, default=50, metavar="N",
        help="live sessions per user (default 50, FairCom's maxJsonApiSessionsPerUsername)",
    )
    parser.add_argument(
        "--max-sessions-per-ip", type=_positive_int, default=50, metavar="N",
        help="live sessions per client IP address (default 50, FairCom's maxJsonApiSessionsPerIpAddress)",
    )
    parser.add_argument(
        "--admin", action="append", metavar="NAME",
        help="an account that listSessions shows every session to (repeatable; default ADMIN)",
    )
    parser.add_argument(
        "--token-at", choices=TOKEN_PLACES, default="both",
        help="where createSession's answer carries the authToken: both (result and root, newer "
        "servers; the default), root or result (only there)",
    )
    parser.add_argument(
        "--bare-errors", action="store_true",
        help="error answers without \"result\", echoing the request's authToken at the root",
    )
    parser.add_argument(
        "--faircom-messages", action="store_true",
        help="errorCode 12031 with FairCom's own message text instead of the emulator's short one",
    )
    parser.add_argument(
        "--delete-gone-as-error", action="store_true",
        help="deleteSession of a token that matches no session answers errorCode 12031 (older "
        "servers) instead of errorCode 0 with a 12031 warning",
    )
    parser.add_argument(
        "--warning-code-keys", action="store_true",
        help="warnings in debugInfo.warnings as {warningCode, warningMessage} instead of {code, message}",
    )
    parser.add_argument(
        "--tls-max-version", choices=sorted(_TLS_VERSIONS), help="highest TLS version offered"
    )
    parser.add_argument(
        "--listener", type=_listener, action="append", metavar="NAME:PROTOCOL[:OPTION,...]",
        help="an extra listener that listServices names, on its own port (repeatable), e.g. "
        "mqtts8883:mqtts:days=5 or mqttwss9002:mqttwss:client-certs. Options: port=N (default: a free "
        "one); with the generated PKI, days=N (its own certificate, valid N days) and other-ca (from "
        "another CA); client-certs (require client certificates), tls1.2 (TLS 1.2 at most); a mode: "
        "ok, hang (never answer the handshake), reset, disabled (listed as not enabled). A plain "
        "protocol (mqtt, http) accepts and closes",
    )
    parser.add_argument(
        "--no-list-services", action="store_true",
        help="answer listServices as an unknown action, like a server without it",
    )
    parser.add_argument(
        "--server-version", metavar="TEXT",
        help="serverVersion that createSession reports (default: the emulator's own)",
    )
    parser.add_argument(
        "--hostname", metavar="NAME", help="hostname that createSession reports (default: this machine's)"
    )


def _banner(
    emu: Emulator,
    users: Dict[str, str],
    client_ca: Optional[Path],
    demo: Optional[pki.DemoPKI],
    pki_dir: Optional[Path],
    temporary: bool,
) -> str:
    lines: List[str] = [f"fcmon emulator: FairCom JSON DB API listening on {emu.url}"]
    for x in emu.listeners():
        lines.append(f"  listener {x.spec.name} ({x.spec.protocol}) on port {x.port}, {x.mode}"
                     + (", client certificates required" if x.spec.client_ca_file else ""))
    if client_ca is not None:
        lines.append(f"  client certificates: required (CA {client_ca})")
    else:
        lines.append("  client certificates: not requested")
    lines.append(f"  users: {', '.join(users)}")
    if demo is not None and pki_dir is not None:
        note = " (removed on exit)" if temporary else ""
        lines += [
            f"  generated PKI in {pki_dir}{note}:",
            f"    CA certificate      {demo.ca_file}",
            f"    client certificate  {demo.client.cert}  (CN=ADMIN)",
            f"    client key          {demo.client.key}",
        ]
    name, password = next(iter(users.items()))
    lines += ["", "  fcmon target section:", "    [target:emulator]", f"    endpoint = {emu.url}"]
    lines.append(f"    username = {name}")
    # Print a password only when it is FairCom's well-known default.
    if (name, password) == _DEFAULT_USER:
        lines.append(f"    password = {password}")
    else:
        lines.append("    password_env = FAIRCOM_PASSWORD   ; the password given with --user")
    if emu.url.startswith("http://"):
        lines.append("    allow_insecure_http = true")
    if demo is not None:
        lines.append(f"    ca_file = {demo.ca_file}")
        if client_ca is not None:
            lines += [
                f"    client_cert_file = {demo.client.cert}",
                f"    client_key_file = {demo.client.key}",
            ]
    base = emu.url[: -len("/api")]
    lines += [
        "",
        f"  faults:   POST {base}{CONTROL_FAULT_PATH} "
        '{"action": "listDatabases", "fault": {"delay": 0.5}}  (empty fault clears)',
        f"  sessions: GET  {base}{CONTROL_SESSIONS_PATH}  (open sessions, in all and per user)",
        '  variants: POST the fault path with {"action": "*", "fault": {"token_at": "root"}} '
        "(also bare_errors, faircom_messages, delete_gone_as_error, warning_code_keys); "
        '{"action": "listDatabases", "fault": {"session_gone": true}} ends the session it names',
        f"  listener: POST {base}{CONTROL_LISTENER_PATH} "
        '{"name": "mqtts8883", "mode": "hang"}  (ok, hang, reset, disabled)',
        "  (control requests: loopback only, with the client certificate when one is required)",
        "  Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 when it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    users = dict(args.user or [_DEFAULT_USER])
    databases: Sequence[str] = tuple(args.database or DEFAULT_DATABASES)
    tls_max = _TLS_VERSIONS[args.tls_max_version] if args.tls_max_version else None

    if args.key is not None and args.cert is None:
        print("fcmon emulator: --key needs --cert", file=sys.stderr)
        return 2
    if args.plain_http and (args.cert is not None or args.client_ca is not None):
        print("fcmon emulator: --plain-http excludes --cert and --client-ca", file=sys.stderr)
        return 2

    demo: Optional[pki.DemoPKI] = None
    pki_dir: Optional[Path] = None
    temporary = False
    cert, key, client_ca = args.cert, args.key, args.client_ca
    if cert is None and not args.plain_http:
        temporary = args.pki_dir is None
        pki_dir = Path(tempfile.mkdtemp(prefix="fcmon-emulator-")) if temporary else args.pki_dir
        demo = pki.write_demo_pki(pki_dir, server_days=args.server_days, client_days=args.client_days)
        cert, key = demo.server.cert, demo.server.key
        if client_ca is None and not args.no_client_certs:
            client_ca = demo.ca_file
    try:
        listeners = _listener_specs(args.listener or [], cert, key, client_ca, demo, pki_dir)
    except ValueError as exc:
        print(f"fcmon emulator: {exc}", file=sys.stderr)
        return 2

    try:
        try:
            emu = Emulator(
                cert,
                key,
                client_ca_file=client_ca,
                host=host,
                port=port,
                users=users,
                databases=databases,
                max_sessions=args.max_sessions,
                max_sessions_per_user=args.max_sessions_per_user,
                max_sessions_per_ip=args.max_sessions_per_ip,
                admins=tuple(args.admin or ("ADMIN",)),
                variants=Variants(args.token_at, args.bare_errors, args.faircom_messages,
                                  args.delete_gone_as_error, args.warning_code_keys),
                tls_max_version=tls_max,
                allow_http=args.plain_http,
                server_version=args.server_version,
                hostname=args.hostname,
                listeners=listeners,
                list_services=not args.no_list_services,
            ).start()
        except (OSError, ssl.SSLError, ValueError) as exc:
            print(f"fcmon emulator: cannot start: {exc}", file=sys.stderr)
            return 2
        # The handlers first, then the banner: a caller that signals as soon
        # as it reads the URL must get a clean stop (a SIGTERM between the
        # two killed the process, exit -15: 3 in 20 in a loop).
        with _stop_on_signal() as stop:
            print(_banner(emu, users, client_ca, demo, pki_dir, temporary), flush=True)
            _wait(stop)
        emu.stop()
        return 0
    finally:
        if temporary and pki_dir is not None:
            shutil.rmtree(pki_dir, ignore_errors=True)


def _listener_specs(items: Sequence[Dict[str, Any]], cert: Optional[Path], key: Optional[Path],
                    client_ca: Optional[Path], demo: Optional[pki.DemoPKI],
                    pki_dir: Optional[Path]) -> List[ListenerSpec]:
    specs = []
    other: Optional[pki.Issued] = None
    for item in items:
        flags = item["flags"]
        l_cert, l_key = cert, key
        if item["days"] is not None or "other-ca" in flags:
            if demo is None or pki_dir is None:
                raise ValueError(f"listener {item['name']}: days= and other-ca need the generated PKI (no --cert)")
            issuer = demo.ca
            if "other-ca" in flags:
                other = other or pki.make_ca("fcmon emulator other CA")
                issuer = other
            issued = pki.make_server(issuer, days=item["days"] if item["days"] is not None else 365)
            files = issued.write(pki_dir, f"listener-{item['name']}")
            l_cert, l_key = files.cert, files.key
        if "client-certs" in flags and client_ca is None:
            raise ValueError(f"listener {item['name']}: client-certs needs a client CA (--client-ca or the "
                             "generated PKI)")
        mode = next(iter(flags & set(MODES)), "ok")
        specs.append(ListenerSpec(
            item["name"], item["protocol"], l_cert, l_key,
            client_ca_file=client_ca if "client-certs" in flags else None, mode=mode, port=item["port"],
            tls_max_version=ssl.TLSVersion.TLSv1_2 if "tls1.2" in flags else None))
    return specs


@contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """An event SIGINT and SIGTERM set while the block runs (their previous
    handlers back after it)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous: Dict[int, Any] = {}
    # signal.signal() works only in the main thread; elsewhere (embedded use)
    # the caller owns the signals and KeyboardInterrupt still ends the wait.
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(stop: threading.Event) -> None:
    try:
        # A timed wait keeps the loop responsive to signals on every Python.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcmon.emulator",
        description="FairCom JSON DB API emulator with fault injection",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
