"""The one place that wires the process: builds every part from the config, starts them in order,
and stops them in reverse. Nothing else in the package knows how the parts fit together."""

from __future__ import annotations

import asyncio
import contextlib
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
from sidecar.admin.server import build_admin, read_token
from sidecar.api.server import build_api
from sidecar.catalog.checks import CheckRunner
from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo, group_json
from sidecar.catalog.own import OwnListeners
from sidecar.catalog.registry import LocalRegistry, default_id
from sidecar.catalog.replication import CatalogReplication, encode_meta
from sidecar.catalog.signing import ClaimVerifier
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.diff import Plan
from sidecar.config.load import load, load_sent
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.dns.server import DnsListenFailed, DnsServer
from sidecar.errors import ConfigError, FailedPrecondition, InvalidArgument, SidecarError
from sidecar.events import EventBus
from sidecar.gossip.errors import KeyringError
from sidecar.gossip.keyring import fingerprint
from sidecar.gossip.node import GossipNode
from sidecar.gossip.rotator import KeyRotator
from sidecar.lifecycle import WrappedApp
from sidecar.log import fields
from sidecar.mesh.dataplane import DataPlane
from sidecar.messaging.routes import admin_post_handlers, admin_read_routes, api_routes
from sidecar.messaging.service import Messaging
from sidecar.ops.debug import debug_routes, watch_failures
from sidecar.ops.demotion import Rules as DemotionRules
from sidecar.ops.demotion import SelfDemotion
from sidecar.ops.failures import FailedRequests
from sidecar.ops.reload import Reloader
from sidecar.ops.reload_canary import Counts
from sidecar.overload import OverloadGuard, OverloadMonitor, raise_open_files_limit
from sidecar.overload.metrics import OverloadCollector, overload_routes
from sidecar.overload.monitor import malloc_trimmer, shrink_heap
from sidecar.proxy import HttpProxy, TcpRelay
from sidecar.proxy.limits import DEFAULT_PROXY_LIMITS
from sidecar.telemetry import Sources, Telemetry, build_registry, telemetry_routes
from sidecar.tls.errors import CertificateError
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.renewal import Renewer
from sidecar.tls.routes import tls_routes
from sidecar.web import Site

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
        self.config = config
        self.app = WrappedApp(app_command, {}) if app_command else None
        self.exit_code = 0
        self.config_paths = config_paths
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
        self.gossip = GossipNode.from_config(config, meta=encode_meta(self._inbound_port()),
                                             local_state=lambda: self.replication.local_state(), clock=clock)
        # gossip.rotate_every: new keys each epoch, switched once every member holds them (None: rotation off)
        self.rotation = KeyRotator.from_config(config, self.gossip, base_meta=lambda: encode_meta(self._inbound_port()),
                                               ready=lambda: self.in_mesh,
                                               clock=clock)
        self._rotation_task: asyncio.Task[None] | None = None
        self.store: IdentityStore | None = None
        self.dataplane: DataPlane | None = None
        self.failed = FailedRequests()   # recent failed or retried requests, for /debug/explain?request_id=
        self._tls_watch: asyncio.Task[None] | None = None
        self.renewer: Renewer | None = None   # tls.issuer: the sidecar renews its own certificate
        self._renewal: asyncio.Task[None] | None = None
        tuning = config.gossip.tuning()
        self.demotion = SelfDemotion(lambda: self.gossip.health_score if self.gossip.bound is not None else 0,
                                     self.registry.demote, self.bus, clock, DemotionRules.from_tuning(tuning),
                                     float(tuning.probe_interval))
        self._demotion_task: asyncio.Task[None] | None = None
        self.replication = CatalogReplication(self.catalog, self.gossip, self.bus, lambda: int(clock.wall() * 1000))
        self.messaging = Messaging(config, self.catalog, self.registry, clock)
        self.replication.local_subscriptions = self.messaging.local_subscriptions
        self.replication.subscription_listeners.append(self.messaging.on_remote_subscriptions)
        self.messaging.on_local_change = self.replication.local_changed
        self.sites: list[Site] = []
        self.telemetry = Telemetry(config, clock)
        self.metrics = build_registry(self.telemetry, self._metric_sources)
        limits = config.overload
        self.overload = OverloadGuard(limits.max_memory_bytes, float(limits.max_loop_lag), enabled=limits.enabled)
        self.overload_monitor = OverloadMonitor(self.overload, float(limits.check_interval))
        self.metrics.register(OverloadCollector(self.overload))
        self.dashboard = Dashboard(self.telemetry, node=config.node.name, cluster=config.node.cluster,
                                   members=self.members_json, catalog=self.catalog_json,
                                   clusters=self.clusters_json)
        self.state = "starting"  # starting → ready → draining → stopped
        self.stop_requested = asyncio.Event()
        self.reloader = Reloader(self, clock)   # POST /reload, SIGHUP, /config/history, /config/rollback
        self._hangups: set[asyncio.Task[None]] = set()

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
                 *admin_read_routes(self.messaging), *debug_routes(lambda: self.dataplane, self.failed),
                 *overload_routes(self.overload), *tls_routes(lambda: self.store, lambda: self.renewer)]
        await self._start_site(Site("admin", build_admin(self, token, extra, admin_post_handlers(self.messaging)),
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
        if self.config.tls is not None:
            try:
                self.store = IdentityStore.load(self.config.tls, clock=self.clock)
                self.renewer = Renewer.from_config(self.config.tls, self.store, self.clock)
            except CertificateError as e:
                raise StartupError(f"tls: {e}", exit_code=2) from None
        limits = replace(DEFAULT_PROXY_LIMITS, max_connections=self.config.overload.max_connections_per_listener)
        self.dataplane = DataPlane(self.config, self.catalog, self.registry, self.store, self.clock, limits=limits)
        self.dataplane.request_listeners.append(self.telemetry.on_request)
        watch_failures(self.dataplane, self.failed, self.clock)
        proxies = [self.dataplane.outbound, *self.dataplane.upstreams.values()]
        if self.dataplane.inbound is not None:
            proxies.extend((self.dataplane.inbound.http, self.dataplane.inbound.tunnels))
        for proxy in proxies:
            self._shed_by_guard(proxy)
        try:
            bound = await self.dataplane.start()
        except OSError as e:
            raise StartupError(f"data plane: {e}") from None
        for name, address in bound.items():
            self._bound(name, address)
        if self.store is not None:
            self._sign_claims(self.store)
            self._tls_watch = asyncio.create_task(self.store.watch(), name="tls-watch")
        if self.renewer is not None:
            self._renewal = asyncio.create_task(self.renewer.run(), name="tls-renewal")

    def _sign_claims(self, store: IdentityStore) -> None:
        """The catalog is stated as claims signed by each of our identities, and peers' claims are verified
        against tls.ca (sidecar.catalog.signing); a new certificate restates our claims."""
        self.replication.identities = store.signing_identities
        self.replication.verifier = ClaimVerifier(store.trust_domain, self.config.node.cluster,
                                                  lambda: store.material.cas, self.clock.wall)
        store.on_any_rotation(self._restate_claims)

    def _restate_claims(self) -> None:
        # before gossip starts there is no one to tell; starting it states our claims with the current certificates
        if self.gossip.bound is not None:
            self.replication.local_changed()

    async def _start_messaging(self) -> None:
        assert self.dataplane is not None
        self.messaging.identity = self.store
        if self.dataplane.inbound is not None:
            self.dataplane.routes.internal = self.messaging.internal_route
            if not self.messaging.scopes.open:
                self.dataplane.routes.may_publish = self.messaging.scopes.may_publish
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
        while not self.readiness()[0] and not stop.done():
            log.debug("holding the app until the sidecar is ready", extra=fields(reason=self.readiness()[1]))
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
        if self.dataplane is not None:
            await self.dataplane.stop_inbound(DRAIN_GRACE)
        if self.app is not None:
            await self.app.stop(APP_STOP_GRACE)
        await self._stop_parts()

    async def _stop_parts(self) -> None:
        await self.reloader.close()   # a canary watch ends; no rollback during the stop
        self.bus.close_all()  # ends event streams, so listeners close without waiting on them
        await self.messaging.stop()  # ends SSE streams; in-flight deliveries are redelivered after a restart
        self.dashboard.close()
        if self.dataplane is not None:
            # listeners close, requests in flight get DRAIN_GRACE to finish
            await self.dataplane.stop(DRAIN_GRACE)
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
                       messaging=getattr(self, "messaging", None), catalog=self.catalog,
                       renewal=self.renewer, replication=getattr(self, "replication", None))

    def _now(self) -> tuple[float, int]:
        return self.clock.monotonic(), int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------------- admin port (Process)

    def readiness(self) -> tuple[bool, str]:
        if self.state != "ready":
            return False, self.state
        if not self.in_mesh:
            return False, "joining the mesh"
        problem = self.gossip.problem
        if problem is not None:
            return False, f"gossip: {problem}"
        return True, "listening"

    def warnings(self) -> list[str]:
        gossip = self.gossip.exposure_warning()
        return [gossip] if gossip is not None else []

    def listener_addresses(self) -> dict[str, str]:
        return {name: str(address) for name, address in self.bound.items()}

    def members_json(self) -> list[dict[str, Any]]:
        return [m.to_json() for m in sorted(self.gossip.members(), key=lambda m: m.name)]

    def catalog_json(self) -> dict[str, list[dict[str, Any]]]:
        return group_json(self.catalog.snapshot().instances)

    def services_json(self) -> list[dict[str, Any]]:
        return [i.to_json() for i in self.registry.instances()]

    def clusters_json(self) -> dict[str, Any]:
        return self.dataplane.clusters_json() if self.dataplane is not None else {}

    def gossip_json(self) -> dict[str, Any]:
        address = self.gossip.address
        return {"node": self.config.node.name, "cluster": self.config.node.cluster,
                "address": str(address) if address else None, "joined": self.gossip.joined,
                "incarnation": self.gossip.incarnation if self.gossip.bound else 0,
                "encrypted": bool(self.config.gossip.encrypt_keys), "counters": self.gossip.counters(),
                "refused": {k.removeprefix("refused_"): v for k, v in self.gossip.counters().items()
                            if k.startswith("refused_")},
                "catalogDecodeErrors": self.replication.decode_errors,
                "catalogClaimsRefused": dict(self.replication.refused), "selfDemotion": self.demotion.status()}

    def keys_json(self) -> dict[str, Any]:
        try:
            keys = self.gossip.list_keys()
        except KeyringError as e:
            raise InvalidArgument(str(e)) from None
        return {"primary": fingerprint(keys[0]) if keys else None, "keys": [fingerprint(k) for k in keys],
                "rotation": self.rotation.status() if self.rotation is not None else None}

    def key_action(self, action: str, key: str) -> dict[str, Any]:
        """install, use (make primary) or remove a gossip key; keys are shown only by fingerprint."""
        operations = {"install": self.gossip.install_key, "use": self.gossip.use_key, "remove": self.gossip.remove_key}
        try:
            operations[action](key)
        except KeyringError as e:
            raise InvalidArgument(str(e), {"key": fingerprint(key)}) from None
        log.info("gossip keyring changed", extra=fields(action=action, key=fingerprint(key)))
        if self.rotation is not None:
            self.rotation.wake()  # advertise the new keyring
        return self.keys_json()

    async def drain(self) -> dict[str, Any]:
        if self.state in ("draining", "stopped"):
            return {"state": self.state}
        self.state = "draining"
        self.registry.drain(*self._now())
        log.info("draining: readiness is now 503 and local services are unhealthy")
        return {"state": self.state}

    async def leave(self) -> dict[str, Any]:
        result = await self.drain()
        self.stop_requested.set()
        return {**result, "leaving": True}

    # ------------------------------------------------------------------ reload (sidecar.ops.reload's Process)

    async def reload(self, *, dry_run: bool = False, text: str | None = None,
                     canary: float | None = None) -> dict[str, Any]:
        """POST /reload and SIGHUP: a config transaction (``sidecar.ops.reload``)."""
        if not dry_run:   # starting: parts are still being built from the config
            self._require_ready("reloaded")
        return await self.reloader.reload(dry_run=dry_run, text=text, canary=canary)

    async def rollback(self, version: int) -> dict[str, Any]:
        self._require_ready("rolled back")
        return await self.reloader.rollback(version)

    def _require_ready(self, done: str) -> None:
        if self.state != "ready":
            raise FailedPrecondition(f"the sidecar is {self.state}: the configuration is {done} only while ready",
                                     {"state": self.state})

    def config_history(self) -> dict[str, Any]:
        return self.reloader.history_json()

    def read_config(self, text: str | None = None) -> Config:
        return load(self.config_paths) if text is None else load_sent(text, "the request body")

    def request_counts(self) -> Counts:
        return Counts(*self.telemetry.request_counts())

    def recent_counts(self, seconds: float) -> Counts:
        return Counts(*self.telemetry.recent_counts(seconds))

    async def apply_config(self, new: Config, plan: Plan) -> tuple[str, ...]:
        """Apply the plan's live parts, each through the part that owns it. Upstream listeners come first: the
        one step that can fail (a port in use) fails before anything changed. The rest swap references."""
        parts = plan.parts
        if "services" in parts:
            for i, spec in enumerate(new.services):
                await self.own.check(spec, f"services[{i}].")
        dataplane = self.dataplane
        if "upstreams" in parts and dataplane is not None:
            try:
                change = await dataplane.set_upstreams(new.upstreams, DRAIN_GRACE, self._shed_by_guard)
            except OSError as e:
                raise FailedPrecondition(f"{e.strerror}; nothing changed", {"part": "upstreams"}) from None
            for key in change.closed:
                self.bound.pop(key, None)
                log.info("listener closed", extra=fields(listener=key))
            for key, address in change.opened.items():
                self._bound(key, address)
        if dataplane is not None:
            dataplane.reconfigure(new)            # policies, authorization, trace sample ratio
        if "services" in parts:
            self._reload_services(new)
        try:
            await self.messaging.reconfigure(new)   # topic scopes; subscriptions (by default the first service's)
        except Exception:   # the store could not be read: the rest of the reload stands, this part is logged
            log.exception("subscriptions not reloaded")
        if dataplane is not None and dataplane.inbound is not None:
            scopes = self.messaging.scopes
            dataplane.routes.may_publish = None if scopes.open else scopes.may_publish
        await self.telemetry.reconfigure(new)     # tracing, access log
        if "logging" in parts:
            logs.configure(new.logging.level, new.logging.format)
        self.config = new
        return parts

    def _shed_by_guard(self, proxy: HttpProxy | TcpRelay) -> None:
        proxy.overload = self._shedding()   # HTTP answers 503; a TCP relay closes new connections

    def _on_hangup(self) -> None:
        log.info("reloading the configuration", extra=fields(signal="SIGHUP"))
        task = asyncio.create_task(self._hangup_reload(), name="sighup-reload")
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)

    async def _hangup_reload(self) -> None:
        try:
            result = await self.reload()
        except SidecarError as e:   # logged with its reasons by the reloader; the old configuration serves on
            log.warning("SIGHUP reload not applied", extra=fields(code=e.code.name, reason=e.message))
        except Exception:
            log.exception("SIGHUP reload failed")
        else:
            log.info("SIGHUP reload done", extra=fields(version=result.get("version"),
                                                        applied=",".join(result.get("applied", [])) or "nothing"))

    def _reload_services(self, new: Config) -> None:
        now, now_ms = self._now()
        wanted = {spec.id or default_id(spec, new.node.name): spec for spec in new.services}
        for service_id, entry in list(self.registry.services.items()):
            if entry.source == "config" and service_id not in wanted:
                self.registry.deregister(service_id, "removed from the configuration", now_ms)
        for service_id, spec in wanted.items():
            held = self.registry.services.get(service_id)
            if held is None or held.spec != spec:
                self.registry.register(spec, "config", now, now_ms)


async def serve(config: Config, config_paths: list[str], app_command: list[str] | None = None) -> int:
    sidecar = Sidecar(config, config_paths, app_command=app_command)
    try:
        await sidecar.run()
    except StartupError as e:
        log.error(str(e))
        return e.exit_code
    return sidecar.exit_code


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
    runner = asyncio.Runner(loop_factory=_loop_factory())
    try:
        with runner:
            return runner.run(serve(config, config_paths, app_command))
    except KeyboardInterrupt:
        return 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
