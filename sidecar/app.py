"""The one place that wires the process: builds every part from the config, starts them in order,
and stops them in reverse. Nothing else in the package knows how the parts fit together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

from sidecar import log as logs
from sidecar.admin.server import build_admin, read_token
from sidecar.api.server import build_api
from sidecar.catalog.checks import CheckRunner
from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo, group_json
from sidecar.catalog.registry import LocalRegistry, default_id
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.load import config_to_raw, load
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.dns.server import DnsListenFailed, DnsServer
from sidecar.errors import ConfigError, InvalidArgument
from sidecar.events import EventBus
from sidecar.log import fields
from sidecar.web import Site

log = logging.getLogger("sidecar.app")

SHUTDOWN_DEADLINE = 10.0  # seconds from SIGTERM to exit; Kubernetes' default grace period is 30


class StartupError(Exception):
    """A part could not start (a port in use, a file unreadable); the message says which and why."""


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
    def __init__(self, config: Config, config_paths: list[str], clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.config_paths = config_paths
        self.clock = clock
        self.bus = EventBus()
        self.registry = LocalRegistry(config.node.name, self.bus)
        local = NodeInfo(config.node.name, advertise_host(config), config.inbound.listen.port, config.node.cluster)
        self.catalog = MeshCatalog(self.registry, local)
        self.checks = CheckRunner(self.registry, clock)
        self.dns = DnsServer(config.dns, self.catalog.snapshot, clock)
        self.sites: list[Site] = []
        self.bound: dict[str, HostPort] = {}
        self.state = "starting"  # starting → ready → draining → stopped
        self.stop_requested = asyncio.Event()

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        now, now_ms = self._now()
        for spec in self.config.services:
            self.registry.register(spec, "config", now, now_ms)
        await self.checks.start()
        token = read_token(self.config.admin.token_file)
        await self._start_site(Site("admin", build_admin(self, token), self.config.admin.listen))
        await self._start_site(Site("api", build_api(self.registry, self.catalog, self.bus, self.clock),
                                    self.config.api.listen))
        try:
            host, port = await self.dns.start()
        except DnsListenFailed as e:
            raise StartupError(f"dns.listen: {e}") from None
        self._bound("dns", HostPort(host, port))
        self.state = "ready"
        log.info("sidecar ready", extra=fields(node=self.config.node.name, cluster=self.config.node.cluster,
                                               **{k: str(v) for k, v in self.bound.items()}))

    async def _start_site(self, site: Site) -> None:
        try:
            self.bound[site.name] = await site.start()
        except OSError as e:
            raise StartupError(f"{site.name}.listen: cannot listen on {site.listen}: {e.strerror or e}") from None
        self.sites.append(site)
        self._bound(site.name, self.bound[site.name])

    def _bound(self, name: str, address: HostPort) -> None:
        self.bound[name] = address
        log.info("listening", extra=fields(listener=name, address=str(address)))

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or POST /leave), then drain and stop within the deadline."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self.stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("shutting down", extra=fields(signal=sig.name))
        self.stop_requested.set()

    async def shutdown(self) -> None:
        """Drain (services unhealthy, /ready 503), close listeners, then stop the rest; never past the deadline."""
        if self.state == "stopped":
            return
        await self.drain()
        try:
            await asyncio.wait_for(self._stop_parts(), SHUTDOWN_DEADLINE)
        except TimeoutError:
            log.warning("shutdown deadline reached; remaining work cancelled",
                        extra=fields(deadline=f"{SHUTDOWN_DEADLINE}s"))
        self.state = "stopped"
        log.info("sidecar stopped")

    async def _stop_parts(self) -> None:
        self.bus.close_all()  # ends event streams, so listeners close without waiting on them
        await self.dns.stop()
        for site in reversed(self.sites):
            await site.stop()
        await self.checks.stop()

    def _now(self) -> tuple[float, int]:
        return self.clock.monotonic(), int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------------- admin port (Process)

    def readiness(self) -> tuple[bool, str]:
        if self.state == "ready":
            return True, "listening"
        return False, self.state

    def listener_addresses(self) -> dict[str, str]:
        return {name: str(address) for name, address in self.bound.items()}

    def members_json(self) -> list[dict[str, Any]]:
        snapshot = self.catalog.snapshot()
        return [{"name": n.name, "address": n.address, "state": n.state, "incarnation": 0, "cluster": n.cluster}
                for n in snapshot.nodes.values()]

    def catalog_json(self) -> dict[str, list[dict[str, Any]]]:
        return group_json(self.catalog.snapshot().instances)

    def services_json(self) -> list[dict[str, Any]]:
        return [i.to_json() for i in self.registry.instances()]

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

    async def reload(self) -> dict[str, Any]:
        """Re-read the config files; apply what can change live (services, logging) and name the rest."""
        try:
            new = load(self.config_paths)
        except ConfigError as e:
            raise InvalidArgument(f"the new configuration is invalid: {'; '.join(e.problems)}",
                                  {"problems": e.problems}) from None
        applied: list[str] = []
        old_raw, new_raw = config_to_raw(self.config, redact=False), config_to_raw(new, redact=False)
        if old_raw["logging"] != new_raw["logging"]:
            logs.configure(new.logging.level, new.logging.format)
            applied.append("logging")
        if old_raw["services"] != new_raw["services"]:
            self._reload_services(new)
            applied.append("services")
        needs_restart = sorted(k for k in new_raw if k not in ("logging", "services") and old_raw[k] != new_raw[k])
        self.config = new if not needs_restart else self._merge_live(new)
        log.info("configuration reloaded", extra=fields(applied=",".join(applied) or "nothing",
                                                        needs_restart=",".join(needs_restart) or "nothing"))
        return {"applied": applied, "needsRestart": needs_restart}

    def _merge_live(self, new: Config) -> Config:
        return replace(self.config, services=new.services, logging=new.logging)

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


async def serve(config: Config, config_paths: list[str]) -> int:
    sidecar = Sidecar(config, config_paths)
    try:
        await sidecar.run()
    except StartupError as e:
        log.error(str(e))
        return 1
    return 0


def run(config_paths: list[str]) -> int:
    """``sidecar run``: 0 after a clean stop, 2 for a bad config (printed), 1 for a failure at run time."""
    try:
        config = load(config_paths)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.configure(config.logging.level, config.logging.format)
    runner = asyncio.Runner(loop_factory=_loop_factory())
    try:
        with runner:
            return runner.run(serve(config, config_paths))
    except KeyboardInterrupt:
        return 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
