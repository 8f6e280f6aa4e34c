"""The resilience layers composed for the mesh's traffic: :class:`Resilience`, the entry points the data plane's
routes call. Each layer is its own module; the order they meet a request is written once, in
:meth:`Resilience.outbound` and :meth:`Resilience._start`, top-down:

1. deadline (:mod:`.deadline`, :mod:`.rules`): the request's deadline is the policy's ``timeout``, shortened by
   a deadline the local app forwarded (``x-sidecar-deadline-ms``, a gRPC call's ``grpc-timeout``); the remaining
   time per try travels on in ``x-sidecar-deadline-ms`` (and in a rewritten ``grpc-timeout``);
2. resource caps (:mod:`.breaker`, queued in :mod:`.destination`): ``max_requests`` / ``max_connections`` /
   ``max_pending_requests`` admit, queue or refuse (429 RESOURCE_EXHAUSTED naming the cap) the request before
   anything is sent;
3. endpoint pick (:meth:`.cluster.Cluster.choose`): healthy hosts, else degraded ones; ejected hosts
   (:mod:`.outlier`) are left out unless all are ejected (then all are used, Envoy's *panic* routing: a lone
   host that fails is still tried rather than the service refused for the whole ejection time), and so, for a
   short hold, are hosts that could not be connected to (:mod:`.readiness`) while another can take the try;
   among them the balancer (:mod:`.balancer`) picks;
4. try: the engine sends the attempt to the picked host's Target, derived with the request's timeouts and its
   :class:`.retry.Call`;
5. retries (:class:`.retry.Call`, the engine's ``RetryPolicy``): ``retry_on``, ``attempts``, only requests safe
   to repeat, back-off with jitter (:mod:`.backoff`) within the deadline, ``max_retries`` outstanding, the retry
   budget (:mod:`.budget`), and another host than those tried when there is one, a degraded one rather than
   a healthy one already tried (step 3 again).

Every attempt's end (:meth:`.retry.Call.observe`, the Target observer) feeds the balancer's latency and
in-flight counts and the outlier detector; the request's end (:meth:`Resilience.request_done`) releases what it
held. The views of that state (``/clusters``, metrics) are :mod:`.views`.

Times are the event loop's clock (the engine's ``AttemptRecord`` times), passed in.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sidecar.config.model import Config
from sidecar.errors import DeadlineExceeded
from sidecar.http2.grpc import is_grpc, parse_timeout
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy import RelayStats, RequestHead, Target
from sidecar.resilience import deadline, views
from sidecar.resilience.breaker import Admission
from sidecar.resilience.cluster import Cluster
from sidecar.resilience.retry import Call, Peers
from sidecar.resilience.rules import NOTHING_ASKED, RetryOn, read_request_headers

_CONTENT_TYPE: Final = b"content-type"


class Resilience:
    """Per-destination state for one data plane, and the entry points its routes call.

    ``rng`` seeds the balancers and the back-off jitter (seeded in tests); ``jitter`` 0 makes back-off
    deterministic.
    """

    def __init__(self, config: Config, *, rng: random.Random | None = None, jitter: float = 1.0) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.jitter = jitter
        self.clusters: dict[str, Cluster] = {}
        self._inbound: dict[tuple[int, float], tuple[Target, Target]] = {}   # see _derived
        self._inbound_timeouts: dict[str, float] = {}

    def cluster(self, service: str, now: float) -> Cluster:
        dest = self.clusters.get(service)
        if dest is None:
            dest = self.clusters[service] = Cluster(service, self.config.policy_for(service), self.rng, now,
                                                    self.jitter)
        return dest

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's policies: every destination used so far takes its new policy in place
        (:meth:`Cluster.reconfigure`); destinations first used later are built from it."""
        self.config = config
        self._inbound.clear()
        self._inbound_timeouts.clear()
        for service, dest in self.clusters.items():
            dest.reconfigure(config.policy_for(service), self.jitter)

    # ------------------------------------------------------------------------------------ outbound

    def outbound(self, head: RequestHead, name: ServiceName, peers: Peers,
                 now: float) -> Target | Awaitable[Target]:
        """The first Target of a request to ``name`` (or an awaitable of it, when the request must wait for a
        connection slot); raises the error to answer with (NotFound, Unavailable, 429, 504)."""
        endpoints = peers.endpoints(name)
        if not endpoints.usable:
            raise endpoints.no_endpoint()   # before any state is made: unknown names cost nothing
        dest = self.cluster(name.service, now)
        # 1. deadline: the policy's, or what the request's headers ask for
        asked = read_request_headers(head)
        rules = dest.rules
        grpc_timeout = False
        if asked is NOTHING_ASKED:   # the common case: the policy as it is
            timeout = dest.timeout
            retry_on = rules.retry_on
            max_retries = rules.attempts
        else:
            grpc_timeout = asked.grpc_timeout
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
        # 2. resource caps: admitted now, refused, or queued for a connection slot until the deadline
        decision = dest.breaker.admit()
        if decision.admission is Admission.GO:
            return self._start(dest, peers, head, name, endpoints, retry_on, max_retries, timeout, try_timeout,
                               now, now, grpc_timeout)
        if decision.admission is Admission.REJECT:
            assert decision.cap is not None
            raise dest.refusal(decision.cap)
        loop = asyncio.get_running_loop()
        future = dest.enqueue(now + timeout, loop)
        return self._queued(future, dest, peers, head, name, retry_on, max_retries, timeout, try_timeout, now, loop,
                            grpc_timeout)

    async def _queued(self, future: asyncio.Future[None], dest: Cluster, peers: Peers, head: RequestHead,
                      name: ServiceName, retry_on: RetryOn, max_retries: int, timeout: float,
                      try_timeout: float | None, started: float, loop: asyncio.AbstractEventLoop,
                      grpc_timeout: bool) -> Target:
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
                           started, now, grpc_timeout)

    def _start(self, dest: Cluster, peers: Peers, head: RequestHead, name: ServiceName, endpoints: EndpointSet,
               retry_on: RetryOn, max_retries: int, timeout: float, try_timeout: float | None, started: float,
               now: float, grpc_timeout: bool = False) -> Target:
        dest.requests += 1
        dest.budget.deposit(now)
        call = Call(dest, peers, name, head, retry_on, max_retries, timeout, try_timeout, started)
        if grpc_timeout:
            call.grpc_timeout = True
            call.stamp_deadline(now)
        else:
            head.headers.items.append((deadline.HEADER, deadline.HEADER, deadline.to_header(
                deadline.per_try(call.deadline - now, try_timeout))))
        # 3. endpoint pick with outlier ejection, 4. the try, whose Target carries 5. the Call's retries
        return call.begin(dest.choose(endpoints, now), 1)

    def request_done(self, call: Call) -> None:
        call.finish()

    # ------------------------------------------------------------------------------------ tunnels

    def tunnel(self, name: ServiceName, peers: Peers, now: float) -> Target:
        """The Target of a TCP tunnel: the same host choice, no retries (bytes may already have gone)."""
        endpoints = peers.endpoints(name)
        if not endpoints.usable:
            raise endpoints.no_endpoint()
        return peers.target(self.cluster(name.service, now).choose(endpoints, now).endpoint)

    def tunnel_done(self, stats: RelayStats, now: float) -> None:
        """A tunnel ended: a connect failure counts against its host, anything else for it."""
        endpoint = stats.tag
        if not isinstance(endpoint, Endpoint):
            return
        dest = self.clusters.get(endpoint.service)
        host = None if dest is None else dest.hosts.get((endpoint.instance, endpoint.address))
        if dest is None or host is None:
            return
        dest.tunnel_ended(host, stats.error is not None and stats.error.startswith("connect-failure"), now)

    # ------------------------------------------------------------------------------------ inbound

    def inbound(self, head: RequestHead, target: Target, service: str) -> Target:
        """The local app's Target with the deadline this hop honours: the caller's remaining time (from
        ``x-sidecar-deadline-ms``, or a gRPC call's ``grpc-timeout``), never more than the local policy's
        ``timeout`` for the service. The app is handed the value in the same header, and a gRPC call's app in
        ``grpc-timeout`` too."""
        policy = self._inbound_timeouts.get(service)
        if policy is None:
            policy = self._inbound_timeouts[service] = float(self.config.policy_for(service).timeout)
        caller: float | None = None
        items = head.headers.items
        found = None
        found_at = -1
        count = 0
        grpc = False
        for i, item in enumerate(items):
            lname = item[0]
            if lname == deadline.HEADER:
                found = item
                found_at = i
                count += 1
                parsed = deadline.parse(item[2])
                if parsed is not None:
                    caller = parsed if caller is None else min(caller, parsed)
            elif lname == deadline.GRPC_TIMEOUT:
                grpc = True
                seconds = parse_timeout(item[2])
                caller = seconds if caller is None else min(caller, seconds)
            elif lname == _CONTENT_TYPE and not grpc:
                grpc = is_grpc(item[2])
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
            del items[found_at]   # by place: remove() would compare the fields before it, tuple by tuple
            items.append((deadline.HEADER, deadline.HEADER, value))
        if grpc:   # the app's gRPC server knows its deadline by grpc-timeout only
            head.headers.items = deadline.set_field(head.headers.items, deadline.GRPC_TIMEOUT,
                                                    deadline.to_grpc_timeout(timeout))
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
        """``/clusters``: see :func:`.views.clusters_json`."""
        return views.clusters_json(self.clusters, now, wall_offset, endpoints_of)

    def samples(self, now: float) -> list[tuple[str, dict[str, str], float]]:
        """The metrics exporter's samples: see :func:`.views.samples`."""
        return views.samples(self.clusters, now)
