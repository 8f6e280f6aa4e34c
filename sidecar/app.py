"""The one place that wires the process: builds every part from the config, starts them in order,
and stops them in reverse. Nothing else in the package knows how the parts fit together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sqlite3
import sys
from dataclasses import replace
from typing import Any

from sidecar import log as logs
from sidecar import native
from sidecar.admin.auth import exposure_warning
from sidecar.admin.dashboard import Dashboard
from sidecar.admin.facade import AdminFacade
from sidecar.admin.server import build_admin, read_token
from sidecar.api.server import build_api
from sidecar.catalog.checks import CheckRunner
from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo
from sidecar.catalog.own import OwnListeners
from sidecar.catalog.registry import LocalRegistry
from sidecar.catalog.replication import CatalogReplication, encode_meta
from sidecar.catalog.signing import ClaimVerifier
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.crosscheck import show
from sidecar.config.load import load
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.dns.server import DnsListenFailed, DnsServer
from sidecar.errors import ConfigError, InvalidArgument, SidecarError
from sidecar.events import EventBus
from sidecar.gossip.node import GossipNode
from sidecar.gossip.rotator import KeyRotator
from sidecar.httpd import Site
from sidecar.lifecycle import WrappedApp
from sidecar.log import fields
from sidecar.mesh.dataplane import DataPlane
from sidecar.messaging.routes import admin_post_handlers, admin_read_routes, api_routes
from sidecar.messaging.service import Messaging
from sidecar.ops.apply import ConfigApplier
from sidecar.ops.debug import debug_routes, watch_failures
from sidecar.ops.demotion import DemotionRules as DemotionRules
from sidecar.ops.demotion import SelfDemotion
from sidecar.ops.failures import FailedRequests
from sidecar.ops.reload import Reloader
from sidecar.overload import OverloadGuard, OverloadMonitor, raise_open_files_limit
from sidecar.overload.metrics import OverloadCollector, overload_routes
from sidecar.overload.monitor import malloc_trimmer, shrink_heap
from sidecar.proxy import HttpProxy, TcpRelay
from sidecar.proxy.limits import DEFAULT_PROXY_LIMITS
from sidecar.telemetry import Sources, Telemetry, build_registry, telemetry_routes
from sidecar.tls.context import server_alpn
from sidecar.tls.errors import CertificateError
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.renewer import Renewer
from sidecar.tls.routes import tls_routes

log = logging.getLogger("sidecar.app")

SHUTDOWN_DEADLINE = 20.0  # seconds from SIGTERM to exit; Kubernetes' default grace period is 30
APP_STOP_GRACE = 8.0      # a wrapped app's time between SIGTERM and SIGKILL
DRAIN_GRACE = 5.0         # requests in flight may finish for this long after the listeners close
LEAVE_TIMEOUT = 2.0       # for the leave message to be gossiped before the sockets close
FD_RESERVE = 1024         # descriptors besides one data-plane listener's connections: pools, gossip, DNS, files


class StartupError(Exception):
    """A part could not start (a port in use, a file unreadable); the message says which and why."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def advertise_host(config: Config) -> str:
    """The address peers use to reach this node: gossip.advertise, else a concrete listen host, else the
    address of the interface with the default route (no packet is sent), else loopback."""
    if config.gossip.advertise is not None:
        return config.gossip.advertise.host
    host = config.gossip.listen.host
    if host not in ("0.0.0.0", "::"):
        return host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: connect() on UDP only picks a route
        return str(probe.getsockname()[0])
    return "127.0.0.1"


