"""``sidecar explain``: the decision a request would meet, or what happened to a failed one (``sidecar.ops.explain``
computes it in the running sidecar; this asks its admin port and prints the answer)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from sidecar.cli.admin import add_admin_argument, add_token_argument, fetch_json, read_token_file
from sidecar.cli.errors import UsageError


def add_parser(commands: Any) -> None:
    """``commands``: the ``add_subparsers`` object of ``sidecar``'s parser."""
    explain = commands.add_parser("explain", help="the decision a request would meet, step by step; or what "
                                                  "happened on each try of a failed request (--request-id)")
    explain.add_argument("--service", help="the destination, as the Host header names it (NAME, NAME.service.DOMAIN)")
    explain.add_argument("--path", default="/", help="request path (default /)")
    explain.add_argument("--method", default="GET", help="request method (default GET)")
    explain.add_argument("--grpc", action="store_true",
                         help="a gRPC call of the method --path names (/pkg.Service/Method), sent as POST")
    explain.add_argument("--caller", default=None,
                         help="the calling service for the authorization step (default: this sidecar's identity)")
    explain.add_argument("--request-id", default=None, help="a recent failed request's x-request-id")
    add_admin_argument(explain)
    explain.add_argument("--json", action="store_true", help="print the JSON instead of text")
    add_token_argument(explain)


def run(args: argparse.Namespace) -> int:
    from sidecar.ops.explain import render_text
    if args.request_id:
        query = {"request_id": args.request_id}
    elif args.service:
        method = "POST" if args.grpc and args.method == "GET" else args.method.upper()
        query = {"service": args.service, "path": args.path, "method": method}
        if args.grpc:
            query["grpc"] = "true"
        if args.caller:
            query["caller"] = args.caller
    else:
        raise UsageError("explain needs --service NAME (with --path, --method) or --request-id ID")
    data = fetch_json(args.admin.rstrip("/") + "/debug/explain?" + urllib.parse.urlencode(query),
                      read_token_file(args.token_file))
    print(json.dumps(data, indent=2) if args.json else render_text(data))
    return 0
