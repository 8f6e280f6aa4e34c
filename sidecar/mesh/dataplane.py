"""The mesh data plane: the app's outbound traffic to peer sidecars over mTLS, and peers' traffic to our apps.

    dataplane = DataPlane(config, catalog, registry, store, clock)   # store: IdentityStore, or None without tls
    bound = await dataplane.start()      # {"outbound": HostPort, "inbound": HostPort, "upstream:SERVICE": HostPort}
    ...
    await dataplane.stop(grace=5.0)

The stack, top-down (each part is its own module):

* listeners: ``outbound.listen`` (plain HTTP from the local app, routed by Host or absolute-form URI), one per
  ``upstreams`` entry (``protocol: http``: every request goes to that service; ``protocol: tcp``: raw bytes
  through a tunnel), and ``inbound.listen`` (:mod:`sidecar.mesh.inbound`, mTLS only);
* naming (:mod:`sidecar.mesh.naming`): which service a Host names;
* router (:mod:`sidecar.mesh.router`): the instances, and so the peer sidecars, that may get the request;
* resilience (:mod:`sidecar.resilience`): per destination service, the deadline (sent on in
  ``x-sidecar-deadline-ms``), resource caps, the pick among the instances (healthy before degraded, ejected
  outliers left out, then round robin, least request or peak EWMA), retries with back-off and a budget; every
  request carries a :class:`~sidecar.resilience.Call` (the Targets' ``retry``, ``observer`` and ``tag``);
  inbound, the caller's deadline caps how long the local app is waited for;
* a :class:`~sidecar.proxy.Target` per endpoint, cached until the catalog or our TLS context changes: the peer's
  inbound address, ``store.client_context`` (new connections pick up a rotated certificate), a per-peer
  ``server_hostname`` (the TLS session cache key), the destination's policy timeouts, a pool per peer;
* the engine (:mod:`sidecar.proxy`): pooled keep-alive connections, streaming, upgrades, trace headers.

An instance on this node is reached through our own inbound listener, like any other: identity,
authorization and metrics do not depend on where the instance runs (it costs a loopback TLS hop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.model import Config, UpstreamConfig
from sidecar.config.values import HostPort
from sidecar.errors import Unavailable
from sidecar.mesh.authorization import Authorizer
from sidecar.mesh.inbound import (
    Decisions,
    InboundListener,
    InboundRoutes,
    LocalApp,
    LocalServices,
    Names,
    encode_tunnel_header,
    no_service_named,
    refuse_internal,
    set_caller,
)
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet, LocalInbound, Router
from sidecar.mesh.stats import MeshStats
from sidecar.proxy import (
    AttemptRecord,
    ConnectionInfo,
    HttpProxy,
    IdSource,
    Pools,
    ProxyLimits,
    RelayStats,
    RequestHead,
    RequestStats,
    Target,
    TcpRelay,
)
from sidecar.proxy.limits import DEFAULT_POOL_LIMITS, DEFAULT_PROXY_LIMITS
from sidecar.proxy.target import RouteResult
from sidecar.resilience import Call, Resilience, deadline
from sidecar.tls.context import service_server_name
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reloader import IdentityStore

log = logging.getLogger("sidecar.mesh")

# how long before a peer's inbound idle timeout our pool closes an idle connection to it (we close first, so a
# request never lands on a connection the peer is closing)
PEER_IDLE_MARGIN = 10.0
NO_TLS_MESSAGE = "mTLS is not configured (no tls section): this sidecar carries no traffic between services"


def _no_tls() -> Unavailable:
    # a new error each time: raising one shared instance again and again chains every raise's traceback onto
    # it, and with them the frames of every refused request (about 6 KiB each, never freed)
    return Unavailable(NO_TLS_MESSAGE, {"reason": "no-tls"})


class _Targets:
    """Targets to peer sidecars, one per endpoint, kept until the catalog snapshot or our context changes.

    Pools are keyed by (kind, peer address, service, context generation): after a rotation new connections use new
    pools (a TLS session made with one context cannot be offered by another); the old pools' idle
    connections are closed by the pool sweeper, and requests on them finish undisturbed.
    """

    __slots__ = ("_config", "_context", "_generation", "_peer_check", "_targets", "_version", "kind")

    def __init__(self, config: Config, kind: str,
                 peer_check: Callable[[Endpoint], Callable[[ssl.SSLObject], object]] | None = None) -> None:
        self._config = config
        self._peer_check = peer_check
        self.kind = kind
        self._version = -1
        self._context: ssl.SSLContext | None = None
        self._generation = 0
        # by the Endpoint's identity (its dataclass hash runs in Python, on every request); the Endpoint is kept in
        # the value, so its id is not reused while the entry lives. Within one catalog version the router hands
        # out the same Endpoint objects; an equal copy only costs a second Target on the same pool.
        self._targets: dict[int, tuple[Endpoint, Target]] = {}

    def get(self, endpoint: Endpoint, version: int, context: ssl.SSLContext) -> Target:
        if version != self._version or context is not self._context:
            if context is not self._context:
                self._generation += 1
                self._context = context
            self._version = version
            self._targets = {}
        entry = self._targets.get(id(endpoint))
        if entry is not None and entry[0] is endpoint:
            return entry[1]
        if len(self._targets) >= 4096:
            self._targets = {}
        target = self._build(endpoint, context)
        self._targets[id(endpoint)] = (endpoint, target)
        return target

    def reconfigure(self, config: Config) -> None:
        """Reloaded policies: Targets are rebuilt on next use with the new timeouts; pool keys do not change, so
        pooled connections to peers are kept."""
        self._config = config
        self._version = -1

    def _build(self, endpoint: Endpoint, context: ssl.SSLContext) -> Target:
        policy = self._config.policy_for(endpoint.service)
        timeout = float(policy.timeout)
        per_try = policy.retries.per_try_timeout
        try_timeout = deadline.try_timeout(None if per_try is None else float(per_try), policy.retries.attempts,
                                           timeout)
        host, port = endpoint.address
        # the SNI asks the peer for the destination service's certificate, and the pool is per service: a
        # connection verified as service A is never reused for service B on the same peer
        return Target(endpoint.address, ssl=context, server_hostname=service_server_name(endpoint.service, host, port),
                      pool_key=(self.kind, endpoint.address, endpoint.service, self._generation), timeout=timeout,
                      try_timeout=try_timeout, tag=endpoint,
                      verify=self._peer_check(endpoint) if self._peer_check is not None else None)


class _Peers:
    """What the resilience layers ask of the data plane: a name's endpoints now, an endpoint's Target."""

    __slots__ = ("_catalog", "_context", "_router", "_targets")

    def __init__(self, catalog: MeshCatalog, router: Router, targets: _Targets,
                 context: Callable[[], ssl.SSLContext]) -> None:
        self._catalog = catalog
        self._router = router
        self._targets = targets
        self._context = context

    def endpoints(self, name: ServiceName) -> EndpointSet:
        return self._router.endpoints(self._catalog.snapshot(), name)

    def target(self, endpoint: Endpoint) -> Target:
        return self._targets.get(endpoint, self._catalog.snapshot().version, self._context())


class DataPlane:
    """Every data-plane listener of one sidecar, built from the config; see the module's doc.

    ``rng`` drives the balancers and the back-off jitter (seed it in tests); ``jitter`` 0 makes back-off exact.
    """

    def __init__(self, config: Config, catalog: MeshCatalog, registry: LocalRegistry, store: IdentityStore | None,
                 clock: Clock, *, limits: ProxyLimits = DEFAULT_PROXY_LIMITS, ids: IdSource | None = None,
                 rng: random.Random | None = None, jitter: float = 1.0) -> None:
        self.config = config
        self.catalog = catalog
        self.registry = registry
        self.store = store
        self.clock = clock
        self.stats = MeshStats()
        # told of every finished request: (listener, stats); keep it to appends and counters (hot path)
        self.request_listeners: list[Callable[[str, RequestStats], None]] = []
        # told of outbound and upstream requests that failed (no answer, >= 400, an error) or were retried:
        # (listener, service, stats, the Call's notes: (AttemptRecord, Endpoint) per notable try)
        self.failure_listeners: list[Callable[[str, str, RequestStats, Sequence[tuple[AttemptRecord, Endpoint]]],
                                              None]] = []
        self.names = Names(config.dns.domain)
        self.router = Router()
        # connections to peer sidecars stay pooled until just before the peer's inbound would close them (it runs
        # the same idle timeout), so a quiet spell of a few seconds does not cost a burst of TLS handshakes
        peer_idle = max(1.0, limits.idle_timeout - PEER_IDLE_MARGIN)
        self.pools = Pools(replace(DEFAULT_POOL_LIMITS, idle_timeout=peer_idle), head_limits=limits.head)
        self._http_targets = _Targets(config, "http", self._peer_check)
        self._tunnel_targets = _Targets(config, "tunnel", self._peer_check)
        self.resilience = Resilience(config, rng=rng, jitter=jitter)
        self._now: Callable[[], float] = clock.monotonic   # the loop's clock once started (the engine's)
        self._http_peers = _Peers(catalog, self.router, self._http_targets, self._client_context)
        self._tunnel_peers = _Peers(catalog, self.router, self._tunnel_targets, self._tunnel_context)
        ids = ids if ids is not None else IdSource(sample_ratio=config.telemetry.tracing.sample_ratio)
        self.ids = ids
        self._limits = limits
        self.outbound = HttpProxy(self._route_outbound, name="outbound", limits=limits, pools=self.pools,
                                  on_request_done=self._outbound_done, ids=ids, h2c=True)
        self.upstreams: dict[str, HttpProxy | TcpRelay] = {}
        self._upstream_configs: dict[str, UpstreamConfig] = {}
        self._upstream_servers: dict[str, asyncio.Server] = {}
        self._draining: set[asyncio.Task[None]] = set()
        for upstream in config.upstreams:
            key = self._upstream_key(upstream)
            self.upstreams[key] = self._upstream(upstream, limits, ids)
            self._upstream_configs[key] = upstream
        self.inbound: InboundListener | None = None
        self.local = LocalServices(registry)
        if store is not None:
            self.routes = InboundRoutes(store, self.local, Decisions(Authorizer(config.authorization)),
                                        self.names, self.stats)
            http = HttpProxy(self._route_inbound, name="inbound", limits=limits, on_request_done=self._inbound_done,
                             ids=ids)
            tunnels = TcpRelay(self.routes.tunnel, name="inbound-tcp", limits=limits,
                               on_connection_done=self._inbound_tunnel_done)
            self.inbound = InboundListener(store, http, tunnels, clock)
        self.bound: dict[str, HostPort] = {}

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> dict[str, HostPort]:
        """Open every listener; returns the bound addresses. Without tls, inbound is not opened (SPEC).

        When ``inbound.listen`` has port 0 and no ``inbound.advertise`` is set, the catalog's entry for this
        node is updated with the bound port, so that peers learn where to dial.
        """
        self._now = asyncio.get_running_loop().time
        if self.inbound is not None:
            listen = self.config.inbound.listen
            host, port = await self.inbound.start(listen.host, listen.port)
            self.bound["inbound"] = HostPort(host, port)
            dial_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
            self.router.set_local(LocalInbound(self.catalog.local_node.name, (dial_host, port)))
            local = self.catalog.local_node
            if self.config.inbound.advertise is None and local.inbound_port != port:
                self.catalog.set_local_node(replace(local, inbound_port=port))
        else:
            log.warning("tls is not configured: the outbound listener answers 503 and no inbound listener is opened")
        listen = self.config.outbound.listen
        self.bound["outbound"] = _bound(await self.outbound.listen(listen.host, listen.port))
        for key, upstream in self._upstream_configs.items():
            server = self._upstream_servers[key] = await self.upstreams[key].listen(upstream.bind, upstream.local_port)
            self.bound[key] = _bound(server)
        return dict(self.bound)

    async def stop_inbound(self, grace: float) -> None:
        """Shutdown's first step: peers fail over to other instances while this app's own calls still go out."""
        if self.inbound is not None:
            try:
                await self.inbound.close(grace)
            except Exception as e:
                log.warning("inbound listener did not close cleanly: %r", e)
            self.inbound = None

    async def stop(self, grace: float) -> None:
        """Stop accepting everywhere, let requests in flight end within ``grace`` seconds, cut the rest."""
        await self.stop_inbound(grace)
        closing: list[Any] = [self.outbound.close(grace)]
        for proxy in self.upstreams.values():
            closing.append(proxy.close(grace) if isinstance(proxy, HttpProxy) else proxy.close())
        closing.extend(self._draining)   # upstreams a reload removed, still finishing their requests
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("data plane listener did not close cleanly: %r", result)
        self.pools.close()

    # ------------------------------------------------------------------------------------ reload

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's policies, authorization rules and trace sample ratio, from the next request
        on. Only references are swapped (nothing is added per request); listeners, open connections, pooled
        connections to peers and what the resilience layers learnt (ejections, latency) are kept. Upstream
        listeners change through :meth:`set_upstreams`."""
        self.config = config
        self._http_targets.reconfigure(config)
        self._tunnel_targets.reconfigure(config)
        self.resilience.reconfigure(config)
        if self.store is not None:
            self.routes.decisions = Decisions(Authorizer(config.authorization))
        self.ids.set_sample_ratio(config.telemetry.tracing.sample_ratio)

    async def set_upstreams(self, upstreams: Sequence[UpstreamConfig], grace: float,
                            setup: Callable[[HttpProxy | TcpRelay], None] | None = None) -> UpstreamChange:
        """Open the listeners of new ``upstreams`` entries and close those of removed ones; unchanged entries keep
        theirs, with their connections.

        All or nothing: new addresses are opened first, and if one cannot be (a port in use) what was opened
        is closed again and OSError raised, nothing changed. An entry replaced on its own address (another
        service or protocol on the port) is closed just before its successor opens (reopened if that fails).
        Removed listeners stop accepting at once; their requests in flight (tunnels: their connections) get
        ``grace`` seconds, in the background. ``setup`` is given each new proxy before it listens.
        """
        held = dict(self._upstream_configs)
        removed = [key for key, upstream in held.items() if upstream not in upstreams]
        added = [upstream for upstream in upstreams if upstream not in held.values()]
        freed = {(held[key].bind, held[key].local_port): key for key in removed}
        opened: list[str] = []
        displaced: dict[str, HttpProxy | TcpRelay] = {}
        try:
            for upstream in sorted(added, key=lambda u: (u.bind, u.local_port) in freed):  # new addresses first
                old = freed.get((upstream.bind, upstream.local_port))
                if old is not None:
                    displaced[old] = self._detach_upstream(old)
                opened.append(await self._open_upstream(upstream, setup, retry=old is not None))
        except OSError:
            for key in opened:
                self._drain_later(self._detach_upstream(key), 0.0)
            for key, proxy in displaced.items():   # put back what was closed to make room
                self._drain_later(proxy, grace)
                try:
                    await self._open_upstream(held[key], setup, key, retry=True)
                except OSError as e:
                    log.error("an upstream listener could not be reopened after a failed reload: %s", e.strerror)
            raise
        for key in removed:
            self._drain_later(displaced.pop(key) if key in displaced else self._detach_upstream(key), grace)
        return UpstreamChange({key: self.bound[key] for key in opened}, sorted(removed))

    async def _open_upstream(self, upstream: UpstreamConfig, setup: Callable[[HttpProxy | TcpRelay], None] | None,
                             key: str | None = None, retry: bool = False) -> str:
        if key is None:
            key = self._upstream_key(upstream)
        proxy = self._upstream(upstream, self._limits, self.ids)
        if setup is not None:
            setup(proxy)
        server = await _listen(proxy, upstream, attempts=50 if retry else 1)
        self.upstreams[key] = proxy
        self._upstream_configs[key] = upstream
        self._upstream_servers[key] = server
        self.bound[key] = _bound(server)
        return key

    def _upstream_key(self, upstream: UpstreamConfig) -> str:
        """``upstream:SERVICE``, or ``upstream:SERVICE:PORT`` when the service already has a listener."""
        key = f"upstream:{upstream.service}"
        return f"{key}:{upstream.local_port}" if key in self.upstreams else key

    def _detach_upstream(self, key: str) -> HttpProxy | TcpRelay:
        """Stop accepting on ``key`` now; the proxy, with its connections, is returned to be drained."""
        proxy = self.upstreams.pop(key)
        del self._upstream_configs[key]
        self._upstream_servers.pop(key).close()
        self.bound.pop(key, None)
        return proxy

    def _drain_later(self, proxy: HttpProxy | TcpRelay, grace: float) -> None:
        task = asyncio.create_task(_drain(proxy, grace), name=f"drain:{proxy.name}")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    # ------------------------------------------------------------------------------------ outbound

    def _route_outbound(self, head: RequestHead, conn: ConnectionInfo) -> RouteResult:
        if self.store is None:
            raise _no_tls()
        name = self.names.parse(head.host)
        if name is None:
            raise no_service_named(head.host)
        refuse_internal(head)
        set_caller(head, None)  # only the destination's sidecar says who calls
        return self.resilience.outbound(head, name, self._http_peers, self._now())

    def _client_context(self) -> ssl.SSLContext:
        assert self.store is not None
        return self.store.client_context

    def _tunnel_context(self) -> ssl.SSLContext:
        assert self.store is not None
        return self.store.tunnel_context

    def _route_inbound(self, head: RequestHead, conn: ConnectionInfo) -> Target:
        target = self.routes.http(head, conn)
        tag = target.tag
        return self.resilience.inbound(head, target, tag.service) if isinstance(tag, LocalApp) else target

    def _peer_check(self, endpoint: Endpoint) -> Callable[[ssl.SSLObject], object]:
        """What the sidecar at ``endpoint`` must prove on each new connection (SPEC: Identity): the SPIFFE ID of
        the destination service itself, in our trust domain. The catalog says where a service may be, never who
        may answer for it: a member that announces a service it holds no certificate for gets no traffic."""
        store = self.store
        assert store is not None  # only peers of a sidecar with tls are dialled
        service = endpoint.service

        def check(ssl_object: ssl.SSLObject) -> PeerIdentity:
            return store.verify_peer(ssl_object, expected_service=service)

        return check

    def _upstream(self, upstream: UpstreamConfig, limits: ProxyLimits, ids: IdSource | None) -> HttpProxy | TcpRelay:
        name = ServiceName(upstream.service)
        if upstream.protocol == "tcp":
            header = encode_tunnel_header(name)

            def connect(info: ConnectionInfo) -> Target:
                if self.store is None:
                    raise _no_tls()
                return self.resilience.tunnel(name, self._tunnel_peers, self._now())

            def tunnel_done(stats: RelayStats) -> None:
                self.resilience.tunnel_done(stats, self._now())
                self.stats.tunnel("upstream", name.service, stats)

            return TcpRelay(connect, name=f"upstream:{name.service}", limits=limits,
                            on_connection_done=tunnel_done, preamble=lambda target, info: header)

        def route(head: RequestHead, conn: ConnectionInfo) -> RouteResult:
            if self.store is None:
                raise _no_tls()
            head.host = name.service  # the peer's inbound finds the service by Host
            refuse_internal(head)
            set_caller(head, None)
            return self.resilience.outbound(head, name, self._http_peers, self._now())

        def done(stats: RequestStats) -> None:
            call = stats.tag
            self._settle(stats)
            self._count("upstream", name.service, stats)
            if self.failure_listeners:
                self._failed("upstream", name.service, stats, call)

        return HttpProxy(route, name=f"upstream:{name.service}", limits=limits, pools=self.pools,
                         on_request_done=done, ids=ids, h2c=True)

    # ------------------------------------------------------------------------------------ accounting

    def _settle(self, stats: RequestStats) -> None:
        """Release what the request's Call held; listeners see the last attempt's Endpoint as the tag (set in
        place: the record is ours, see RequestStats)."""
        call = stats.tag
        if isinstance(call, Call):
            self.resilience.request_done(call)
            stats.tag = call.endpoint

    def _outbound_done(self, stats: RequestStats) -> None:
        call = stats.tag
        self._settle(stats)
        tag = stats.tag
        if isinstance(call, Call):
            service = call.service
        elif isinstance(tag, Endpoint):
            service = tag.service
        else:
            name = self.names.parse(stats.host)
            known = name is not None and self.router.endpoints(self.catalog.snapshot(), name).total > 0
            service = name.service if known and name is not None else "unknown"
        self._count("outbound", service, stats)
        if self.failure_listeners:
            self._failed("outbound", service, stats, call)

    def _failed(self, listener: str, service: str, stats: RequestStats, call: object) -> None:
        notes = call.notes if isinstance(call, Call) else None
        if notes or stats.status == 0 or stats.status >= 400 or stats.error is not None:
            for listener_fn in self.failure_listeners:
                listener_fn(listener, service, stats, notes or ())

    def _inbound_done(self, stats: RequestStats) -> None:
        tag = stats.tag
        if isinstance(tag, LocalApp):
            service = tag.service
        else:
            name = self.names.parse(stats.host)
            service = name.service if name is not None and self.local.known(name.service) else "unknown"
        self._count("inbound", service, stats)

    def _inbound_tunnel_done(self, stats: RelayStats) -> None:
        tag = stats.tag
        self.stats.tunnel("inbound", tag.service if isinstance(tag, LocalApp) else "unknown", stats)

    def _count(self, listener: str, service: str, stats: RequestStats) -> None:
        if self.store is None and stats.status == 503:
            self.stats.no_tls += 1
        self.stats.request(listener, service, stats)
        for listener_fn in self.request_listeners:
            listener_fn(listener, stats)

    # ------------------------------------------------------------------------------------ views

    def clusters_json(self) -> dict[str, Any]:
        """GET /clusters: per upstream service used so far, its instances (address, node, health, ejection,
        in flight, latency EWMA, requests, failures), resource caps with their rejections, the retry budget."""
        now = self._now()
        snapshot = self.catalog.snapshot()
        return self.resilience.clusters_json(now, self.clock.wall() - now,
                                             lambda service: self.router.endpoints(snapshot, ServiceName(service)))

    def resilience_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """For /metrics: ``(name, labels, value)`` per destination service; names ending in ``_total`` are
        counters (requests, retries, retries denied by reason, overflows by cap, ejections, panics), the rest gauges
        (resources in use by kind, ejected hosts, retry budget left)."""
        return self.resilience.samples(self._now())

    def status(self) -> dict[str, Any]:
        """For the admin port: listeners, counters, pools to peers."""
        pools = [{"key": repr(pool.key), "idle": pool.idle, "busy": pool.busy, "dialed": pool.dialed}
                 for pool in self.pools]
        out: dict[str, Any] = {"listeners": {k: str(v) for k, v in self.bound.items()}, "stats": self.stats.snapshot(),
                               "pools": pools}
        if self.inbound is not None:
            out["inbound"] = {"handshakes": dict(self.inbound.handshakes), "refused": self.inbound.refused,
                              "shed": self.inbound.shed, "tunnel_refused": self.inbound.tunnel_refused}
        if self.store is not None:
            out["tls_refusals"] = self.store.refusals.snapshot()
        return out