class Sidecar:
    def __init__(self, config: Config, config_paths: list[str], clock: Clock = SYSTEM_CLOCK,
                 app_command: list[str] | None = None) -> None:
        self.app = WrappedApp(app_command, {}) if app_command else None
        self.exit_code = 0
        self.clock = clock
        self.bus = EventBus()
        self.bound: dict[str, HostPort] = {}
        # where no service may be registered: the configured listeners until they are bound, then the bound ones
        configured = {"admin": config.admin.listen, "api": config.api.listen, "outbound": config.outbound.listen,
                      "inbound": config.inbound.listen, "dns": config.dns.listen, "gossip": config.gossip.listen}
        self.own = OwnListeners(lambda: {**configured, **self.bound})
        self.registry = LocalRegistry(config.node.name, self.bus)
        local = NodeInfo(config.node.name, advertise_host(config), config.inbound.listen.port, config.node.cluster)
        self.catalog = MeshCatalog(self.registry, local)
        self.catalog.set_synced(not config.gossip.join)   # until joined, an unknown service is 503, not 404
        self._sync_task: asyncio.Task[None] | None = None
        self.checks = CheckRunner(self.registry, clock)
        self.dns = DnsServer(config.dns, self.catalog.snapshot, clock)
        self.store: IdentityStore | None = None
        self.renewer: Renewer | None = None   # tls.issuer: the sidecar renews its own certificate
        if config.tls is not None:
            try:
                self.store = IdentityStore.load(config.tls, clock=clock,
                                                server_alpn=server_alpn(config.inbound.http2.enabled))
                self.renewer = Renewer.from_config(config.tls, self.store, clock)
            except CertificateError as e:
                raise StartupError(f"tls: {e}", exit_code=2) from None
        self._tls_watch: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[None] | None = None
        limits = config.overload
        self.overload = OverloadGuard(limits.max_memory_bytes, float(limits.max_loop_lag), enabled=limits.enabled)
        self.overload_monitor = OverloadMonitor(self.overload, float(limits.check_interval))
        try:
            self.telemetry = Telemetry(config, clock)
        except OSError as e:   # the access log's file
            raise StartupError(f"telemetry.access_log.path: cannot open for appending: {e.strerror or e} "
                               f"(got {show(config.telemetry.access_log.path)})", exit_code=2) from None
        self.failed = FailedRequests()   # recent failed or retried requests, for /debug/explain?request_id=
        self.dataplane = self._build_dataplane(config)
        self.messaging = Messaging(config, self.catalog, self.registry, clock, self.store)
        if self.dataplane.inbound is not None:
            self.dataplane.routes.internal = self.messaging.internal_route
            if not self.messaging.scopes.open:
                self.dataplane.routes.may_publish = self.messaging.scopes.may_publish
        # holds the running configuration (self.config); the live half of POST /reload, SIGHUP, /config/rollback
        self.applier = ConfigApplier(config, config_paths, own=self.own, registry=self.registry,
                                     messaging=self.messaging, telemetry=self.telemetry,
                                     dataplane=self.dataplane, shed=self._shed_by_guard,
                                     listening=self._bound, closed=self._closed, clock=clock,
                                     drain_grace=DRAIN_GRACE)
        self.gossip = GossipNode.from_config(config, meta=encode_meta(self._inbound_port()),
                                             local_state=lambda: self.replication.local_state(), clock=clock)
        # gossip.rotate_every: new keys each epoch, switched once every member holds them (None: rotation off)
        self.rotation = KeyRotator.from_config(config, self.gossip, base_meta=lambda: encode_meta(self._inbound_port()),
                                               ready=lambda: self.in_mesh,
                                               clock=clock)
        self._rotation_task: asyncio.Task[None] | None = None
        tuning = config.gossip.tuning()
        self.demotion = SelfDemotion(lambda: self.gossip.health_score if self.gossip.bound is not None else 0,
                                     self.registry.demote, self.bus, clock, DemotionRules.from_tuning(tuning),
                                     float(tuning.probe_interval))
        self._demotion_task: asyncio.Task[None] | None = None
        # with tls, the catalog is stated as claims signed by each of our identities, and peers' claims are
        # verified against tls.ca (sidecar.catalog.signing); a new certificate restates our claims
        store = self.store
        verifier = None if store is None else ClaimVerifier(store.trust_domain, config.node.cluster,
                                                            lambda: store.material.cas, clock.wall)
        self.replication = CatalogReplication(self.catalog, self.gossip, self.bus, lambda: int(clock.wall() * 1000),
                                              identities=None if store is None else store.signing_identities,
                                              verifier=verifier,
                                              local_subscriptions=self.messaging.local_subscriptions,
                                              subscription_listeners=[self.messaging.on_remote_subscriptions])
        if store is not None:
            store.on_any_rotation(self._restate_claims)
        self.messaging.bind(self.replication.local_changed)   # the one cycle: each is told the other's changes
        self.sites: list[Site] = []
        self.metrics = build_registry(self.telemetry, self._metric_sources)
        self.metrics.register(OverloadCollector(self.overload))
        self.state = "starting"  # starting → ready → draining → stopped
        self.stop_requested = asyncio.Event()
        self.reloader = Reloader(self.applier, clock)   # POST /reload, SIGHUP, /config/history, /config/rollback
        self.admin = AdminFacade(self, self.applier, self.reloader, gossip=self.gossip, rotation=self.rotation,
                                 catalog=self.catalog, registry=self.registry, replication=self.replication,
                                 demotion=self.demotion, dataplane=self.dataplane, bound=self.bound)
        self.dashboard = Dashboard(self.telemetry, node=config.node.name, cluster=config.node.cluster,
                                   members=self.admin.members_json, catalog=self.admin.catalog_json,
                                   clusters=self.admin.clusters_json)
        self._hangups: set[asyncio.Task[None]] = set()

    def _build_dataplane(self, config: Config) -> DataPlane:
        limits = replace(DEFAULT_PROXY_LIMITS, max_connections=config.overload.max_connections_per_listener)
        dataplane = DataPlane(config, self.catalog, self.registry, self.store, self.clock, limits=limits)
        dataplane.request_listeners.append(self.telemetry.on_request)
        watch_failures(dataplane, self.failed, self.clock)
        proxies = [dataplane.outbound, *dataplane.upstreams.values()]
        if dataplane.inbound is not None:
            proxies.extend((dataplane.inbound.http, dataplane.inbound.tunnels))
        for proxy in proxies:
            self._shed_by_guard(proxy)
        return dataplane

    @property
    def config(self) -> Config:
        """The running configuration: the last one applied (``sidecar.ops.apply``)."""
        return self.applier.config

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        now, now_ms = self._now()
        for spec in self.config.services:
            self.registry.register(spec, "config", now, now_ms)
        await self.checks.start()
        tokens: dict[str, str | None] = {}
        for key, path in (("admin", self.config.admin.token_file), ("api", self.config.api.token_file)):
            try:
                tokens[key] = read_token(path)
            except (OSError, ValueError) as e:
                raise StartupError(f"{key}.token_file: {e}", exit_code=2) from None
        token = tokens["admin"]
        if (warning := exposure_warning(self.config.admin.listen.host, token)) is not None:
            log.warning(warning)
        self.telemetry.start()
        if self.overload.enabled:
            self.overload_monitor.start()
        extra = [*telemetry_routes(self.telemetry, self.metrics), *self.dashboard.routes(),
                 *admin_read_routes(self.messaging), *debug_routes(self.dataplane, self.failed),
                 *overload_routes(self.overload), *tls_routes(self.store, self.renewer)]
        await self._start_site(Site("admin", build_admin(self.admin, token, extra, admin_post_handlers(self.messaging)),
                                    self.config.admin.listen))
        await self._start_site(Site("api", build_api(self.registry, self.catalog, self.bus, self.clock,
                                              [api_routes(self.messaging)], tokens["api"], self.own),
                                    self.config.api.listen, overload=self._shedding()))
        await self._start_dataplane()
        await self._start_messaging()
        try:
            host, port = await self.dns.start()
        except DnsListenFailed as e:
            raise StartupError(f"dns.listen: {e}") from None
        self._bound("dns", HostPort(host, port))
        await self._start_gossip()
        for i, spec in enumerate(self.config.services):   # a listener bound on port 0 may have taken its port
            try:
                await self.own.check(spec, f"services[{i}].")
            except InvalidArgument as e:
                raise StartupError(e.message, exit_code=2) from None
        self.state = "ready"
        # start-up garbage (the config's YAML tree, import-time temporaries, TLS loading) goes back to the kernel
        # now rather than staying resident for the process's life
        shrink_heap(malloc_trimmer())
        log.info("sidecar ready", extra=fields(node=self.config.node.name, cluster=self.config.node.cluster,
                                               request_path="compiled" if native.compiled() else "python",
                                               **{k: str(v) for k, v in self.bound.items()}))

    async def _start_site(self, site: Site) -> None:
        try:
            self.bound[site.name] = await site.start()
        except OSError as e:
            raise StartupError(f"{site.name}.listen: cannot listen on {site.listen}: {e.strerror or e}") from None
        self.sites.append(site)
        self._bound(site.name, self.bound[site.name])

    async def _start_dataplane(self) -> None:
        try:
            bound = await self.dataplane.start()
        except OSError as e:
            raise StartupError(f"data plane: {e}") from None
        for name, address in bound.items():
            self._bound(name, address)
        if self.store is not None:
            self._tls_watch = asyncio.create_task(self.store.watch(), name="tls-watch")
        if self.renewer is not None:
            self._renewal = asyncio.create_task(self.renewer.run(), name="tls-renewal")

    def _restate_claims(self) -> None:
        # before gossip starts there is no one to tell; starting it states our claims with the current certificates
        if self.gossip.bound is not None:
            self.replication.local_changed()

    async def _start_messaging(self) -> None:
        try:
            await self.messaging.start(self.bound["outbound"])
        except (OSError, sqlite3.Error) as e:
            where = self.config.node.effective_data_dir
            raise StartupError(f"messaging: cannot open the store in {where}: {e}") from None

    async def _start_gossip(self) -> None:
        if self.rotation is not None:
            await self.rotation.prepare()  # the epoch's keys, so the first packets already read the cluster
        # before start: no incarnation bump
        self.gossip.set_meta(self.rotation.meta() if self.rotation is not None else encode_meta(self._inbound_port()))
        try:
            bound = await self.gossip.start()
        except OSError as e:
            where = self.config.gossip.listen
            raise StartupError(f"gossip.listen: cannot listen on {where}: {e.strerror or e}") from None
        self._bound("gossip", bound)
        advertised = self.gossip.address or bound
        local = self.catalog.local_node
        inbound_advertise = self.config.inbound.advertise
        host = inbound_advertise.host if inbound_advertise is not None else advertised.host
        self.catalog.set_local_node(NodeInfo(local.name, host, self._inbound_port(), local.cluster))
        self.gossip.subscribe(self.replication.on_event)
        self.registry.listeners.append(self.replication.local_changed)
        self.replication.local_changed()
        if self.config.gossip.join:
            self.gossip.start_joining(self.config.gossip.join)
            self._sync_task = asyncio.create_task(self._synced_once_joined(), name="catalog-synced")
        self._demotion_task = asyncio.create_task(self.demotion.run(), name="self-demotion")
        if self.rotation is not None:
            self._rotation_task = asyncio.create_task(self.rotation.run(), name="gossip-key-rotation")

    async def _synced_once_joined(self) -> None:
        await self.gossip.wait_joined(None)
        self.catalog.set_synced(True)

    @property
    def in_mesh(self) -> bool:
        """Joined through gossip.join, or the first member (nothing to join)."""
        return not self.config.gossip.join or self.gossip.joined

    def _inbound_port(self) -> int:
        advertise = self.config.inbound.advertise
        if advertise is not None:
            return advertise.port
        if "inbound" in self.bound:
            return self.bound["inbound"].port
        return self.config.inbound.listen.port

    def _bound(self, name: str, address: HostPort) -> None:
        self.bound[name] = address
        log.info("listening", extra=fields(listener=name, address=str(address)))

    def _closed(self, name: str) -> None:
        self.bound.pop(name, None)
        log.info("listener closed", extra=fields(listener=name))

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or POST /leave), then drain and stop within the deadline."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            await self.start()
            if self.app is None:
                await self.stop_requested.wait()
            else:
                await self._run_app(self.app)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def _run_app(self, app: WrappedApp) -> None:
        stop = asyncio.create_task(self.stop_requested.wait())
        while not self.admin.readiness()[0] and not stop.done():
            log.debug("holding the app until the sidecar is ready", extra=fields(reason=self.admin.readiness()[1]))
            await asyncio.wait({stop}, timeout=0.1)
        if stop.done():
            return
        app.extra_env.update({f"SIDECAR_{name.upper()}": str(address) for name, address in self.bound.items()})
        if self.config.api.token_file is not None:   # the client reads it (sidecar.client.token_from_environment)
            app.extra_env["SIDECAR_API_TOKEN_FILE"] = self.config.api.token_file
        try:
            await app.start()
        except OSError as e:
            raise StartupError(str(e)) from None
        await asyncio.wait({stop, app.exited}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if app.exited.done():
            self.exit_code = app.exited.result()
            log.info("app exited; the sidecar drains and leaves", extra=fields(exit_code=self.exit_code))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("shutting down", extra=fields(signal=sig.name))
        self.stop_requested.set()

    async def shutdown(self) -> None:
        """Drain (services unhealthy, /ready 503), close listeners, then stop the rest; never past the deadline."""
        if self.state == "stopped":
            return
        await self.drain()
        try:
            await asyncio.wait_for(self._stop_in_order(), SHUTDOWN_DEADLINE)
        except TimeoutError:
            log.warning("shutdown deadline reached; remaining work cancelled",
                        extra=fields(deadline=f"{SHUTDOWN_DEADLINE}s"))
        self.state = "stopped"
        log.info("sidecar stopped")

    async def _stop_in_order(self) -> None:
        # inbound first so peers fail over; then the app, while its outbound calls still go out; then the rest
        await self.dataplane.stop_inbound(DRAIN_GRACE)
        if self.app is not None:
            await self.app.stop(APP_STOP_GRACE)
        await self._stop_parts()

    async def _stop_parts(self) -> None:
        await self.reloader.close()   # a canary watch ends; no rollback during the stop
        self.bus.close_all()  # ends event streams, so listeners close without waiting on them
        await self.messaging.stop()  # ends SSE streams; in-flight deliveries are redelivered after a restart
        self.dashboard.close()
        await self.dataplane.stop(DRAIN_GRACE)   # listeners close, requests in flight get DRAIN_GRACE to finish
        await self.telemetry.stop()   # after the last request: its span is flushed
        self.overload_monitor.stop()
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        if self._renewal is not None:
            self._renewal.cancel()  # a running issuer command is killed with it
        if self._demotion_task is not None:
            self._demotion_task.cancel()
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self._rotation_task is not None:
            self._rotation_task.cancel()
        if self.gossip.bound is not None:
            # the drain's health changes were broadcast; leaving tells peers at once rather than by suspicion
            if not await self.gossip.leave(LEAVE_TIMEOUT):
                log.warning("the leave was not sent its full number of times; peers may declare this member "
                            "failed rather than left", extra=fields(timeout=f"{LEAVE_TIMEOUT}s"))
            await self.gossip.stop()
        await self.dns.stop()
        for site in reversed(self.sites):
            await site.stop()
        await self.checks.stop()

    def _shedding(self) -> OverloadGuard | None:
        """The guard listeners shed by (outbound, inbound, upstreams, the API; never the admin port)."""
        return self.overload if self.overload.enabled else None

    def _metric_sources(self) -> Sources:
        return Sources(dataplane=self.dataplane, gossip=self.gossip, dns=self.dns, identity=self.store,
                       messaging=self.messaging, catalog=self.catalog,
                       renewal=self.renewer, replication=self.replication)

    def _now(self) -> tuple[float, int]:
        return self.clock.monotonic(), int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------- lifecycle (admin.facade.Lifecycle)

    async def drain(self) -> dict[str, Any]:
        if self.state in ("draining", "stopped"):
            return {"state": self.state}
        self.state = "draining"
        self.registry.drain(*self._now())
        self.dataplane.drain_inbound()
        log.info("draining: readiness is now 503, local services are unhealthy, peers' HTTP/2 connections "
                 "sent GOAWAY")
        return {"state": self.state}

    async def leave(self) -> dict[str, Any]:
        result = await self.drain()
        self.stop_requested.set()
        return {**result, "leaving": True}

    def _shed_by_guard(self, proxy: HttpProxy | TcpRelay) -> None:
        proxy.overload = self._shedding()   # HTTP answers 503; a TCP relay closes new connections

    def _on_hangup(self) -> None:
        log.info("reloading the configuration", extra=fields(signal="SIGHUP"))
        task = asyncio.create_task(self._hangup_reload(), name="sighup-reload")
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)

    async def _hangup_reload(self) -> None:
        try:
            result = await self.admin.reload()
        except SidecarError as e:   # logged with its reasons by the reloader; the old configuration serves on
            log.warning("SIGHUP reload not applied", extra=fields(code=e.code.name, reason=e.message))
        except Exception:
            log.exception("SIGHUP reload failed")
        else:
            log.info("SIGHUP reload done", extra=fields(version=result.get("version"),
                                                        applied=",".join(result.get("applied", [])) or "nothing"))


