"""Two configurations compared: every change by dotted path, each classified as live or restart-only.

    changes = diff(running, loaded)      # (Change("policies.echo.retries.attempts", 0, 2, ...), ...)
    plan = Plan(changes)                 # plan.parts: what to apply; plan.restart: what a running sidecar refuses

Pure: no I/O, no clock. Paths are the YAML's own (``config_to_raw``): ``policies.echo.timeout``,
``authorization.rules[1].paths``, and list entries that have a name are shown by it, not by position
(``services[payment-service].port``, ``upstreams[9191]``), so removing the first service does not read as
a change of every other one. Values are shown from the redacted form: a secret that changed reads
``<redacted> -> <redacted>`` and is marked ``secret``; its value never leaves the process.

Classification is a table (:data:`RULES`), first match by path prefix; a path no rule names needs a
restart, so a key added to the model is safe before anyone decides how to apply it live.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.config.load import REDACTED, config_to_raw
from sidecar.config.model import Config

# (path prefix, the part that applies it live, or None when it needs a restart, and what that means).
# Listener addresses are bound once; identity, gossip, DNS, TLS paths and stores are built at start.
RULES: tuple[tuple[str, str | None, str], ...] = (
    ("services", "services", "local services and their health checks are re-registered"),
    ("upstreams", "upstreams", "fixed local ports are opened, removed ones close after their requests"),
    ("policies", "policies", "timeouts, retries, caps, ejection rules and balancer from the next request on"),
    ("authorization", "authorization", "inbound authorization rules from the next request on"),
    ("subscriptions", "subscriptions", "push subscriptions, announced again through gossip"),
    ("logging", "logging", "log level and format"),
    ("telemetry.tracing", "tracing", "trace exporter, endpoint and sample ratio"),
    ("telemetry.access_log", "access_log", "the access log"),
    ("reload", "reload", "history size and canary settings"),
    ("node", None, "the node's identity in gossip, DNS and its data directory are fixed at start"),
    ("admin.listen", None, "a listener address: a restart binds the new one"),
    ("api.listen", None, "a listener address: a restart binds the new one"),
    ("outbound.listen", None, "a listener address: a restart binds the new one"),
    ("inbound.listen", None, "a listener address: a restart binds the new one"),
    ("dns.listen", None, "a listener address: a restart binds the new one"),
    ("gossip.listen", None, "a listener address: a restart binds the new one"),
    ("inbound.advertise", None, "the address peers dial is announced at start"),
    ("gossip.advertise", None, "the address peers dial is announced at start"),
    ("admin.token_file", None, "the admin token is read when the admin port starts"),
    ("api.token_file", None, "the app API token is read when the app API starts"),
    ("gossip.encrypt_keys", None, "gossip keys change live through POST /keys/install, /keys/use and /keys/remove"),
    ("gossip", None, "gossip settings are fixed at start"),
    ("dns", None, "the DNS server is built at start"),
    ("tls", None, "certificate files are re-read when their content changes; other TLS settings need a restart"),
    ("messaging.topics", "topic_scopes", "topic scopes from the next publish, subscription and delivery on"),
    ("messaging.default", "topic_scopes", "topic scopes from the next publish, subscription and delivery on"),
    ("messaging", None, "the message store and delivery settings are fixed at start"),
    ("telemetry", None, "the metrics store is sized at start"),
    ("overload", None, "the overload guard is set up at start"),
)
UNKNOWN_REASON = "not applied live"

# list entries shown by this key instead of their position
LIST_KEYS = {"services": "name", "upstreams": "local_port"}


class _Absent:
    """A side of a change where the key or entry does not exist."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Change:
    """One changed value. ``old``/``new`` are shown values (secrets redacted), :data:`ABSENT` when added or removed;
    ``part`` names what applies it live, None when it needs a restart (``reason`` says why, or what happens)."""

    path: str
    old: Any
    new: Any
    secret: bool
    part: str | None
    reason: str

    @property
    def live(self) -> bool:
        return self.part is not None

    @property
    def op(self) -> str:
        if self.old is ABSENT:
            return "add"
        if self.new is ABSENT:
            return "remove"
        return "change"

    def to_text(self, limit: int = 160) -> str:
        """``policies.echo.retries.attempts: 0 -> 2``; ``upstreams[9191]: added {...}``; ``... (secret)``."""
        if self.op == "add":
            text = f"{self.path}: added {_show(self.new, limit)}"
        elif self.op == "remove":
            text = f"{self.path}: removed (was {_show(self.old, limit)})"
        else:
            text = f"{self.path}: {_show(self.old, limit)} -> {_show(self.new, limit)}"
        return text + (" (secret changed)" if self.secret else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "op": self.op, "live": self.live, "secret": self.secret,
                               "text": self.to_text()}
        if self.old is not ABSENT:
            out["old"] = self.old
        if self.new is not ABSENT:
            out["new"] = self.new
        if self.live:
            out["part"] = self.part
        else:
            out["reason"] = self.reason
        return out


