"""The command-line side of the ops features: ``sidecar explain`` and ``sidecar reload`` (``.reload_cli``).

``sidecar.cli`` adds the parsers (:func:`add_parsers`) and hands the parsed arguments here (:func:`run`).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from typing import Any

DEFAULT_ADMIN = "http://127.0.0.1:9901"


def add_parsers(commands: Any) -> None:
    """``commands``: the ``add_subparsers`` object of ``sidecar``'s parser."""
    admin_help = f"admin URL (default {DEFAULT_ADMIN}, or $SIDECAR_ADMIN)"
    explain = commands.add_parser("explain", help="the decision a request would meet, step by step; or what "
                                                  "happened on each try of a failed request (--request-id)")
    explain.add_argument("--service", help="the destination, as the Host header names it (NAME, NAME.service.DOMAIN)")
    explain.add_argument("--path", default="/", help="request path (default /)")
    explain.add_argument("--method", default="GET", help="request method (default GET)")
    explain.add_argument("--caller", default=None,
                         help="the calling service for the authorization step (default: this sidecar's identity)")
    explain.add_argument("--request-id", default=None, help="a recent failed request's x-request-id")
    explain.add_argument("--admin", default=os.environ.get("SIDECAR_ADMIN", DEFAULT_ADMIN), help=admin_help)
    explain.add_argument("--json", action="store_true", help="print the JSON instead of text")
    from sidecar.cli import add_token_argument
    add_token_argument(explain)
    from sidecar.ops import reload_cli
    reload_cli.add_parser(commands)


COMMANDS = ("explain", "reload")


def run(args: argparse.Namespace) -> int:
    from sidecar.cli import UsageError
    if args.command == "explain":
        return explain(args)
    if args.command == "reload":
        from sidecar.ops import reload_cli
        return reload_cli.run(args)
    raise UsageError(f"unknown command {args.command!r}")


def explain(args: argparse.Namespace) -> int:
    from sidecar.cli import UsageError, fetch_json, read_token_file
    from sidecar.ops.explain import render_text
    if args.request_id:
        query = {"request_id": args.request_id}
    elif args.service:
        query = {"service": args.service, "path": args.path, "method": args.method.upper()}
        if args.caller:
            query["caller"] = args.caller
    else:
        raise UsageError("explain needs --service NAME (with --path, --method) or --request-id ID")
    data = fetch_json(args.admin.rstrip("/") + "/debug/explain?" + urllib.parse.urlencode(query),
                      read_token_file(args.token_file))
    print(json.dumps(data, indent=2) if args.json else render_text(data))
    return 0
