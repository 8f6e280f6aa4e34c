"""One request to a destination (:class:`Call`): the engine's RetryPolicy and attempt observer for all its
Targets. It decides each retry (``retry_on``, ``attempts``, only requests safe to repeat, back-off with jitter
within the deadline, ``max_retries`` outstanding, the retry budget, another host than those tried), restamps
the deadline header per try, and holds and releases the request's connection slots and in-flight counts.

A Call rides on every Target of its request (``retry``, ``observer`` and ``tag``), so per-request state
(hosts tried, override headers, slots held) needs no lookup. A retry refused by the budget or ``max_retries``
is simply not made (the caller gets the failure it had, as Envoy and Linkerd do), and counted.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy import AttemptRecord, RequestHead, Retry, Target
from sidecar.proxy.http1 import IDEMPOTENT
from sidecar.resilience import deadline
from sidecar.resilience.cluster import Cluster, ClusterEndpoint
from sidecar.resilience.rules import RetryOn


class Peers(Protocol):
    """What the data plane tells the layers: the endpoints of a name now, and the Target of an endpoint."""

    def endpoints(self, name: ServiceName) -> EndpointSet: ...

    def target(self, endpoint: Endpoint) -> Target: ...


class Call:
    """One request to a destination: the engine's RetryPolicy and attempt observer for all its Targets.

    Attempts are known by their number (the engine's ``AttemptRecord.number``): each holds its host's
    in-flight count until it ends, and a connection slot until it fails, its response is discarded for a
    retry, or the request ends. The engine may ask about a response before reporting its end, and may ask
    twice about one attempt (a try timeout during a back-off): both are handled by number.
    """

    __slots__ = ("_discarded", "_open", "_retrying", "_slots", "deadline", "dest", "finished", "grpc_statuses",
                 "grpc_timeout", "head", "host", "max_retries", "method", "name", "notes", "peers", "retry_on",
                 "statuses", "timeout", "tried", "try_timeout")

    def __init__(self, dest: Cluster, peers: Peers, name: ServiceName, head: RequestHead, retry_on: RetryOn,
                 max_retries: int, timeout: float, try_timeout: float | None, now: float) -> None:
        self.dest = dest
        self.peers = peers
        self.name = name
        self.head = head
        self.method = head.method
        self.retry_on = retry_on
        self.max_retries = max_retries
        self.statuses = retry_on.statuses if max_retries > 0 else frozenset()
        self.grpc_statuses = retry_on.grpc if max_retries > 0 else frozenset()
        # the request carries grpc-timeout: each try rewrites it with the time left, as x-sidecar-deadline-ms
        self.grpc_timeout = False
        self.timeout = timeout
        self.try_timeout = try_timeout
        self.deadline = now + timeout
        self.tried: list[ClusterEndpoint] = []
        self.host: ClusterEndpoint | None = None
        self.finished = False
        self._open: dict[int, ClusterEndpoint] = {}
        self._slots = 0
        # attempt numbers that are retries holding a retry slot / whose response was discarded for a retry
        self._retrying: set[int] = set()
        self._discarded: set[int] = set()
        # every attempt from the first notable one on (failed, >= 400, retried, or a retry), with where it went: what
        # /debug/explain?request_id= tells; None while every attempt went well (no cost on the happy path)
        self.notes: list[tuple[AttemptRecord, Endpoint]] | None = None

    @property
    def service(self) -> str:
        return self.dest.service

    @property
    def endpoint(self) -> Endpoint | None:
        """The latest attempt's endpoint."""
        return None if self.host is None else self.host.endpoint

    def begin(self, host: ClusterEndpoint, number: int) -> Target:
        """Attempt ``number`` goes to ``host`` (its connection slot is already taken)."""
        self._open[number] = host
        self._slots += 1
        host.load.in_flight += 1
        host.requests += 1
        self.tried.append(host)
        self.host = host
        base = self.peers.target(host.endpoint)
        return base.derive(self.timeout, self.try_timeout, self if self.max_retries > 0 else None, self.observe,
                           self)

    # ------------------------------------------------------------------------------------ RetryPolicy

    def next_attempt(self, attempt: AttemptRecord) -> Retry | None:
        number = attempt.number
        stale = self._open.pop(number + 1, None)
        if stale is not None:   # asked again about the same attempt: the retry decided before never began
            self._abandon(number + 1, stale)
        if not self._retriable(attempt):
            return None
        dest = self.dest
        reason = self._refusal(attempt)
        if reason is not None:
            dest.retries_denied[reason] += 1
            return None
        now = attempt.ended
        delay = dest.rules.backoff.delay(number, dest.rng)
        if now + delay >= self.deadline:
            dest.retries_denied["deadline"] += 1
            return None
        cap = dest.breaker.retry()
        if cap is not None:
            dest.retries_denied[cap.value] += 1
            return None
        if not dest.budget.try_withdraw(now):
            dest.breaker.retry_done()
            dest.breaker.connection_done()
            dest.retries_denied["budget"] += 1
            return None
        endpoints = self.peers.endpoints(self.name)
        if not endpoints.usable:
            dest.breaker.retry_done()
            dest.breaker.connection_done()
            dest.retries_denied["no-endpoint"] += 1
            return None
        host = dest.choose(endpoints, now, self.tried)
        if attempt.status is not None:
            self._discarded.add(number)
        self._retrying.add(number + 1)
        dest.retries += 1
        self.stamp_deadline(now + delay)
        return Retry(self.begin(host, number + 1), delay)

    def stamp_deadline(self, start: float) -> None:
        """Tell the next hop what a try starting at ``start`` may take, in ``x-sidecar-deadline-ms`` (replacing
        what an earlier try said), and in ``grpc-timeout`` when the call carried one: what is left of the request's
        deadline then, within the per-try timeout."""
        left = deadline.per_try(self.deadline - start, self.try_timeout)
        value = deadline.to_header(left)
        items = self.head.headers.items
        if items and items[-1][0] == deadline.HEADER:
            items[-1] = (deadline.HEADER, deadline.HEADER, value)   # where the first try put it
        else:
            self.head.headers.items = [item for item in items if item[0] != deadline.HEADER]
            self.head.headers.items.append((deadline.HEADER, deadline.HEADER, value))
        if self.grpc_timeout:   # a gRPC call's own deadline field says the same, for the app at the far end
            self.head.headers.items = deadline.set_field(self.head.headers.items, deadline.GRPC_TIMEOUT,
                                                         deadline.to_grpc_timeout(left))

    def _retriable(self, attempt: AttemptRecord) -> bool:
        if attempt.failure is not None:
            return attempt.failure.kind in self.retry_on.failures
        return attempt.status in self.statuses or attempt.grpc_status in self.grpc_statuses

    def _refusal(self, attempt: AttemptRecord) -> str | None:
        if attempt.number > self.max_retries:
            return "attempts"
        # a gRPC status named in retry_on is the operator's word that the call may be repeated on it (gRPC's own
        # retryableStatusCodes): every gRPC call is a POST, and the status says the server answered
        if (attempt.sent and self.method not in IDEMPOTENT and not self.dest.rules.non_idempotent
                and attempt.grpc_status not in self.grpc_statuses):
            return "unsafe"
        if not attempt.replayable:
            return "body-too-large"
        return None

    # ------------------------------------------------------------------------------------ observer

    def observe(self, attempt: AttemptRecord) -> None:
        """An attempt ended: a response head arrived, or it failed."""
        number = attempt.number
        host = self._open.pop(number, None)
        if host is None:
            return   # already accounted (reported twice, or the request had ended)
        dest = self.dest
        dest.attempt_ended(host, attempt)
        if (self.notes is not None or attempt.failure is not None or number > 1 or attempt.status is None
                or attempt.status >= 400 or attempt.status in self.statuses or attempt.grpc_status):
            if self.notes is None:
                self.notes = []
            self.notes.append((attempt, host.endpoint))
        if number in self._retrying:
            self._retrying.discard(number)
            dest.breaker.retry_done()
        if attempt.failure is not None or number in self._discarded:
            self._release_slot()
        # else: the response is relayed, and its connection stays in use until the request ends

    def _abandon(self, number: int, host: ClusterEndpoint) -> None:
        host.load.in_flight -= 1
        if number in self._retrying:
            self._retrying.discard(number)
            self.dest.breaker.retry_done()
        self._release_slot()

    def _release_slot(self) -> None:
        if self._slots > 0:
            self._slots -= 1
            self.dest.breaker.connection_done()
            self.dest.slot_freed()

    def finish(self) -> None:
        """The request ended (answered, failed, or its client left): release everything it still holds."""
        if self.finished:
            return
        self.finished = True
        if self._open:
            for number, host in list(self._open.items()):
                self._abandon(number, host)
            self._open.clear()
        dest = self.dest
        breaker = dest.breaker
        while self._slots > 0:
            self._slots -= 1
            breaker.connection_done()
        breaker.request_done()
        dest.slot_freed()
