"""argparse front: run | check | validate | demo | emulator | assets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from . import __version__
from .probe.certs import CERT_CRIT_DAYS, CERT_WARN_DAYS
from .config import ConfigError, default_config_path, load_config

EPILOG = "Docs: README.md. Config reference: config.ini (every key, commented)."


def _add_config(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    p.add_argument(
        "-c", "--config", metavar="FILE", default=default_config_path(environ),
        help="config file (default: $FCMON_CONFIG or /etc/fcmon/config.ini; now %(default)s)",
    )


def build_parser(environ: Mapping[str, str] = os.environ, emulator_options: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `emulator_options`, `fcmon emulator`'s
    own options are left out, so that the emulator is not imported."""
    parser = argparse.ArgumentParser(
        prog="fcmon",
        description="Health checks for FairCom servers over the JSON DB API (mutual TLS), "
        "as Prometheus metrics.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"fcmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon", description="Probe every target on its "
                         "schedule and serve /metrics. SIGHUP reloads the config; SIGTERM stops.")
    _add_config(run, environ)

    check = sub.add_parser(
        "check", help="probe once and print the results (Nagios exit codes)",
        description="Probe each (selected) target once, now. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    )
    _add_config(check, environ)
    check.add_argument("--target", action="append", default=[], metavar="NAME",
                       help="probe only this target (repeatable)")
    check.add_argument("--format", choices=("text", "json", "prometheus"), default="text")
    check.add_argument("--warn-days", type=float, default=CERT_WARN_DAYS, metavar="N",
                       help=f"WARNING when a certificate has less than N days left (default {CERT_WARN_DAYS:g})")
    check.add_argument("--crit-days", type=float, default=CERT_CRIT_DAYS, metavar="N",
                       help=f"CRITICAL when a certificate has less than N days left (default {CERT_CRIT_DAYS:g})")
    check.add_argument("--sessions-warn", type=float, default=80.0, metavar="PCT",
                       help="WARNING when the account holds more than PCT%% of its session limit "
                       "(account_sessions_limit; default 80)")
    check.add_argument("--sessions-crit", type=float, default=95.0, metavar="PCT",
                       help="CRITICAL when the account holds more than PCT%% of its session limit (default 95)")
    check.add_argument("--textfile", type=Path, metavar="PATH",
                       help="also write the Prometheus text to PATH, atomically "
                       "(node_exporter textfile collector)")
    check.add_argument("--verbose", "-v", action="store_true",
                       help="also print each probe's debug log to stderr (what /probe?debug=true shows; "
                       "passwords and authTokens redacted); stdout is unchanged")

    validate = sub.add_parser(
        "validate", help="check the config and every file it names",
        description="Load the config, open every file, parse every certificate, check each key "
        "matches its certificate. Secrets are never printed.",
    )
    _add_config(validate, environ)

    demo = sub.add_parser("demo", help="run against the bundled emulator with a throw-away CA")
    demo.add_argument("--listen", default="127.0.0.1:9731", metavar="HOST:PORT",
                      help="where to serve /metrics (default %(default)s)")

    emulator = sub.add_parser("emulator", help="run the bundled FairCom JSON DB API emulator")
    if emulator_options:
        from .emulator.cli import add_arguments as emulator_arguments

        emulator_arguments(emulator)

    assets = sub.add_parser(
        "assets", help="list or export the deployable files that match this version",
        description="The systemd unit, the Prometheus alert rules and their promtool tests, the "
        "example Prometheus config, the Grafana dashboard, the commented example config.ini, the "
        "runbook, the changelog and the README, as shipped with this fcmon version (from the installed package, or from the "
        "repository in a source checkout).",
        epilog="Then follow README.md, 'Install as a service'.",
    )
    actions = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    actions.required = True
    actions.add_parser("list", help="list the assets and where they are read from",
                       description="List the assets (paths as `export` writes them) and where they are read from.")
    export = actions.add_parser(
        "export", help="write them under DIR",
        description="Write every asset under DIR (created if missing), in its folder: "
        "config.ini, systemd/, prometheus/, grafana/, docs/, LICENSE, CHANGELOG.md, README.md. A file already there with the same "
        "content is left alone; one with other content is never overwritten without --force: "
        "then nothing at all is written. Exit 0 when done; 1 when refused (nothing written) or "
        "when a write failed (the file is named).",
    )
    export.add_argument("dir", metavar="DIR", type=Path, help="where to write them")
    export.add_argument("--force", action="store_true",
                        help="overwrite existing files whose content differs")
    return parser


def _config_error(exc: ConfigError) -> None:
    print("fcmon: invalid config:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def main(argv: Optional[List[str]] = None, environ: Mapping[str, str] = os.environ) -> int:
    given = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in given if not arg.startswith("-")), None)
    # Only `fcmon emulator` (and `fcmon demo`) import the emulator: the
    # daemon and `fcmon check` do not carry it (tests/test_layers.py).
    args = build_parser(environ, emulator_options=command == "emulator").parse_args(given)
    try:
        if args.command in ("run", "demo"):
            return _serve(args, environ)
        if args.command == "check":
            return _check(args, environ)
        if args.command == "validate":
            from .commands.validate import validate

            summary, problems = validate(Path(args.config), environ)
            for line in summary:
                print(line)
            if problems:
                print(f"{len(problems)} problem(s):", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                return 1
            print("config OK")
            return 0
        if args.command == "emulator":
            from .emulator.cli import run as run_emulator

            return run_emulator(args)
        if args.command == "assets":
            return _assets(args)
    except ConfigError as exc:
        _config_error(exc)
        return 3 if args.command == "check" else 1
    except KeyboardInterrupt:
        return 130
    return 2


def _assets(args: argparse.Namespace) -> int:
    from . import assetfiles

    try:
        location = assetfiles.locate()
        if args.assets_command == "list":
            for line in assetfiles.format_list(location, __version__):
                print(line)
            return 0
        planned = assetfiles.export(location, args.dir, force=args.force)
    except assetfiles.AssetsError as exc:
        print(f"fcmon assets: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"fcmon assets: cannot write{where}: {exc.strerror or exc}; "
              "files before it may have been written", file=sys.stderr)
        return 1
    verbs = {"write": "wrote", "overwrite": "overwrote", "unchanged": "unchanged"}
    for p in planned:
        print(f"  {verbs[p.action]:<10} {p.dest}")
    written = sum(p.action != "unchanged" for p in planned)
    print(f"fcmon {__version__}: {len(planned)} assets in {args.dir} "
          f"({written} written, {len(planned) - written} unchanged)")
    if "README.md" in location.names:
        print(f"next: {args.dir / 'README.md'}, section 'Install as a service'")
    return 0


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`run` and `demo`: the daemon; an address it cannot bind is one line, exit 1."""
    from .service.logs import stream_is_journal
    from .web.app import ListenError

    try:
        if args.command == "demo":
            from .commands.demo import run_demo

            return run_demo(args.listen, environ=environ)
        from .service.daemon import run_daemon

        return run_daemon(Path(args.config), environ)
    except ListenError as exc:
        # Under systemd, <3> makes it an error-priority journal entry.
        prefix = "<3>" if stream_is_journal(environ, sys.stderr) else ""
        if args.command == "demo":
            hint = "choose another address with --listen HOST:PORT (e.g. fcmon demo --listen 127.0.0.1:9732)"
        else:
            hint = f"set another address with `listen = HOST:PORT` in [fcmon] of {args.config}"
        print(f"{prefix}fcmon: {exc}; {hint}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .commands.check import UNKNOWN, config_summary, render_prometheus, render_unknown, run_check, \
        select_targets, write_atomically
    from .service.instance import instance_id
    from .service.logs import filter_library_logs

    filter_library_logs()  # no logging set up here: warnings reach stderr as they are

    def unknown(summary: str, problems: Sequence[str] = (), config_ok: Optional[bool] = None) -> int:
        sys.stdout.write(render_unknown(args.format, summary, problems, config_ok))
        return UNKNOWN

    try:
        config = load_config(Path(args.config), environ)
    except ConfigError as exc:
        _config_error(exc)  # the full list on stderr, for a person
        if args.textfile is not None:
            # node_exporter must not keep serving the last good results as if current.
            try:
                write_atomically(args.textfile, render_prometheus((), (), config_ok=False))
            except OSError:
                pass  # the config problem is the one to report
        return unknown(config_summary(exc.problems), exc.problems, config_ok=False)
    targets, missing = select_targets(config.targets, args.target)
    if missing:
        names = ", ".join(t.name for t in config.targets)
        return unknown(f"no such target: {', '.join(missing)} (configured: {names})")
    if args.crit_days > args.warn_days:
        return unknown("--crit-days must not exceed --warn-days")
    if not 0 <= args.sessions_warn <= args.sessions_crit:
        return unknown("--sessions-warn must be between 0 and --sessions-crit")
    try:
        code, text = run_check(targets, args.format, args.warn_days, args.crit_days, args.textfile,
                               config.max_connections_per_host,
                               debug_log=sys.stderr.write if args.verbose else None,
                               instance_id=instance_id(config), sessions_warn=args.sessions_warn,
                               sessions_crit=args.sessions_crit, runbook_url=config.runbook_url)
    except OSError as exc:
        return unknown(f"cannot write {args.textfile}: {exc.strerror or exc}")
    except Exception as exc:
        # A bug while judging or rendering: UNKNOWN with its name (a crash
        # exits 1, which Nagios reads as WARNING); the traceback on stderr.
        import traceback

        traceback.print_exc(file=sys.stderr)
        return unknown(f"internal error in fcmon while handling the results: {type(exc).__name__}")
    sys.stdout.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