@dataclass(frozen=True, slots=True)
class UpstreamChange:
    """What :meth:`DataPlane.set_upstreams` did: listeners opened (key → bound address), keys closed."""

    opened: dict[str, HostPort]
    closed: list[str]


async def _listen(proxy: HttpProxy | TcpRelay, upstream: UpstreamConfig, attempts: int) -> asyncio.Server:
    """Listen on the upstream's port. A port this process just released may take a loop iteration or two to be
    free (uvloop closes handles asynchronously): ``attempts`` > 1 tries "address in use" again, 20ms apart."""
    for attempt in range(attempts):
        try:
            return await proxy.listen(upstream.bind, upstream.local_port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise OSError(e.errno, f"upstreams[{upstream.local_port}]: cannot listen on "
                                       f"{upstream.bind}:{upstream.local_port}: {e.strerror or e}") from None
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def _drain(proxy: HttpProxy | TcpRelay, grace: float) -> None:
    """A removed upstream listener: requests in flight (tunnels: connections) may end within ``grace``."""
    if isinstance(proxy, HttpProxy):
        await proxy.close(grace)
        return
    for _ in range(math.ceil(grace / 0.05)):   # polled: a relay tells no one when its last connection ends
        if not proxy.connections:
            break
        await asyncio.sleep(0.05)
    await proxy.close()


def _bound(server: asyncio.Server) -> HostPort:
    listening: Any = server  # typeshed says Server.sockets is a tuple; uvloop's is a list (compiled code checks)
    address = listening.sockets[0].getsockname()
    return HostPort(str(address[0]), int(address[1]))