async def serve(config: Config, config_paths: list[str], app_command: list[str] | None = None) -> int:
    try:
        sidecar = Sidecar(config, config_paths, app_command=app_command)
        await sidecar.run()
    except StartupError as e:
        log.error(str(e))
        return e.exit_code
    return sidecar.exit_code


# Net allocations between two collections of the youngest generation. At Python's 700, with hundreds of requests in
# flight, a collection ran every few requests and walked every request each time: 10,000 cut the HTTP/2 pair's CPU
# at h2load 50x10 from 196 to 159 µs a request (bench.grpc, medians of three runs), the collector's own time from 7%
# of the pair's CPU to 2%; HTTP/1.1 at 50 clients is unchanged (bench.proxy.mesh). Full collections come as rarely,
# which is safe because a closed connection leaves nothing in reference cycles: its objects are freed as it closes
# (tests/integration/proxy/test_cycles.py), and a second round of 10,000 idle connections reuses the first round's
# memory (tests/integration/overload/test_connections.py; with the cycles it grew RSS by 27 MiB). 50,000 takes the
# collector's share to nearly nothing, but each young collection would walk five times as many objects: a longer
# pause for every request in flight.
YOUNG_COLLECTION = 10_000


def run(config_paths: list[str], app_command: list[str] | None = None) -> int:
    """``sidecar run``: 0 after a clean stop, 2 for a bad config (printed), 1 for a failure at run time."""
    try:
        config = load(config_paths)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.configure(config.logging.level, config.logging.format)
    # thousands of connections need thousands of descriptors; one listener at its cap, plus room for the rest
    raise_open_files_limit(config.overload.max_connections_per_listener + FD_RESERVE)
    tune_gc()
    runner = asyncio.Runner(loop_factory=_loop_factory())
    try:
        with runner:
            return runner.run(serve(config, config_paths, app_command))
    except KeyboardInterrupt:
        return 0


def tune_gc() -> None:
    """For ``sidecar run``'s process: what was built by the imports stays for good (frozen: full collections no
    longer walk the modules, classes and constants made at start), and the youngest generation is collected every
    YOUNG_COLLECTION allocations instead of Python's 700."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, middle, oldest)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
