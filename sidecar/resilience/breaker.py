"""Resource caps per destination service: the first of the three things called "circuit breaking".

Envoy's cluster circuit breakers, for HTTP/1.1 where a connection carries one request at a time:

``max_connections``        connections in use to the service (busy or being dialled): each attempt holds one from
                           its start until it fails, is discarded for a retry, or its response ends. Idle
                           keep-alive connections are not counted (they cost the service nothing).
``max_pending_requests``   requests waiting for a connection when ``max_connections`` are in use; beyond, 429.
``max_requests``           requests in progress to the service at once (a waiting request is not one yet); beyond, 429.
``max_retries``            retries outstanding at once; beyond, the retry is not made (the caller gets the
                           failure it would have had without retries) and the overflow is counted.

Each gauge is *closed* below its cap and *open* at it, as Envoy's ``cx_open`` / ``rq_pending_open`` /
``rq_open`` / ``rq_retry_open`` gauges. Pure counters: the driver (``policy``) calls them in order and keeps
the waiting requests.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final


class Cap(enum.StrEnum):
    """The caps, named as the YAML keys name them (the 429's message and the counters say which)."""

    MAX_CONNECTIONS = "max_connections"
    MAX_PENDING_REQUESTS = "max_pending_requests"
    MAX_REQUESTS = "max_requests"
    MAX_RETRIES = "max_retries"


class Admission(enum.Enum):
    GO = "go"          # a connection slot and a request slot are taken
    WAIT = "wait"      # a pending slot is taken: call promote() when a connection slot frees
    REJECT = "reject"  # over a cap: fail fast


@dataclass(frozen=True, slots=True)
class ResourceCaps:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_pending_requests, self.max_requests) < 1 or self.max_retries < 0:
            raise ValueError("caps must be at least 1 (max_retries at least 0)")


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    admission: Admission
    cap: Cap | None = None   # the cap that refused, for REJECT; the cap that made it wait, for WAIT


_GO: Final = AdmissionDecision(Admission.GO)   # the answer to nearly every request: one shared (frozen) instance


class Breaker:
    __slots__ = ("connections", "limits", "pending", "rejected", "requests", "retries")

    def __init__(self, limits: ResourceCaps) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        self.rejected: Counter[Cap] = Counter()

    # ------------------------------------------------------------------------------------ requests

    def admit(self) -> AdmissionDecision:
        """A new request: go now, wait for a connection slot, or be refused (counted)."""
        limits = self.limits
        if self.requests >= limits.max_requests:
            return self._reject(Cap.MAX_REQUESTS)
        if self.connections < limits.max_connections and self.pending == 0:
            self.connections += 1
            self.requests += 1
            return _GO
        if self.pending < limits.max_pending_requests:
            self.pending += 1
            return AdmissionDecision(Admission.WAIT, Cap.MAX_CONNECTIONS)
        return self._reject(Cap.MAX_PENDING_REQUESTS)

    def can_promote(self) -> bool:
        """Whether a waiting request may take a connection slot now."""
        return self.pending > 0 and self.connections < self.limits.max_connections

    def promote(self) -> AdmissionDecision:
        """A waiting request leaves the queue for a free connection slot (call only when can_promote())."""
        if not self.can_promote():
            raise RuntimeError("promote() without a waiting request and a free connection slot")
        self.pending -= 1
        if self.requests >= self.limits.max_requests:
            return self._reject(Cap.MAX_REQUESTS)
        self.connections += 1
        self.requests += 1
        return _GO

    def give_up_waiting(self) -> None:
        """A waiting request left the queue without a slot (timed out, or its client went away)."""
        if self.pending <= 0:
            raise RuntimeError("give_up_waiting() without a waiting request")
        self.pending -= 1

    def request_done(self) -> None:
        if self.requests <= 0:
            raise RuntimeError("request_done() without a request in progress")
        self.requests -= 1

    # ------------------------------------------------------------------------------------ retries

    def retry(self) -> Cap | None:
        """Take a retry slot and a connection slot for a retry; the cap that refuses it (counted), else None."""
        if self.retries >= self.limits.max_retries:
            self.rejected[Cap.MAX_RETRIES] += 1
            return Cap.MAX_RETRIES
        if self.connections >= self.limits.max_connections:
            self.rejected[Cap.MAX_CONNECTIONS] += 1
            return Cap.MAX_CONNECTIONS
        self.retries += 1
        self.connections += 1
        return None

    def retry_done(self) -> None:
        if self.retries <= 0:
            raise RuntimeError("retry_done() without a retry outstanding")
        self.retries -= 1

    # ------------------------------------------------------------------------------------ connections

    def connection_done(self) -> None:
        if self.connections <= 0:
            raise RuntimeError("connection_done() without a connection in use")
        self.connections -= 1

    # ------------------------------------------------------------------------------------ views

    def _reject(self, cap: Cap) -> AdmissionDecision:
        self.rejected[cap] += 1
        return AdmissionDecision(Admission.REJECT, cap)

    def is_open(self, cap: Cap) -> bool:
        """Envoy's ``*_open`` gauges: the cap is reached, the next one would wait or be refused."""
        active, limit = self._gauge(cap)
        return active >= limit

    def _gauge(self, cap: Cap) -> tuple[int, int]:
        limits = self.limits
        return {
            Cap.MAX_CONNECTIONS: (self.connections, limits.max_connections),
            Cap.MAX_PENDING_REQUESTS: (self.pending, limits.max_pending_requests),
            Cap.MAX_REQUESTS: (self.requests, limits.max_requests),
            Cap.MAX_RETRIES: (self.retries, limits.max_retries),
        }[cap]

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for cap, key in ((Cap.MAX_CONNECTIONS, "connections"), (Cap.MAX_PENDING_REQUESTS, "pendingRequests"),
                         (Cap.MAX_REQUESTS, "requests"), (Cap.MAX_RETRIES, "retries")):
            active, limit = self._gauge(cap)
            out[key] = {"active": active, "max": limit, "state": "open" if active >= limit else "closed",
                        "rejected": self.rejected[cap]}
        return out
