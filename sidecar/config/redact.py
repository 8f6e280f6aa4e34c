"""How a secret config value is shown (``/config``, config errors): never whole, and only as much as helps.

A field's ``secret`` metadata names the kind:
  ``True``       nothing of it: ``"<redacted>"`` (a list shows one ``"<redacted>"`` per entry, so the count shows);
  ``"command"``  the program only: ``"vault <redacted>"``; arguments and ``NAME=value`` assignments in front
                 of it can carry credentials (``VAULT_TOKEN=... vault write -field=...``);
  ``"url"``      the URL with its user info and query replaced: ``http://<redacted>@host:4318/x?<redacted>``
                 (a user name alone can be a token, as in ``https://TOKEN@host``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def redact(value: Any, kind: Any) -> Any:
    """``value`` as it may be shown, for a field whose ``secret`` metadata is ``kind`` (truthy)."""
    if isinstance(value, list):
        return [redact(item, kind) for item in value]
    if kind == "command" and isinstance(value, str):
        return program_only(value)
    if kind == "url" and isinstance(value, str):
        return url_without_credentials(value)
    return REDACTED


def program_only(command: str) -> str:
    """The program a shell command runs, its arguments redacted; the whole of it when it cannot be parsed."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: no telling where the program ends
        return REDACTED
    for i, word in enumerate(words):
        if not _ASSIGNMENT.match(word):
            return word if i == 0 and len(words) == 1 else f"{word} {REDACTED}"
    return REDACTED


def url_without_credentials(url: str) -> str:
    """A URL (or a plain path) with its user info and its query replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a bad IPv6 literal
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


__all__ = ["REDACTED", "program_only", "redact", "url_without_credentials"]
