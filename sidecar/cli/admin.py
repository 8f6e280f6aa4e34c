"""Talking to a running sidecar's admin port, for the commands that do: its address (``--admin``), its token
(``--token-file``) and one JSON request."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from sidecar.cli.errors import CommandFailed, UsageError

DEFAULT_ADMIN = "http://127.0.0.1:9901"


class AdminError(Exception):
    """The admin port answered with an HTTP error status; ``body`` is what it sent with it."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def add_admin_argument(parser: argparse.ArgumentParser) -> None:
    """``--admin``: the admin URL, ``$SIDECAR_ADMIN`` or the default admin address."""
    parser.add_argument("--admin", default=os.environ.get("SIDECAR_ADMIN", DEFAULT_ADMIN),
                        help=f"admin URL (default {DEFAULT_ADMIN}, or $SIDECAR_ADMIN)")


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    """``--token-file``: the admin token, for a sidecar with admin.token_file set."""
    parser.add_argument("--token-file", default=os.environ.get("SIDECAR_ADMIN_TOKEN_FILE"), metavar="FILE",
                        help="the admin token (admin.token_file), or $SIDECAR_ADMIN_TOKEN_FILE")


def read_token_file(path: str | None) -> str | None:
    """The token in ``path`` (``--token-file``) without surrounding whitespace; None without a path."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror}") from None


def request_json(method: str, url: str, body: bytes | None, token: str | None, timeout: float) -> Any:
    """The JSON answer of ``method url``; :class:`AdminError` on an error status, :class:`CommandFailed` when
    the admin port cannot be reached. A ``body`` is sent as YAML (JSON is YAML); a POST without one is empty."""
    # urllib.request brings http.client and the email package (~1.5 MiB): `sidecar run` imports this module
    # for its parser and never talks to an admin port, so only the commands that do load it
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/yaml"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body if body is not None else (b"" if method == "POST" else None),
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise AdminError(e.code, e.reason, e.read()) from None
    except urllib.error.URLError as e:
        raise CommandFailed(f"cannot reach the admin port at {url}: {e.reason}") from None


def fetch_json(url: str, token: str | None = None) -> Any:
    """``GET url``; an error status becomes :class:`CommandFailed` with the error's message."""
    try:
        return request_json("GET", url, None, token, timeout=5)
    except AdminError as e:
        try:
            message = json.loads(e.body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        hint = "; pass the admin token with --token-file or $SIDECAR_ADMIN_TOKEN_FILE" if e.status == 401 else ""
        raise CommandFailed(f"{url} answered {e.status}: {message}{hint}") from None
