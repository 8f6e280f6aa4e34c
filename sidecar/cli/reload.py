"""``sidecar reload``: trigger a config transaction on a running sidecar, or show what one would change.

    sidecar reload [--canary 30s]            POST /reload: the sidecar re-reads its files and applies them
    sidecar reload --dry-run [FILE ...]      the diff only: of FILE(s) (validated here first, exit 2 as
                                             `sidecar validate`), or of the sidecar's own files without FILE
    sidecar reload --history                 GET /config/history
    sidecar reload --rollback N              POST /config/rollback?version=N

The diff is computed by the running sidecar, against its unredacted configuration, and shown redacted: a secret
that changed reads ``<redacted> -> <redacted> (secret changed)``. The CLI could not do that from ``GET /config``,
which redacts secrets before they leave the process. FILE(s) are merged and ``${VAR}`` substituted here, from this
command's environment, and sent as one document: the sidecar never expands a document sent to it against its own
environment (it would hand out whatever that environment holds); it checks file paths from its own directory, as
a reload of those files would.

Exit codes: 0 applied (or would apply; or nothing to change), 2 invalid configuration (each problem on stderr)
or bad usage, 1 refused (it needs a restart: each such change on stderr) or the admin port failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from typing import Any

from sidecar.cli.admin import AdminError, add_admin_argument, add_token_argument, read_token_file, request_json
from sidecar.cli.errors import CommandFailed, UsageError


def add_parser(commands: Any) -> None:
    reload = commands.add_parser("reload", help="reload a running sidecar's configuration, or show the diff "
                                                "a reload would apply (--dry-run)")
    reload.add_argument("files", nargs="*", metavar="FILE",
                        help="with --dry-run: config files to compare (merged in order, as run -c does)")
    reload.add_argument("--dry-run", action="store_true", help="validate and print the diff; apply nothing")
    reload.add_argument("--canary", default=None, metavar="DURATION",
                        help="watch the error rate this long after the reload and roll back if it rises "
                             "(default reload.canary_window; off to skip)")
    reload.add_argument("--history", action="store_true", help="list the configuration versions")
    reload.add_argument("--rollback", type=int, default=None, metavar="VERSION",
                        help="apply the configuration of an earlier version")
    add_admin_argument(reload)
    add_token_argument(reload)
    reload.add_argument("--json", action="store_true", help="print the JSON answer instead of text")


class _Refused(Exception):
    """The admin port answered with SPEC's error shape."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error


def run(args: argparse.Namespace) -> int:
    if args.files and not args.dry_run:
        raise UsageError("FILE is only read with --dry-run; a reload makes the sidecar read its own files")
    if sum(bool(x) for x in (args.dry_run, args.history, args.rollback is not None)) > 1:
        raise UsageError("use one of --dry-run, --history and --rollback")
    admin = args.admin.rstrip("/")
    token = read_token_file(args.token_file)
    try:
        if args.history:
            return _show_history(_call("GET", admin + "/config/history", None, token), args.json)
        if args.rollback is not None:
            answer = _call("POST", f"{admin}/config/rollback?version={args.rollback}", None, token)
            return _show_applied(answer, args.json)
        if args.dry_run:
            return _dry_run(admin, args.files, token, args.json)
        query = "" if args.canary is None else "?" + urllib.parse.urlencode({"canary": args.canary})
        return _show_applied(_call("POST", admin + "/reload" + query, None, token), args.json)
    except _Refused as e:
        return _show_refusal(e)


def _call(method: str, url: str, body: bytes | None, token: str | None) -> Any:
    try:
        return request_json(method, url, body, token, timeout=30)
    except AdminError as e:
        try:
            error = json.loads(e.body)["error"]
        except (ValueError, KeyError, TypeError):
            raise CommandFailed(f"{url} answered {e.status}: {e.reason}") from None
        raise _Refused(e.status, error) from None


def _dry_run(admin: str, files: list[str], token: str | None, as_json: bool) -> int:
    body = None
    if files:
        from sidecar.config.load import deep_merge, escape, interpolate, load, read_yaml
        from sidecar.errors import ConfigError
        try:
            load(files)   # every problem, as `sidecar validate` prints them
            raw: dict[str, Any] = {}
            for path in files:
                raw = deep_merge(raw, read_yaml(path))
        except ConfigError as e:
            for problem in e.problems:
                print(problem, file=sys.stderr)
            return 2
        expanded = escape(interpolate(raw, os.environ, []))   # load() found every reference set
        body = json.dumps(expanded, default=str).encode()   # JSON is YAML: one merged document
        if not as_json:
            print(f"{', '.join(files)}: valid")
    answer = _call("POST", admin + "/reload?dry_run=true", body, token)
    if as_json:
        print(json.dumps(answer, indent=2))
        return 1 if answer.get("refused") else 0
    changes = answer.get("changes", [])
    against = f"the running configuration at {admin} (version {answer.get('version')})"
    if not changes:
        print(f"no changes against {against}")
        return 0
    print(f"{len(changes)} change{'s' if len(changes) != 1 else ''} against {against}:")
    for change in changes:
        print(_change_line(change))
    if answer.get("refused"):
        restart = sum(1 for c in changes if not c.get("live"))
        needs = "1 change needs" if restart == 1 else f"{restart} changes need"
        print(f"a reload would be refused: {needs} a restart, and a reload applies all of its changes or none",
              file=sys.stderr)
        return 1
    print(f"a reload would apply: {', '.join(answer.get('wouldApply', []))}")
    return 0


def _change_line(change: dict[str, Any]) -> str:
    if change.get("live"):
        return f"  live     {change['text']}"
    return f"  restart  {change['text']}\n           ({change.get('reason', 'needs a restart')})"


def _show_applied(answer: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0
    changes = answer.get("changes", [])
    if not changes:
        print(f"no changes: version {answer.get('version')} keeps running")
        return 0
    canary = answer.get("canary")
    watching = f"; canary watching for {canary['window']}" if canary else ""
    restores = f", restoring version {answer['restores']}" if answer.get("restores") else ""
    print(f"version {answer.get('version')} applied ({', '.join(answer.get('applied', []))}){restores}{watching}")
    for change in changes:
        print(f"  {change['text']}")
    return 0


def _show_refusal(refused: _Refused) -> int:
    error = refused.error
    details = error.get("details") or {}
    problems = details.get("problems")
    if error.get("code") == "INVALID_ARGUMENT" and isinstance(problems, list):
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"sidecar: {error.get('message', 'refused')}", file=sys.stderr)
    return 2 if error.get("code") == "INVALID_ARGUMENT" else 1


def _show_history(history: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(history, indent=2))
        return 0
    for version in history.get("versions", []):
        mark = "*" if version.get("current") else " "
        restores = f" (restores {version['restores']})" if version.get("restores") else ""
        canary = version.get("canary")
        state = f" canary {canary['state']}" if canary else ""
        print(f"{mark} {version['version']:>4}  {version['source']}{restores}{state}  "
              f"{', '.join(version.get('applied', [])) or '-'}")
        for change in version.get("changes", []):
            print(f"          {change['text']}")
    return 0