def _show(value: Any, limit: int) -> str:
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def classify(path: str) -> tuple[str | None, str]:
    """(part, reason) of the first rule whose prefix is the path or one of its parents."""
    for prefix, part, reason in RULES:
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return part, reason
    return None, UNKNOWN_REASON


def diff(old: Config, new: Config) -> tuple[Change, ...]:
    """Every changed leaf from ``old`` to ``new``, in the YAML's key order."""
    trees = (config_to_raw(old, redact=False), config_to_raw(new, redact=False),
             config_to_raw(old, redact=True), config_to_raw(new, redact=True))
    return tuple(_walk("", *trees))


def _walk(path: str, a: Any, b: Any, ra: Any, rb: Any) -> Iterator[Change]:
    """``a``/``b``: the plain values compared; ``ra``/``rb``: the same places, redacted, for showing."""
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else str(key)
            yield from _walk(sub, a.get(key, ABSENT), b.get(key, ABSENT), _get(ra, key), _get(rb, key))
        return
    if isinstance(a, list) and isinstance(b, list) and not (_scalars(a) and _scalars(b)):
        yield from _walk_list(path, a, b, ra, rb)
        return
    yield _change(path, a, b, ra, rb)


def _walk_list(path: str, a: list[Any], b: list[Any], ra: Any, rb: Any) -> Iterator[Change]:
    key = LIST_KEYS.get(path)
    a_keys = _keys(a, key)
    b_keys = _keys(b, key)
    if a_keys is None or b_keys is None:   # entries without the key (or repeated): compare by position
        a_keys = {str(i): i for i in range(len(a))}
        b_keys = {str(i): i for i in range(len(b))}
    for name in [*a_keys, *(k for k in b_keys if k not in a_keys)]:
        i, j = a_keys.get(name), b_keys.get(name)
        yield from _walk(f"{path}[{name}]", a[i] if i is not None else ABSENT, b[j] if j is not None else ABSENT,
                         _item(ra, i), _item(rb, j))


def _keys(items: list[Any], key: str | None) -> dict[str, int] | None:
    if key is None:
        return None
    out: dict[str, int] = {}
    for i, item in enumerate(items):
        value = item.get(key) if isinstance(item, dict) else None
        if value is None or str(value) in out:
            return None
        out[str(value)] = i
    return out


def _scalars(items: list[Any]) -> bool:
    return all(not isinstance(v, dict | list) for v in items)


def _get(tree: Any, key: str) -> Any:
    return tree.get(key, ABSENT) if isinstance(tree, dict) else ABSENT


def _item(tree: Any, index: int | None) -> Any:
    return tree[index] if isinstance(tree, list) and index is not None and index < len(tree) else ABSENT


def _change(path: str, a: Any, b: Any, ra: Any, rb: Any) -> Change:
    shown_old = ra if a is not ABSENT else ABSENT
    shown_new = rb if b is not ABSENT else ABSENT
    secret = _redacted(shown_old) or _redacted(shown_new)
    part, reason = classify(path)
    return Change(path, shown_old, shown_new, secret, part, reason)


def _redacted(value: Any) -> bool:
    if value is ABSENT:
        return False
    return REDACTED in json.dumps(value, default=str)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reload would do with ``changes``: apply the live parts, or be refused as a whole (a transaction:
    a reload that needs a restart for any one change applies none of them)."""

    changes: tuple[Change, ...]

    @property
    def live(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.live)

    @property
    def restart(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if not c.live)

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts to apply, in the order of :data:`RULES`."""
        touched = {c.part for c in self.changes if c.part is not None}
        return tuple(dict.fromkeys(part for _, part, _ in RULES if part in touched))

    @property
    def refused(self) -> bool:
        return bool(self.restart)

    def refusal(self) -> str:
        """Why a reload with these changes is refused: one clause per restart-only change."""
        reasons = "; ".join(f"{c.to_text(80)}: {c.reason}" for c in self.restart)
        count = len(self.restart)
        return (f"the reload needs a restart for {count} change{'s' if count != 1 else ''} and was not applied "
                f"(nothing changed): {reasons}")
