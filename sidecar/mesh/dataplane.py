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
* a :class:`~sidecar.proxy.Target` per endpoint (:mod:`sidecar.mesh.peers`), cached until the catalog or our TLS
  context changes: the peer's inbound address, ``store.client_context`` (new connections pick up a rotated
  certificate), a per-peer ``server_hostname`` (the TLS session cache key), the destination's policy timeouts, a
  pool per peer;
* the engine (:mod:`sidecar.proxy`): pooled keep-alive connections, streaming, upgrades, trace headers.

An instance on this node is reached through our own inbound listener, like any other: identity,
authorization and metrics do not depend on where the instance runs (it costs a loopback TLS hop).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.model import Config, UpstreamConfig
from sidecar.config.values import HostPort
from sidecar.errors import Unavailable
from sidecar.http2.keepalive import KeepalivePolicy
from sidecar.mesh.authorization import Authorizer, Decisions
from sidecar.mesh.inbound import InboundListener
from sidecar.mesh.inbound_routes import InboundRoutes, no_service_named, refuse_internal, set_caller
from sidecar.mesh.local_apps import LocalApp, LocalServices
from sidecar.mesh.naming import Names, ServiceName
from sidecar.mesh.peers import CatalogPeers, PeerTargets
from sidecar.mesh.router import Endpoint, LocalInbound, Router
from sidecar.mesh.stats import MeshStats
from sidecar.mesh.tunnel_header import encode_tunnel_header
from sidecar.mesh.upstream_listeners import UpstreamChange, bound_address, drain_upstream, listen_upstream
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
from sidecar.resilience import Call, Resilience
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reloader import IdentityStore

log = logging.getLogger("sidecar.mesh")

# how long before a peer's inbound idle timeout our pool closes an idle connection to it (we close first, so a
# request never lands on a connection the peer is closing)
PEER_IDLE_MARGIN: Final = 10.0
NO_TLS_MESSAGE: Final = "mTLS is not configured (no tls section): this sidecar carries no traffic between services"


