"""The parser of ``sidecar``'s command line, the dispatch to each command, and the commands of a few lines.

Exit codes: 0 success, 2 bad usage or bad config, 1 failure at run time. Errors are one line each on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Any

from sidecar import __version__
from sidecar.cli import explain, inject, reload
from sidecar.cli.admin import add_admin_argument, add_token_argument, read_token_file
from sidecar.cli.errors import CommandFailed, UsageError

DEFAULT_CONFIG = "config/sidecar.yaml"


def help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter at the terminal's width, read as ``shutil.get_terminal_size`` reads it (``$COLUMNS``,
    else stdout's terminal, else 80) without importing shutil: argparse makes a formatter for every argument it is
    given, and its own reads the width with shutil, which loads bz2 and lzma (~0.3 MiB) into every ``sidecar run``,
    a command that prints no help."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):  # not a terminal, or stdout closed
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns if columns > 0 else 80) - 2)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with :func:`help_formatter`; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", help_formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sidecar", description="A sidecar proxy for microservices.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run until SIGTERM/SIGINT, then drain and leave")
    run.add_argument("-c", "--config", action="append", metavar="FILE",
                     help=f"YAML config; repeat to merge files in order (default {DEFAULT_CONFIG})")
    run.add_argument("app", nargs=argparse.REMAINDER, metavar="-- APP ARGS",
                     help="run APP once the sidecar is ready; stop it first on SIGTERM; exit with its code")

    wait = commands.add_parser("wait-ready", help="wait until the sidecar's /ready answers 200 (for app start-up)")
    add_admin_argument(wait)
    wait.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")

    validate = commands.add_parser("validate", help="check config files; exit 0 if valid, else 2")
    validate.add_argument("files", nargs="+", metavar="FILE", help="merged in order, as run -c does")

    certs = commands.add_parser("certs", help="development certificates (a CA and service certificates)")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = certs_commands.add_parser("init", help="create a CA")
    init.add_argument("--dir", required=True)
    init.add_argument("--trust-domain", required=True)
    issue = certs_commands.add_parser("issue", help="issue a certificate per service (one SVID each; a node hosting"
                                                    " several lists them in tls.identities)")
    issue.add_argument("service", nargs="+")
    issue.add_argument("--dir", required=True)
    issue.add_argument("--ttl", default="24h")

    keys = commands.add_parser("keys", help="gossip encryption keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_commands.add_parser("generate", help="print a new base64 AES-256 key")

    for name, what in (("members", "gossip members"), ("catalog", "the service catalog"),
                       ("clusters", "upstream clusters: endpoints, health, ejection, breakers")):
        view = commands.add_parser(name, help=f"show {what} as a table")
        add_admin_argument(view)
        view.add_argument("--json", action="store_true", help="print the JSON instead of a table")
        add_token_argument(view)

    explain.add_parser(commands)
    reload.add_parser(commands)
    inject.add_parser(commands)

    demo = commands.add_parser("demo", help="a complete local mesh with live traffic; Ctrl-C stops it")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop by itself after this long (non-interactive)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except UsageError as e:
        print(f"sidecar: {e}", file=sys.stderr)
        return 2
    except CommandFailed as e:
        print(f"sidecar: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the last line of defence: one line, no traceback
        print(f"sidecar: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from sidecar.app import run
        app = args.app[1:] if args.app[:1] == ["--"] else args.app
        if app and app[0].startswith("-"):
            raise UsageError(f"unknown option {app[0]!r}; put the app's command after --")
        return run(args.config or [DEFAULT_CONFIG], app or None)
    if args.command == "wait-ready":
        return wait_ready(args.admin, args.timeout)
    if args.command == "validate":
        return validate(args.files)
    if args.command == "keys":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    if args.command == "certs":
        return certs(args)
    if args.command in ("members", "catalog", "clusters"):
        from sidecar.cli.views import show_view  # rich, only for the tables
        return show_view(args.command, args.admin, args.json, read_token_file(args.token_file))
    if args.command == "explain":
        return explain.run(args)
    if args.command == "reload":
        return reload.run(args)
    if args.command == "inject":
        return inject.run(args)
    if args.command == "demo":
        from sidecar.demo.mesh import run_demo
        return run_demo(args.duration)
    raise UsageError(f"unknown command {args.command!r}")


def wait_ready(admin: str, timeout: float) -> int:
    """Exit 0 once /ready answers 200, 1 at the deadline (the last answer is printed)."""
    import time
    import urllib.error
    import urllib.request  # here, not at the top: see sidecar.cli.admin.request_json
    url = admin.rstrip("/") + "/ready"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return 0
        except urllib.error.HTTPError as e:
            last = f"{e.code}: {e.read().decode(errors='replace')[:200]}"
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        time.sleep(0.2)
    raise CommandFailed(f"{url} not ready after {timeout:g}s ({last})")


def validate(files: list[str]) -> int:
    from sidecar.config.load import load
    from sidecar.errors import ConfigError
    try:
        load(files)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"{', '.join(files)}: valid")
    return 0


def certs(args: argparse.Namespace) -> int:
    from sidecar.cli import certs as certs_cli
    if args.certs_command == "init":
        return certs_cli.cmd_certs_init(args.dir, args.trust_domain)
    return certs_cli.cmd_certs_issue(args.service, args.dir, args.ttl)
