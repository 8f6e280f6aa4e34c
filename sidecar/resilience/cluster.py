"""A cluster, in Envoy's sense: one destination service's state, shared by every request to it. The resource
caps and the queue for a connection slot (:mod:`.breaker`), the retry budget (:mod:`.budget`), the outlier
records (:mod:`.outlier`), the balancer (:mod:`.balancer`), and its endpoints with their load and connection
readiness (:class:`ClusterEndpoint`, :mod:`.readiness`); and the endpoint pick over them.

Times are the event loop's clock, passed in.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import Collection, Sequence
from typing import Any

from sidecar.config.model import PolicyConfig
from sidecar.errors import DeadlineExceeded, ResourceExhausted
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy import AttemptRecord, FailureKind
from sidecar.resilience.balancer import Load, make_balancer
from sidecar.resilience.breaker import Admission, Breaker, Cap, ResourceCaps
from sidecar.resilience.budget import RetryBudget
from sidecar.resilience.outlier import Ejected, EjectionRefused, EjectionRules, OutlierDetector
from sidecar.resilience.readiness import Readiness
from sidecar.resilience.rules import GATEWAY_ERRORS, GRPC_GATEWAY_ERRORS, RetryRules

log = logging.getLogger("sidecar.resilience")


EndpointKey = tuple[str, tuple[str, int]]   # (instance id, inbound address)


# the tiers of ``Cluster.candidates``
HEALTHY, DEGRADED, HELD, PANIC = "healthy", "degraded", "held", "panic"


class ClusterEndpoint:
    """One endpoint of a cluster with the state the layers keep for it (load, readiness, counts); ``endpoint`` is
    the latest catalog view of it (:class:`sidecar.mesh.router.Endpoint`, the instance as dialed)."""

    __slots__ = ("endpoint", "failures", "key", "load", "readiness", "requests")

    def __init__(self, endpoint: Endpoint, now: float) -> None:
        self.endpoint = endpoint
        self.key: EndpointKey = (endpoint.instance, endpoint.address)
        self.load = Load(stamp=now)
        self.readiness = Readiness()
        self.requests = 0     # attempts sent
        self.failures = 0     # attempts that failed (gateway error or local failure)

    def __repr__(self) -> str:
        return f"<ClusterEndpoint {self.endpoint.service} {self.endpoint.authority}>"


class Cluster:
    """Every layer's state for one destination service: caps, budget, outlier records, balancer, endpoints
    (``hosts``, by :data:`EndpointKey`)."""

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
        self.breaker = Breaker(ResourceCaps(caps.max_connections, caps.max_pending_requests, caps.max_requests,
                                            caps.max_retries))
        od = policy.outlier_detection
        self.outlier = OutlierDetector(EjectionRules(od.consecutive_failures, float(od.interval),
                                                     float(od.base_ejection_time), float(od.max_ejection_time),
                                                     od.max_ejection_percent))
        self.balancer = make_balancer(policy.load_balancer, rng)
        self.hosts: dict[EndpointKey, ClusterEndpoint] = {}
        self._sets: dict[ServiceName, tuple[EndpointSet, tuple[ClusterEndpoint, ...], tuple[ClusterEndpoint, ...]]] = {}
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
        self.breaker.limits = ResourceCaps(caps.max_connections, caps.max_pending_requests, caps.max_requests,
                                           caps.max_retries)
        od = policy.outlier_detection
        self.outlier.rules = EjectionRules(od.consecutive_failures, float(od.interval), float(od.base_ejection_time),
                                           float(od.max_ejection_time), od.max_ejection_percent)
        if policy.load_balancer != old.load_balancer:
            self.balancer = make_balancer(policy.load_balancer, self.rng)
        self.slot_freed()   # a raised max_connections admits waiting requests now

    # ------------------------------------------------------------------------------------ hosts

    def hosts_of(self, endpoints: EndpointSet,
                 now: float) -> tuple[tuple[ClusterEndpoint, ...], tuple[ClusterEndpoint, ...]]:
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

    def _host(self, endpoint: Endpoint, now: float) -> ClusterEndpoint:
        key = (endpoint.instance, endpoint.address)
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = ClusterEndpoint(endpoint, now)
            self.outlier.add(key, now)
        else:
            host.endpoint = endpoint   # its health may have changed
        return host

    def _prune(self, present: set[EndpointKey], now: float) -> None:
        """Forget hosts that left the catalog (or turned unhealthy), unless something is still in flight there
        or they are ejected (a host that flaps in and out of the catalog keeps its ejection)."""
        for key, host in list(self.hosts.items()):
            if key not in present and host.load.in_flight == 0 and not self.outlier.is_ejected(key, now):
                del self.hosts[key]
                self.outlier.remove(key)

    def choose(self, endpoints: EndpointSet, now: float, avoid: Collection[ClusterEndpoint] = ()) -> ClusterEndpoint:
        """A host for one attempt. The first of: a healthy host, then a degraded one, that is neither ejected, nor
        held after a connect failure (:mod:`.readiness`), nor one of ``avoid`` (the hosts the request already
        tried); else, the hosts of the first of those tiers that has any not ejected, untried ones first; else
        (all ejected) any host, in panic.

        So a retry never goes back to a host that just failed while another one could take it, a degraded one
        included (Envoy's ``previous_hosts`` retry predicate, across priorities); and while the only healthy
        host refuses connections (its ejection may be refused by ``max_ejection_percent``), new requests go to
        the degraded ones instead of each costing a retry."""
        healthy, degraded = self.hosts_of(endpoints, now)
        if len(healthy) == 1 and not avoid:   # the common case, without the lists of ``candidates``
            only = healthy[0]
            if only.readiness.ready(now) and not self.outlier.is_ejected(only.key, now):
                return only
        tier, hosts = self.candidates(healthy, degraded, now, avoid)
        if tier == PANIC:
            self.panics += 1
        if len(hosts) == 1:
            return hosts[0]
        return self.balancer.pick(hosts, now)

    def candidates(self, healthy: Sequence[ClusterEndpoint], degraded: Sequence[ClusterEndpoint], now: float,
                   avoid: Collection[ClusterEndpoint] = ()) -> tuple[str, list[ClusterEndpoint]]:
        """The tier the balancer picks in and its hosts (``choose``'s rules, read by ``/debug/explain`` too):
        the first tier with a host neither ejected, nor held, nor tried; else the first with any not ejected
        (``HELD``: untried ones first); else every host (``PANIC``). Reads only: nothing is counted here."""
        outlier = self.outlier
        fallback: list[ClusterEndpoint] | None = None
        for name, tier in ((HEALTHY, healthy), (DEGRADED, degraded)):
            live = [h for h in tier if not outlier.is_ejected(h.key, now)]
            if not live:
                continue
            fresh = [h for h in live if h.readiness.ready(now) and h not in avoid]
            if fresh:
                return name, fresh
            if fallback is None:
                fallback = live
        if fallback is None:
            return PANIC, list(healthy or degraded)
        if avoid and len(fallback) > 1:
            untried = [h for h in fallback if h not in avoid]
            if untried:
                fallback = untried
        return HELD, fallback

    # ------------------------------------------------------------------------------------ results

    def attempt_ended(self, host: ClusterEndpoint, record: AttemptRecord) -> None:
        now = record.ended
        load = host.load
        load.in_flight -= 1
        failure = record.failure
        failed = failure is not None or record.status in GATEWAY_ERRORS or record.grpc_status in GRPC_GATEWAY_ERRORS
        if failed:
            # a failure says nothing good about a host: it may raise the estimate (a try that timed out counts its
            # whole wait), never lower it, else a host failing fast (a 503, a reset) would look fastest to the EWMA
            # balancer and draw the traffic; nor may it leave the estimate to decay as if the host were idle
            load.observe(max(record.latency, load.latency(now)), now)
            host.failures += 1
            if failure is not None and failure.kind is FailureKind.CONNECT_FAILURE:
                host.readiness.connect_failed(now)
            self._outlier_event(host, self.outlier.failure(host.key, now), now)
        else:
            if record.status is not None:
                load.observe(record.latency, now)
            self.outlier.success(host.key, now)
        if record.status is not None:
            host.readiness.connected()

    def tunnel_ended(self, host: ClusterEndpoint, connect_failed: bool, now: float) -> None:
        """A TCP tunnel through ``host`` ended: a connect failure counts against the host (and holds it), anything
        else for it."""
        host.requests += 1
        if connect_failed:
            host.failures += 1
            host.readiness.connect_failed(now)
            self._outlier_event(host, self.outlier.failure(host.key, now), now)
        else:
            host.readiness.connected()
            self.outlier.success(host.key, now)

    def _outlier_event(self, host: ClusterEndpoint, event: Ejected | EjectionRefused | None, now: float) -> None:
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
