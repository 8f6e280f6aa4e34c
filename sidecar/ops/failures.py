"""A bounded record of recent failed requests and what happened on each of their tries, for
``GET /debug/explain?request_id=ID``.

Only requests that failed or were retried are kept (the hot path pays one branch per attempt): the data plane
hands over a request's :class:`~sidecar.proxy.RequestStats` and the attempt records its
:class:`~sidecar.resilience.Call` kept (``Call.notes``: every attempt from the first notable one on).
Memory is bounded by ``capacity`` requests of at most ``MAX_ATTEMPTS`` tries each; the oldest go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.proxy import AttemptRecord, RequestStats

DEFAULT_CAPACITY = 256   # a few minutes of failures on a busy sidecar; each entry is a few hundred bytes
MAX_ATTEMPTS = 16        # a request header may ask for 10 retries; more than that is not worth keeping


@dataclass(frozen=True, slots=True)
class TryNote:
    """One try of a failed request, in words an operator reads."""

    number: int
    endpoint: str | None     # the peer sidecar's address, host:port
    instance: str | None     # the catalog instance id
    node: str | None
    outcome: str             # "response", or the failure kind ("connect-failure", "reset", "timeout", ...)
    status: int | None
    detail: str | None       # the failure's message
    sent: bool               # whether any request byte reached the upstream
    started_ms: float        # after the request began
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"try": self.number, "endpoint": self.endpoint, "instance": self.instance, "node": self.node,
                "outcome": self.outcome, "status": self.status, "detail": self.detail, "sent": self.sent,
                "startedMs": self.started_ms, "durationMs": self.duration_ms}

    def says(self) -> str:
        where = f"{self.instance} at {self.endpoint}" if self.instance else (self.endpoint or "no endpoint")
        what = f"answered {self.status}" if self.outcome == "response" else f"failed: {self.outcome}"
        if self.detail and self.outcome != "response":
            what += f" ({self.detail})"
        sent = "" if self.sent else ", nothing was sent"
        return (f"try {self.number} → {where}: {what} after {self.duration_ms:.1f} ms "
                f"(began at +{self.started_ms:.1f} ms{sent})")


@dataclass(frozen=True, slots=True)
class FailedRequest:
    request_id: str
    listener: str
    service: str
    method: str
    path: str
    status: int
    error: str | None
    attempts: int
    duration_ms: float
    at: float                 # wall clock, epoch seconds, when it ended
    tries: tuple[TryNote, ...]

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "listener": self.listener, "service": self.service,
                "method": self.method, "path": self.path, "status": self.status, "error": self.error,
                "attempts": self.attempts, "durationMs": self.duration_ms, "at": int(self.at * 1000),
                "tries": [t.to_json() for t in self.tries], "says": self.says()}

    def says(self) -> list[str]:
        answer = f"the client got {self.status}" if self.status else "the client got no answer"
        error = f" ({self.error})" if self.error else ""
        lines = [f"request {self.request_id}: {self.method} {self.path} to {self.service} via {self.listener}: "
                 f"{answer}{error} after {self.attempts} attempt{'s' if self.attempts != 1 else ''} "
                 f"in {self.duration_ms:.1f} ms"]
        if not self.tries:
            lines.append("no try reached a peer: the sidecar answered by itself (no endpoint, a cap, a deadline)"
                         if self.attempts == 0 else "the tries before the failure were not notable (not recorded)")
        lines.extend(t.says() for t in self.tries)
        return lines


def is_failure(stats: RequestStats) -> bool:
    """What the ring keeps: no answer, an error answer (4xx included: 403 and 429 are the mesh's refusals),
    or a request cut short."""
    return stats.status == 0 or stats.status >= 400 or stats.error is not None


class Place(Protocol):
    """Where a try went (a :class:`~sidecar.mesh.router.Endpoint`)."""

    @property
    def instance(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def authority(self) -> str: ...


Attempt = tuple[AttemptRecord, Place]


def _note(record: AttemptRecord, tag: Place, origin: float) -> TryNote:
    failure = record.failure
    return TryNote(record.number, tag.authority, tag.instance, tag.node,
                   "response" if failure is None else failure.kind.value, record.status,
                   None if failure is None else str(failure), record.sent,
                   round((record.started - origin) * 1000.0, 3), round((record.ended - record.started) * 1000.0, 3))


class FailedRequests:
    """The ring. ``record`` is called once per finished request that :func:`is_failure` or was retried."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, FailedRequest] = OrderedDict()
        self.recorded = 0

    def record(self, listener: str, service: str, stats: RequestStats, attempts: Sequence[Attempt],
               wall_at_end: float) -> FailedRequest:
        tries = tuple(_note(record, place, stats.started) for record, place in attempts[:MAX_ATTEMPTS])
        request_id = stats.request_id or f"unidentified-{self.recorded}"
        entry = FailedRequest(request_id, listener, service, stats.method, stats.target.decode("latin-1"),
                              stats.status, stats.error, stats.attempts, round(stats.duration * 1000.0, 3),
                              wall_at_end, tries)
        self._items.pop(request_id, None)
        self._items[request_id] = entry
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        self.recorded += 1
        return entry

    def get(self, request_id: str) -> FailedRequest | None:
        return self._items.get(request_id)

    def recent(self, limit: int = 50) -> list[FailedRequest]:
        """Newest first."""
        return list(reversed(self._items.values()))[:limit]

    def __len__(self) -> int:
        return len(self._items)