def _no_tls() -> Unavailable:
    # a new error each time: raising one shared instance again and again chains every raise's traceback onto
    # it, and with them the frames of every refused request (about 6 KiB each, never freed)
    return Unavailable(NO_TLS_MESSAGE, {"reason": "no-tls"})


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
        keepalive = config.outbound.http2.keepalive
        self.pools = Pools(replace(DEFAULT_POOL_LIMITS, idle_timeout=peer_idle), head_limits=limits.head,
                           keepalive=KeepalivePolicy(float(keepalive.interval), float(keepalive.timeout)))
        self._http_targets = PeerTargets(config, "http", self._peer_check)
        self._tunnel_targets = PeerTargets(config, "tunnel", self._peer_check)
        self.resilience = Resilience(config, rng=rng, jitter=jitter)
        self._now: Callable[[], float] = clock.monotonic   # the loop's clock once started (the engine's)
        self._http_peers = CatalogPeers(catalog, self.router, self._http_targets, self._client_context)
        self._tunnel_peers = CatalogPeers(catalog, self.router, self._tunnel_targets, self._tunnel_context)
        # requests that arrived over HTTP/2 (h2c clients, gRPC) go on over HTTP/2 to the peer; HTTP/1.1 ones over
        # HTTP/1.1, a path tuned for them (one request per connection at a time, no framing to translate)
        self._h2_targets = PeerTargets(config, "h2", self._peer_check, fallback=self._http_peers.target)
        self._h2_peers = CatalogPeers(catalog, self.router, self._h2_targets, self._h2_context)
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
            inbound_limits = replace(limits, max_concurrent_streams=config.inbound.http2.max_concurrent_streams)
            http = HttpProxy(self._route_inbound, name="inbound", limits=inbound_limits,
                             on_request_done=self._inbound_done, ids=ids)
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
        self.bound["outbound"] = bound_address(await self.outbound.listen(listen.host, listen.port))
        for key, upstream in self._upstream_configs.items():
            server = self._upstream_servers[key] = await self.upstreams[key].listen(upstream.bind, upstream.local_port)
            self.bound[key] = bound_address(server)
        return dict(self.bound)

    def drain_inbound(self) -> None:
        """The drain's signal to peers over HTTP/2: GOAWAY on their connections (SPEC: "closed with GOAWAY on
        drain"); streams in flight finish and the listener accepts until it closes."""
        if self.inbound is not None:
            self.inbound.drain()

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
        self._h2_targets.reconfigure(config)
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
        server = await listen_upstream(proxy, upstream, attempts=50 if retry else 1)
        self.upstreams[key] = proxy
        self._upstream_configs[key] = upstream
        self._upstream_servers[key] = server
        self.bound[key] = bound_address(server)
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
        task = asyncio.create_task(drain_upstream(proxy, grace), name=f"drain:{proxy.name}")
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
        return self.resilience.outbound(head, name, self._peers_for(head), self._now())

    def _peers_for(self, head: RequestHead) -> CatalogPeers:
        """HTTP/2 between the sidecars for a request that arrived over HTTP/2, HTTP/1.1 for the rest."""
        return self._h2_peers if head.version == "2" else self._http_peers

    def _client_context(self) -> ssl.SSLContext:
        assert self.store is not None
        return self.store.material.client_context   # read per request: the material, not the store's property

    def _h2_context(self) -> ssl.SSLContext:
        assert self.store is not None
        return self.store.h2_context

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
            return self.resilience.outbound(head, name, self._peers_for(head), self._now())

        def done(stats: RequestStats) -> None:
            call = stats.tag
            self._settle(stats)
            self._count("upstream", name.service, stats)
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
        self._failed("outbound", service, stats, call)

    def _failed(self, listener: str, service: str, stats: RequestStats, call: object) -> None:
        """Tell the failure listeners of a request that failed or was retried. The Call's notes are let go: each
        attempt's record holds its Target, which holds the Call (freed with the request, not by the collector)."""
        notes = None
        if isinstance(call, Call):
            notes, call.notes = call.notes, None
        if not self.failure_listeners:
            return
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

    def h2_protections(self) -> dict[tuple[str, str], int]:
        """For /metrics: the HTTP/2 protections that fired, ``(listener, protection) -> count``."""
        proxies = [self.outbound, *(p for p in self.upstreams.values() if isinstance(p, HttpProxy))]
        if self.inbound is not None:
            proxies.append(self.inbound.http)
        return {(proxy.name, name): n for proxy in proxies for name, n in list(proxy.h2_protections.items())}

    def h2_connections(self) -> dict[str, int]:
        """HTTP/2 connections to apps and peers, by state: idle (no stream open) or busy."""
        return self.pools.h2_connections()

    def h2_peer_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """HTTP/2 to peer sidecars, per (peer address, service): connections and streams open, connections dialed,
        PINGs sent, acked and unanswered, GOAWAYs received, dials that found a peer without HTTP/2."""
        return self.pools.h2_peer_counts()

    def status(self) -> dict[str, Any]:
        """For the admin port: listeners, counters, pools to peers (HTTP/1.1 and HTTP/2)."""
        pools = [{"key": repr(pool.key), "idle": pool.idle, "busy": pool.busy, "dialed": pool.dialed}
                 for pool in self.pools]
        h2 = [{"peer": peer, "service": service, **counts}
              for (peer, service), counts in sorted(self.h2_peer_counts().items())]
        out: dict[str, Any] = {"listeners": {k: str(v) for k, v in self.bound.items()}, "stats": self.stats.snapshot(),
                               "pools": pools, "h2_pools": h2}
        if self.inbound is not None:
            out["inbound"] = {"handshakes": dict(self.inbound.handshakes), "refused": self.inbound.refused,
                              "shed": self.inbound.shed, "tunnel_refused": self.inbound.tunnel_refused}
        if self.store is not None:
            out["tls_refusals"] = self.store.refusals.snapshot()
        return out

