"""The redelivery core: what the subscriber's answer means, and what to do next. Pure: no I/O, no clock;
the driver passes a random number in for jitter.

Theory of operation
-------------------
One message is in flight per stream (publisher, topic, subscriber), or one batch with bulk delivery, whose answer
gives each message its own outcome (:func:`classify_bulk`); each attempt ends in an :class:`Outcome`:

=================  =================================================  =========================================
outcome            when                                               next step
=================  =================================================  =========================================
ACK                2xx                                                next message
DROP               2xx with ``{"status": "DROP"}``                    dead-letter at once (reason ``dropped``)
FAILED             app 408/429/5xx, timeout, mesh 504, ``RETRY``      back off; counts toward ``max_attempts``
REJECTED           app 4xx (not 408/429), authorization refused       dead-letter at once (reason ``rejected``)
UNREACHABLE        no live instance, connect failure, mesh 503/404    back off; does not count: the stream waits
=================  =================================================  =========================================

After ``max_attempts`` counted attempts the message is dead-lettered (reason ``max-attempts``). An unreachable
subscriber is retention's business, not the message's: its stream waits, and what outlives retention is
dead-lettered by the store.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class Outcome(enum.Enum):
    ACK = "ack"
    DROP = "drop"
    FAILED = "failed"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"


# errors the mesh itself answers (x-sidecar-error) that say "nobody to deliver to", not "the app refused"
_MESH_UNREACHABLE = frozenset({"UNAVAILABLE", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"})
_MESH_REJECTED = frozenset({"PERMISSION_DENIED", "INVALID_ARGUMENT", "HEADERS_TOO_LARGE", "METHOD_NOT_ALLOWED"})


def classify(status: int, mesh_error: str | None, body: bytes) -> Outcome:
    """The outcome of an attempt that got a response: ``mesh_error`` is its ``x-sidecar-error`` header."""
    if mesh_error is not None:
        if mesh_error in _MESH_UNREACHABLE:
            return Outcome.UNREACHABLE
        if mesh_error in _MESH_REJECTED:
            return Outcome.REJECTED
        return Outcome.FAILED
    if 200 <= status < 300:
        verdict = _status_field(body)
        if verdict == "DROP":
            return Outcome.DROP
        if verdict == "RETRY":
            return Outcome.FAILED
        return Outcome.ACK
    if status in (408, 429) or status >= 500:
        return Outcome.FAILED
    return Outcome.REJECTED


# a bulk answer's per-message statuses (as Dapr's bulk subscribe); anything else (or none) for a message retries it
_BULK_STATUS = {"SUCCESS": Outcome.ACK, "DROP": Outcome.DROP, "RETRY": Outcome.FAILED}


def classify_bulk(status: int, mesh_error: str | None, body: bytes, ids: list[str]) -> list[Outcome]:
    """The outcomes of a bulk delivery of the messages ``ids``, in that order. A 2xx whose body has
    ``{"statuses": [{"id": ID, "status": "SUCCESS" | "RETRY" | "DROP"}, ...]}`` decides per message, and a message
    it leaves out (or gives another status) is retried; any other answer is one outcome for every message, as
    :func:`classify` says (so a plain 2xx acks them all)."""
    doc = _json_object(body) if 200 <= status < 300 and mesh_error is None and b"statuses" in body else None
    statuses = doc.get("statuses") if doc is not None else None
    if not isinstance(statuses, list):
        return [classify(status, mesh_error, body)] * len(ids)
    given: dict[str, Outcome] = {}
    for entry in statuses:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("status"), str):
            given[entry["id"]] = _BULK_STATUS.get(entry["status"].upper(), Outcome.FAILED)
    return [given.get(i, Outcome.FAILED) for i in ids]


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _status_field(body: bytes) -> str | None:
    if not body or b"status" not in body:
        return None
    doc = _json_object(body)  # None when not JSON, or nested deeper than the stack: no verdict in it
    value = doc.get("status") if doc is not None else None
    return value.upper() if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_attempts: int = 10
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    jitter: float = 0.2  # a delay is shortened by up to this share, so streams do not retry in lockstep


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class DeliveryRetry:
    delay: float
    counted: bool  # whether the attempt counted toward max_attempts


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str  # dropped | rejected | max-attempts


Step = Ack | DeliveryRetry | DeadLetter


def backoff(policy: DeliveryPolicy, n: int, random: float) -> float:
    """The delay before try ``n + 1`` after ``n`` failures (n >= 1): base * 2^(n-1), capped, minus jitter."""
    delay = min(policy.backoff_max, policy.backoff_base * 2.0 ** min(n - 1, 60))
    return delay * (1.0 - policy.jitter * random)


@dataclass(slots=True)
class Attempts:
    """One message's delivery so far: counted failures and uncounted waits."""

    counted: int = 0
    waits: int = 0

    def next_step(self, policy: DeliveryPolicy, outcome: Outcome, random: float) -> Step:
        if outcome is Outcome.ACK:
            return Ack()
        if outcome is Outcome.DROP:
            return DeadLetter("dropped")
        if outcome is Outcome.REJECTED:
            return DeadLetter("rejected")
        if outcome is Outcome.UNREACHABLE:
            self.waits += 1
            return DeliveryRetry(backoff(policy, self.waits, random), counted=False)
        self.counted += 1
        if self.counted >= policy.max_attempts:
            return DeadLetter("max-attempts")
        return DeliveryRetry(backoff(policy, self.counted, random), counted=True)

    @property
    def total(self) -> int:
        return self.counted + self.waits
