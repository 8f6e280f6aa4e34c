"""The resilience layers composed for the mesh's outbound traffic, one :class:`Destination` per service.

The stack for one request, top-down (each layer is its own module over a pure core):

1. deadline (:mod:`.deadline`): the request's deadline is the policy's ``timeout``, shortened by a deadline the
   local app forwarded; the remaining time per try travels on in ``x-sidecar-deadline-ms``;
2. resource caps (:mod:`.breaker`): ``max_requests`` / ``max_connections`` / ``max_pending_requests`` admit,
   queue or refuse (429) the request before anything is sent;
3. host choice: healthy hosts, else degraded ones; ejected hosts (:mod:`.outlier`) are left out unless all
   are ejected (then all are used, Envoy's *panic* routing: a lone host that fails is still tried rather
   than the service refused for the whole ejection time); among them the balancer (:mod:`.balancer`) picks;
4. retries (:class:`Call`, the engine's ``RetryPolicy``): ``retry_on``, ``attempts``, only requests safe to
   repeat, back-off with jitter (:mod:`.backoff`) within the deadline, ``max_retries`` outstanding, the retry
   budget (:mod:`.budget`), and another host than those tried when there is one;
5. every attempt's end (:meth:`Call.observe`, the Target observer) feeds the balancer's latency and in-flight
   counts and the outlier detector; the request's end (:meth:`Resilience.request_done`) releases what it held.

A :class:`Call` is made per request and rides on every Target of that request (``retry``, ``observer`` and
``tag``), so per-request state (hosts tried, override headers, slots held) needs no lookup. Requests refused
by a cap get 429 RESOURCE_EXHAUSTED naming the cap; a retry refused by the budget or ``max_retries`` is simply
not made (the caller gets the failure it had, as Envoy and Linkerd do), and counted.

Times are the event loop's clock (the engine's ``AttemptRecord`` times), passed in.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.config.model import Config, PolicyConfig, RetryConfig
from sidecar.errors import DeadlineExceeded, ResourceExhausted
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy import AttemptRecord, FailureKind, RelayStats, RequestHead, Retry, Target
from sidecar.resilience import deadline
from sidecar.resilience.backoff import Backoff
from sidecar.resilience.balancer import Load, make_balancer
from sidecar.resilience.breaker import Admission, Breaker, Cap, Limits
from sidecar.resilience.budget import RetryBudget
from sidecar.resilience.outlier import Ejected, EjectionRefused, HostState, OutlierDetector, Rules

log = logging.getLogger("sidecar.resilience")

# RFC 9110 9.2.2: safe to send twice
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})
RETRIABLE_4XX = frozenset({409})
_ALL_FAILURES = frozenset(FailureKind)
# a request header may ask for more retries than the policy, but not for a storm
MAX_RETRIES_OVERRIDE = 10

MAX_RETRIES_HEADERS = (b"x-sidecar-max-retries", b"x-envoy-max-retries")
RETRY_ON_HEADERS = (b"x-sidecar-retry-on", b"x-envoy-retry-on")
_STRIPPED = frozenset((*MAX_RETRIES_HEADERS, *RETRY_ON_HEADERS, deadline.HEADER))


# ------------------------------------------------------------------------------------------ rules


@dataclass(frozen=True, slots=True)
class RetryOn:
    """``retry_on`` compiled: the failure kinds and response statuses that may be retried.

    ``connect-failure``: the upstream could not be dialled. ``reset``: it closed or reset the connection, sent
    something that is not HTTP, or the try timed out (Envoy's disconnect/reset/read timeout). ``5xx``: any
    5xx and every local failure. ``gateway-error``: 502, 503, 504 and every local failure. ``retriable-4xx``:
    409. A number: that status. ``refused-stream`` is HTTP/2's and never happens over HTTP/1.1.
    """

    failures: frozenset[FailureKind]
    statuses: frozenset[int]

    @classmethod
    def parse(cls, tokens: Iterable[str]) -> RetryOn:
        failures: set[FailureKind] = set()
        statuses: set[int] = set()
        for raw in tokens:
            token = raw.strip().lower()
            if token == "connect-failure":
                failures.add(FailureKind.CONNECT_FAILURE)
            elif token == "reset":
                failures |= {FailureKind.RESET, FailureKind.PROTOCOL, FailureKind.TIMEOUT}
            elif token == "5xx":
                failures |= _ALL_FAILURES
                statuses |= set(range(500, 600))
            elif token == "gateway-error":
                failures |= _ALL_FAILURES
                statuses |= GATEWAY_ERRORS
            elif token == "retriable-4xx":
                statuses |= RETRIABLE_4XX
            elif token.isdigit() and 100 <= int(token) <= 599:
                statuses.add(int(token))
            # else: refused-stream, or a token a request header got wrong: nothing to retry on
        return cls(frozenset(failures), frozenset(statuses))


@dataclass(frozen=True, slots=True)
class RetryRules:
    attempts: int                 # retries after the first attempt
    per_try_timeout: float | None   # None: a try may use the whole timeout
    retry_on: RetryOn
    backoff: Backoff
    non_idempotent: bool

    @classmethod
    def from_config(cls, config: RetryConfig, jitter: float = 1.0) -> RetryRules:
        per_try = None if config.per_try_timeout is None else float(config.per_try_timeout)
        return cls(config.attempts, per_try, RetryOn.parse(config.retry_on),
                   Backoff(float(config.backoff.base), float(config.backoff.max), jitter),
                   config.retry_non_idempotent)


class Peers(Protocol):
    """What the data plane tells the layers: the endpoints of a name now, and the Target of an endpoint."""

    def endpoints(self, name: ServiceName) -> EndpointSet: ...

    def target(self, endpoint: Endpoint) -> Target: ...


# ------------------------------------------------------------------------------------------ hosts


HostKey = tuple[str, tuple[str, int]]   # (instance id, inbound address)


class Host:
    """One instance of a destination as the layers see it; ``endpoint`` is the latest catalog view of it."""

    __slots__ = ("endpoint", "failures", "key", "load", "requests")

    def __init__(self, endpoint: Endpoint, now: float) -> None:
        self.endpoint = endpoint
        self.key: HostKey = (endpoint.instance, endpoint.address)
        self.load = Load(stamp=now)
        self.requests = 0     # attempts sent
        self.failures = 0     # attempts that failed (gateway error or local failure)

    def __repr__(self) -> str:
        return f"<Host {self.endpoint.service} {self.endpoint.authority}>"


# ------------------------------------------------------------------------------------------ one destination


class Destination:
    """Every layer's state for one destination service: caps, budget, outlier records, balancer, hosts."""

    def __init__(self, service: str, policy: PolicyConfig, rng: random.Random, now: float,
                 jitter: float = 1.0) -> None:
        self.service = service
        self.policy = policy
        self.timeout = float(policy.timeout)
        self.rules = RetryRules.from_config(policy.retries, jitter)
        self.rng = rng
        budget = policy.retries.budget
        self.budget = RetryBudget(budget.ratio, budget.min_per_second, now)
        caps = policy.circuit_breaker
        self.breaker = Breaker(Limits(caps.max_connections, caps.max_pending_requests, caps.max_requests,
                                      caps.max_retries))
        od = policy.outlier_detection
        self.outlier = OutlierDetector(Rules(od.consecutive_failures, float(od.interval), float(od.base_ejection_time),
                                             float(od.max_ejection_time), od.max_ejection_percent))
        self.balancer = make_balancer(policy.load_balancer, rng)
        self.hosts: dict[HostKey, Host] = {}
        self._sets: dict[ServiceName, tuple[EndpointSet, tuple[Host, ...], tuple[Host, ...]]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.requests = 0                       # requests admitted
        self.retries = 0                        # retries made
        self.retries_denied: Counter[str] = Counter()   # by reason: budget, max_retries, deadline, ...
        self.panics = 0                         # picks made among ejected hosts, all being ejected

    def reconfigure(self, policy: PolicyConfig, jitter: float = 1.0) -> None:
        """A reloaded policy, from the next request on. What was learnt is kept: hosts with their ejections and
        latency estimates, the budget's window, the resources in use (a cap lowered under them admits nothing
        new until they end). Requests in flight finish under the rules they started with."""
        if policy == self.policy:
            return
        old, self.policy = self.policy, policy
        self.timeout = float(policy.timeout)
        self.rules = RetryRules.from_config(policy.retries, jitter)
        budget = policy.retries.budget
        self.budget.ratio, self.budget.min_per_second = budget.ratio, budget.min_per_second
        caps = policy.circuit_breaker
        self.breaker.limits = Limits(caps.max_connections, caps.max_pending_requests, caps.max_requests,
                                     caps.max_retries)
        od = policy.outlier_detection
        self.outlier.rules = Rules(od.consecutive_failures, float(od.interval), float(od.base_ejection_time),
                                   float(od.max_ejection_time), od.max_ejection_percent)
        if policy.load_balancer != old.load_balancer:
            self.balancer = make_balancer(policy.load_balancer, self.rng)
        self.slot_freed()   # a raised max_connections admits waiting requests now

    # ------------------------------------------------------------------------------------ hosts

    def hosts_of(self, endpoints: EndpointSet, now: float) -> tuple[tuple[Host, ...], tuple[Host, ...]]:
        """The healthy and degraded hosts of an endpoint set (cached until the router hands out a new set)."""
        cached = self._sets.get(endpoints.name)
        if cached is not None and cached[0] is endpoints:
            return cached[1], cached[2]
        healthy = tuple(self._host(e, now) for e in endpoints.healthy)
        degraded = tuple(self._host(e, now) for e in endpoints.degraded)
        self._sets[endpoints.name] = (endpoints, healthy, degraded)
        if endpoints.name.tag is None:
            self._prune({h.key for h in healthy + degraded}, now)
        return healthy, degraded

    def _host(self, endpoint: Endpoint, now: float) -> Host:
        key = (endpoint.instance, endpoint.address)
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = Host(endpoint, now)
            self.outlier.add(key, now)
        else:
            host.endpoint = endpoint   # its health may have changed
        return host

    def _prune(self, present: set[HostKey], now: float) -> None:
        """Forget hosts that left the catalog (or turned unhealthy), unless something is still in flight there
        or they are ejected (a host that flaps in and out of the catalog keeps its ejection)."""
        for key, host in list(self.hosts.items()):
            if key not in present and host.load.in_flight == 0 and not self.outlier.is_ejected(key, now):
                del self.hosts[key]
                self.outlier.remove(key)

    def choose(self, endpoints: EndpointSet, now: float, avoid: Iterable[Host] = ()) -> Host:
        """A host for one attempt: healthy before degraded, ejected ones only in panic, not one of ``avoid``
        when another remains."""
        healthy, degraded = self.hosts_of(endpoints, now)
        outlier = self.outlier
        if len(healthy) == 1:   # the common case, without the lists below
            only = healthy[0]
            if not outlier.is_ejected(only.key, now):
                return only
        candidates = [h for h in healthy if not outlier.is_ejected(h.key, now)]
        if not candidates:
            candidates = [h for h in degraded if not outlier.is_ejected(h.key, now)]
            if not candidates:
                candidates = list(healthy or degraded)
                self.panics += 1
        if avoid and len(candidates) > 1:
            tried = set(avoid)
            fresh = [h for h in candidates if h not in tried]
            if fresh:
                candidates = fresh
        if len(candidates) == 1:
            return candidates[0]
        return self.balancer.pick(candidates, now)

    # ------------------------------------------------------------------------------------ results

    def attempt_ended(self, host: Host, record: AttemptRecord) -> None:
        now = record.ended
        load = host.load
        load.in_flight -= 1
        failed = record.failure is not None or record.status in GATEWAY_ERRORS
        if record.status is not None:
            # a quick 503 says nothing good about a host: failures may raise its estimate, never lower it (else
            # a failing host would look fastest to the EWMA balancer and draw the traffic)
            load.observe(max(record.latency, load.latency(now)) if failed else record.latency, now)
        if failed:
            host.failures += 1
            self._outlier_event(host, self.outlier.failure(host.key, now), now)
        else:
            self.outlier.success(host.key, now)

    def _outlier_event(self, host: Host, event: Ejected | EjectionRefused | None, now: float) -> None:
        if isinstance(event, Ejected):
            log.warning("ejected %s (%s, instance %s) for %.1fs after %d consecutive failures (ejection %d in a row)",
                        host.endpoint.authority, self.service, host.endpoint.instance, event.until - now,
                        event.failures, event.times)
        elif isinstance(event, EjectionRefused):
            log.info("not ejecting %s (%s): %d of %d hosts already ejected (max_ejection_percent %g)",
                     host.endpoint.authority, self.service, event.ejected, event.hosts,
                     self.outlier.rules.max_ejection_percent)

    # ------------------------------------------------------------------------------------ waiting for a slot

    def enqueue(self, deadline_at: float, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Wait for a connection slot (the breaker counted this request as pending) until ``deadline_at``."""
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        handle = loop.call_at(deadline_at, self._expire, future)
        future.add_done_callback(lambda _: handle.cancel())
        return future

    def _expire(self, future: asyncio.Future[None]) -> None:
        if future.done():
            return
        self._waiters.remove(future)
        self.breaker.give_up_waiting()
        future.set_exception(DeadlineExceeded(
            f"no connection to {self.service} became free before the deadline "
            f"(max_connections {self.breaker.limits.max_connections} in use)",
            {"service": self.service, "cap": Cap.MAX_CONNECTIONS.value}))

    def abandon(self, future: asyncio.Future[None]) -> None:
        """The waiting request went away: give back its place in the queue, or the slot it was just given."""
        if future in self._waiters:
            self._waiters.remove(future)
            self.breaker.give_up_waiting()
        elif future.done() and not future.cancelled() and future.exception() is None:
            self.breaker.connection_done()
            self.breaker.request_done()
            self.slot_freed()

    def slot_freed(self) -> None:
        """A connection slot may be free: hand it to the longest-waiting request."""
        waiters = self._waiters
        breaker = self.breaker
        while waiters and breaker.can_promote():
            future = waiters.popleft()
            decision = breaker.promote()
            if decision.admission is Admission.GO:
                future.set_result(None)
            else:
                assert decision.cap is not None
                future.set_exception(self.refusal(decision.cap))

    def refusal(self, cap: Cap) -> ResourceExhausted:
        limits = self.breaker.limits
        details: dict[str, Any] = {"service": self.service, "cap": cap.value}
        if cap is Cap.MAX_REQUESTS:
            details["limit"] = limits.max_requests
            message = f"too many requests to {self.service}: max_requests ({limits.max_requests}) in progress"
        else:
            details["limit"] = limits.max_pending_requests
            message = (f"too many requests waiting for a connection to {self.service}: max_pending_requests "
                       f"({limits.max_pending_requests}) wait while max_connections ({limits.max_connections}) "
                       "are in use")
        return ResourceExhausted(message, details)

    # ------------------------------------------------------------------------------------ views

    def snapshot(self, now: float, wall_offset: float) -> dict[str, Any]:
        """For /clusters: hosts, caps, budget, counters. ``wall_offset`` turns loop times into epoch seconds."""
        endpoints = []
        for host in sorted(self.hosts.values(), key=lambda h: (h.endpoint.status.rank, h.endpoint.authority)):
            rec = self.outlier.record(host.key, now)
            ejected = rec.state is HostState.EJECTED
            e = host.endpoint
            endpoints.append({
                "address": e.authority, "instance": e.instance, "node": e.node, "health": e.status.value,
                "ejected": ejected,
                "ejection": {"state": rec.state.value, "times": rec.times, "ejections": rec.ejections,
                             "consecutiveFailures": rec.consecutive,
                             "until": int((rec.until + wall_offset) * 1000) if ejected else None,
                             "remainingMs": int((rec.until - now) * 1000) if ejected else 0},
                "inFlight": host.load.in_flight, "latencyEwmaMs": round(host.load.latency(now) * 1000.0, 3),
                "requests": host.requests, "failures": host.failures,
            })
        budget = self.budget.state(now)
        return {
            "service": self.service,
            "loadBalancer": self.balancer.name,
            "endpoints": endpoints,
            "breaker": self.breaker.snapshot(),
            "retryBudget": {"ratio": self.budget.ratio, "minPerSecond": self.budget.min_per_second,
                            "windowSeconds": self.budget.window, "requests": budget.requests,
                            "retries": budget.retries, "available": round(budget.available, 3)},
            "counters": {"requests": self.requests, "retries": self.retries,
                         "retriesDenied": dict(sorted(self.retries_denied.items())),
                         "rejected": {cap.value: n for cap, n in sorted(self.breaker.rejected.items())},
                         "ejections": self.outlier.ejections, "ejectionsRefused": self.outlier.refusals,
                         "panics": self.panics},
        }


# ------------------------------------------------------------------------------------------ one request


class Call:
    """One request to a destination: the engine's RetryPolicy and attempt observer for all its Targets.

    Attempts are known by their number (the engine's ``AttemptRecord.number``): each holds its host's
    in-flight count until it ends, and a connection slot until it fails, its response is discarded for a
    retry, or the request ends. The engine may ask about a response before reporting its end, and may ask
    twice about one attempt (a try timeout during a back-off): both are handled by number.
    """

    __slots__ = ("_discarded", "_open", "_retrying", "_slots", "deadline", "dest", "finished", "head", "host",
                 "max_retries", "method", "name", "notes", "peers", "retry_on", "statuses", "timeout", "tried",
                 "try_timeout")

    def __init__(self, dest: Destination, peers: Peers, name: ServiceName, head: RequestHead, retry_on: RetryOn,
                 max_retries: int, timeout: float, try_timeout: float | None, now: float) -> None:
        self.dest = dest
        self.peers = peers
        self.name = name
        self.head = head
        self.method = head.method
        self.retry_on = retry_on
        self.max_retries = max_retries
        self.statuses = retry_on.statuses if max_retries > 0 else frozenset()
        self.timeout = timeout
        self.try_timeout = try_timeout
        self.deadline = now + timeout
        self.tried: list[Host] = []
        self.host: Host | None = None
        self.finished = False
        self._open: dict[int, Host] = {}
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

    def begin(self, host: Host, number: int) -> Target:
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
        what an earlier try said): what is left of the request's deadline then, within the per-try timeout."""
        value = deadline.to_header(deadline.per_try(self.deadline - start, self.try_timeout))
        items = self.head.headers.items
        if items and items[-1][0] == deadline.HEADER:
            items[-1] = (deadline.HEADER, deadline.HEADER, value)   # where the first try put it
        else:
            self.head.headers.items = [item for item in items if item[0] != deadline.HEADER]
            self.head.headers.items.append((deadline.HEADER, deadline.HEADER, value))

    def _retriable(self, attempt: AttemptRecord) -> bool:
        if attempt.failure is not None:
            return attempt.failure.kind in self.retry_on.failures
        return attempt.status in self.statuses

    def _refusal(self, attempt: AttemptRecord) -> str | None:
        if attempt.number > self.max_retries:
            return "attempts"
        if attempt.sent and self.method not in IDEMPOTENT and not self.dest.rules.non_idempotent:
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
                or attempt.status >= 400 or attempt.status in self.statuses):
            if self.notes is None:
                self.notes = []
            self.notes.append((attempt, host.endpoint))
        if number in self._retrying:
            self._retrying.discard(number)
            dest.breaker.retry_done()
        if attempt.failure is not None or number in self._discarded:
            self._release_slot()
        # else: the response is relayed, and its connection stays in use until the request ends

    def _abandon(self, number: int, host: Host) -> None:
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


# ------------------------------------------------------------------------------------------ every destination


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a request's headers ask for (read once, then stripped)."""

    deadline: float | None = None
    max_retries: int | None = None
    retry_on: str | None = None


_NOTHING_ASKED = _Asked()


def read_request_headers(head: RequestHead) -> _Asked:
    """Read and remove the deadline and retry headers of an outbound request."""
    items = head.headers.items
    found = False
    for lname, _, _ in items:
        if lname in _STRIPPED:
            found = True
            break
    if not found:
        return _NOTHING_ASKED
    caller: float | None = None
    max_retries: int | None = None
    retry_on: str | None = None
    keep = []
    for item in items:
        lname, _, value = item
        if lname not in _STRIPPED:
            keep.append(item)
        elif lname == deadline.HEADER:
            parsed = deadline.parse(value)
            if parsed is not None:
                caller = parsed if caller is None else min(caller, parsed)
        elif lname in MAX_RETRIES_HEADERS:
            text = value.strip()
            if text.isdigit() and max_retries is None:
                max_retries = min(int(text), MAX_RETRIES_OVERRIDE)
        elif retry_on is None:
            retry_on = value.decode("latin-1")
    head.headers.items = keep
    return _Asked(caller, max_retries, retry_on)


class Resilience:
    """Per-destination state for one data plane, and the entry points its routes call.

    ``rng`` seeds the balancers and the back-off jitter (seeded in tests); ``jitter`` 0 makes back-off
    deterministic.
    """

    def __init__(self, config: Config, *, rng: random.Random | None = None, jitter: float = 1.0) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.jitter = jitter
        self.destinations: dict[str, Destination] = {}
        self._inbound: dict[tuple[int, float], tuple[Target, Target]] = {}   # see _derived
        self._inbound_timeouts: dict[str, float] = {}

    def destination(self, service: str, now: float) -> Destination:
        dest = self.destinations.get(service)
        if dest is None:
            dest = self.destinations[service] = Destination(service, self.config.policy_for(service), self.rng, now,
                                                            self.jitter)
        return dest

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's policies: every destination used so far takes its new policy in place
        (:meth:`Destination.reconfigure`); destinations first used later are built from it."""
        self.config = config
        self._inbound.clear()
        self._inbound_timeouts.clear()
        for service, dest in self.destinations.items():
            dest.reconfigure(config.policy_for(service), self.jitter)

    # ------------------------------------------------------------------------------------ outbound

    def outbound(self, head: RequestHead, name: ServiceName, peers: Peers,
                 now: float) -> Target | Awaitable[Target]:
        """The first Target of a request to ``name`` (or an awaitable of it, when the request must wait for a
        connection slot); raises the error to answer with (NotFound, Unavailable, 429, 504)."""
        endpoints = peers.endpoints(name)
        if not endpoints.usable:
            raise endpoints.no_endpoint()   # before any state is made: unknown names cost nothing
        dest = self.destination(name.service, now)
        asked = read_request_headers(head)
        rules = dest.rules
        if asked is _NOTHING_ASKED:   # the common case: the policy as it is
            timeout = dest.timeout
            retry_on = rules.retry_on
            max_retries = rules.attempts
        else:
            timeout = deadline.effective(dest.timeout, asked.deadline)
            retry_on = rules.retry_on if asked.retry_on is None else RetryOn.parse(asked.retry_on.split(","))
            max_retries = rules.attempts
            if asked.max_retries is not None:
                max_retries = asked.max_retries
            elif asked.retry_on is not None and max_retries == 0:
                max_retries = 1   # as Envoy: asking what to retry on, without a count, means one retry
        if timeout <= 0:
            raise DeadlineExceeded(f"the caller's deadline had passed before the request to {name.service} was sent",
                                   {"service": name.service, "timeout": "caller"})
        try_timeout = deadline.try_timeout(rules.per_try_timeout, max_retries, timeout)
        decision = dest.breaker.admit()
        if decision.admission is Admission.GO:
            return self._start(dest, peers, head, name, endpoints, retry_on, max_retries, timeout, try_timeout,
                               now, now)
        if decision.admission is Admission.REJECT:
            assert decision.cap is not None
            raise dest.refusal(decision.cap)
        loop = asyncio.get_running_loop()
        future = dest.enqueue(now + timeout, loop)
        return self._queued(future, dest, peers, head, name, retry_on, max_retries, timeout, try_timeout, now, loop)

    async def _queued(self, future: asyncio.Future[None], dest: Destination, peers: Peers, head: RequestHead,
                      name: ServiceName, retry_on: RetryOn, max_retries: int, timeout: float,
                      try_timeout: float | None, started: float, loop: asyncio.AbstractEventLoop) -> Target:
        try:
            await future
        except asyncio.CancelledError:
            dest.abandon(future)
            raise
        now = loop.time()
        endpoints = peers.endpoints(name)
        if not endpoints.usable:
            dest.breaker.connection_done()
            dest.breaker.request_done()
            dest.slot_freed()
            raise endpoints.no_endpoint()
        return self._start(dest, peers, head, name, endpoints, retry_on, max_retries, timeout, try_timeout,
                           started, now)

    def _start(self, dest: Destination, peers: Peers, head: RequestHead, name: ServiceName, endpoints: EndpointSet,
               retry_on: RetryOn, max_retries: int, timeout: float, try_timeout: float | None, started: float,
               now: float) -> Target:
        dest.requests += 1
        dest.budget.deposit(now)
        call = Call(dest, peers, name, head, retry_on, max_retries, timeout, try_timeout, started)
        head.headers.items.append((deadline.HEADER, deadline.HEADER, deadline.to_header(
            deadline.per_try(call.deadline - now, try_timeout))))
        return call.begin(dest.choose(endpoints, now), 1)

    def request_done(self, call: Call) -> None:
        call.finish()

    # ------------------------------------------------------------------------------------ tunnels

    def tunnel(self, name: ServiceName, peers: Peers, now: float) -> Target:
        """The Target of a TCP tunnel: the same host choice, no retries (bytes may already have gone)."""
        endpoints = peers.endpoints(name)
        if not endpoints.usable:
            raise endpoints.no_endpoint()
        return peers.target(self.destination(name.service, now).choose(endpoints, now).endpoint)

    def tunnel_done(self, stats: RelayStats, now: float) -> None:
        """A tunnel ended: a connect failure counts against its host, anything else for it."""
        endpoint = stats.tag
        if not isinstance(endpoint, Endpoint):
            return
        dest = self.destinations.get(endpoint.service)
        host = None if dest is None else dest.hosts.get((endpoint.instance, endpoint.address))
        if dest is None or host is None:
            return
        host.requests += 1
        if stats.error is not None and stats.error.startswith("connect-failure"):
            host.failures += 1
            dest._outlier_event(host, dest.outlier.failure(host.key, now), now)
        else:
            dest.outlier.success(host.key, now)

    # ------------------------------------------------------------------------------------ inbound

    def inbound(self, head: RequestHead, target: Target, service: str) -> Target:
        """The local app's Target with the deadline this hop honours: the caller's remaining time (from
        ``x-sidecar-deadline-ms``), never more than the local policy's ``timeout`` for the service. The app is
        handed the value in the same header."""
        policy = self._inbound_timeouts.get(service)
        if policy is None:
            policy = self._inbound_timeouts[service] = float(self.config.policy_for(service).timeout)
        caller: float | None = None
        items = head.headers.items
        found = None
        count = 0
        for item in items:
            if item[0] == deadline.HEADER:
                found = item
                count += 1
                parsed = deadline.parse(item[2])
                if parsed is not None:
                    caller = parsed if caller is None else min(caller, parsed)
        if caller is None:
            return self._derived(target, policy)
        timeout = deadline.effective(policy, caller)
        if timeout <= 0:
            raise DeadlineExceeded(f"the caller's deadline had passed when the request for {service} arrived",
                                   {"service": service, "timeout": "caller"})
        # every caller's field out, ours at the end; usually that is the one field, already last and right
        value = deadline.to_header(timeout)
        if count != 1 or found is None:
            items = head.headers.items = [item for item in items if item[0] != deadline.HEADER]
            items.append((deadline.HEADER, deadline.HEADER, value))
        elif found is not items[-1] or found[2] != value:
            items.remove(found)
            items.append((deadline.HEADER, deadline.HEADER, value))
        return self._derived(target, timeout)

    def _derived(self, target: Target, timeout: float) -> Target:
        """``target`` with ``timeout``, made once per (target, timeout): a caller's deadline in whole milliseconds
        repeats (it is the caller's per-try timeout while its sidecar is not retrying). Keyed by identity, the
        Target kept in the value (a Target's own hash runs over every field, in Python)."""
        key = (id(target), timeout)
        cached = self._inbound.get(key)
        if cached is not None and cached[0] is target:
            return cached[1]
        if len(self._inbound) >= 1024:
            self._inbound.clear()
        derived = target.derive(timeout, target.try_timeout, target.retry, target.observer, target.tag)
        self._inbound[key] = (target, derived)
        return derived

    # ------------------------------------------------------------------------------------ views

    def clusters_json(self, now: float, wall_offset: float,
                      endpoints_of: Callable[[str], EndpointSet] | None = None) -> dict[str, Any]:
        """Per destination service used so far: hosts (refreshed from ``endpoints_of`` when given), caps,
        budget and counters. ``wall_offset`` = wall clock - loop clock, for ejection end times."""
        out: dict[str, Any] = {}
        for service in sorted(self.destinations):
            dest = self.destinations[service]
            if endpoints_of is not None:
                dest.hosts_of(endpoints_of(service), now)
            out[service] = dest.snapshot(now, wall_offset)
        return out

    def samples(self, now: float) -> list[tuple[str, dict[str, str], float]]:
        """Counters and gauges for the metrics exporter: ``(name, labels, value)``; names end in ``_total``
        for counters."""
        out: list[tuple[str, dict[str, str], float]] = []
        for service in sorted(self.destinations):
            dest = self.destinations[service]
            labels = {"service": service}
            out.append(("sidecar_upstream_requests_total", labels, float(dest.requests)))
            out.append(("sidecar_upstream_retries_total", labels, float(dest.retries)))
            for reason, n in sorted(dest.retries_denied.items()):
                out.append(("sidecar_upstream_retries_denied_total", {**labels, "reason": reason}, float(n)))
            for cap in Cap:
                out.append(("sidecar_upstream_overflow_total", {**labels, "cap": cap.value},
                            float(dest.breaker.rejected[cap])))
            out.append(("sidecar_upstream_ejections_total", labels, float(dest.outlier.ejections)))
            out.append(("sidecar_upstream_ejections_refused_total", labels, float(dest.outlier.refusals)))
            out.append(("sidecar_upstream_panic_total", labels, float(dest.panics)))
            out.append(("sidecar_upstream_ejected_hosts", labels, float(dest.outlier.ejected_count(now))))
            breaker = dest.breaker
            for resource, value in (("connections", breaker.connections), ("pending", breaker.pending),
                                    ("requests", breaker.requests), ("retries", breaker.retries)):
                out.append(("sidecar_upstream_active", {**labels, "resource": resource}, float(value)))
            out.append(("sidecar_upstream_retry_budget_available", labels, dest.budget.state(now).available))
        return out
