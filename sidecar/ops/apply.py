"""The live half of a reload: a new configuration applied, part by part, through the part that owns each.

    applier = ConfigApplier(config, paths, own=..., registry=..., messaging=..., telemetry=..., ...)
    reloader = Reloader(applier, clock)     # the applier is the reloader's Reloadable
    await applier.apply_config(new, plan)   # called by the reloader, under its lock, after the diff allowed it

The applier holds the running configuration: ``config`` is replaced only once every live part took the new one.
What a change needs (live or a restart) is :mod:`sidecar.config.diff`'s decision; the transaction around it
(refusal, history, canary) is :mod:`sidecar.ops.reload`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sidecar import log as logs
from sidecar.catalog.own import OwnListeners
from sidecar.catalog.registry import LocalRegistry, default_id
from sidecar.clock import Clock
from sidecar.config.crosscheck import show
from sidecar.config.diff import Plan
from sidecar.config.load import load, load_sent
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.errors import ConfigError, FailedPrecondition
from sidecar.mesh.dataplane import DataPlane
from sidecar.messaging.service import Messaging
from sidecar.ops.reload import invalid
from sidecar.ops.reload_canary import Counts
from sidecar.proxy import HttpProxy, TcpRelay
from sidecar.telemetry import Telemetry
from sidecar.telemetry.access import AccessLog
from sidecar.telemetry.hub import access_log_for

log = logging.getLogger("sidecar.app")   # the process's own log name, as the lines were always logged under


class ConfigApplier:
    """``sidecar.ops.reload.Reloadable``: reads the configuration files, counts requests for the canary, and applies
    a plan's live parts. ``shed`` sets a new upstream listener's overload guard; ``listening`` and ``closed``
    record the addresses of the listeners a reload opens and closes."""

    def __init__(self, config: Config, config_paths: list[str], *, own: OwnListeners, registry: LocalRegistry,
                 messaging: Messaging, telemetry: Telemetry, dataplane: DataPlane,
                 shed: Callable[[HttpProxy | TcpRelay], None], listening: Callable[[str, HostPort], None],
                 closed: Callable[[str], None], clock: Clock, drain_grace: float) -> None:
        self.config = config
        self.config_paths = config_paths
        self.own = own
        self.registry = registry
        self.messaging = messaging
        self.telemetry = telemetry
        self.dataplane = dataplane
        self.shed = shed
        self.listening = listening
        self.closed = closed
        self.clock = clock
        self.drain_grace = drain_grace   # requests on a removed upstream listener may finish for this long

    def read_config(self, text: str | None = None) -> Config:
        return load(self.config_paths) if text is None else load_sent(text, "the request body")

    def request_counts(self) -> Counts:
        return Counts(*self.telemetry.request_counts())

    def recent_counts(self, seconds: float) -> Counts:
        return Counts(*self.telemetry.recent_counts(seconds))

    async def apply_config(self, new: Config, plan: Plan) -> tuple[str, ...]:
        """Apply the plan's live parts, each through the part that owns it. The steps that can fail come first,
        before anything changed: a new access-log file that cannot be opened (refused as invalid, naming the
        key), then upstream listeners (a port in use). The rest swap references."""
        parts = plan.parts
        access_log = self._open_access_log(new)
        try:
            await self._open_listeners(new, parts)
        except BaseException:
            if access_log is not None:
                access_log.close()
            raise
        dataplane = self.dataplane
        dataplane.reconfigure(new)            # policies, authorization, trace sample ratio
        if "services" in parts:
            self._reload_services(new)
        try:
            await self.messaging.reconfigure(new)   # topic scopes; subscriptions (by default the first service's)
        except Exception:   # the store could not be read: the rest of the reload stands, this part is logged
            log.exception("subscriptions not reloaded")
        if dataplane.inbound is not None:
            scopes = self.messaging.scopes
            dataplane.routes.may_publish = None if scopes.open else scopes.may_publish
        await self.telemetry.reconfigure(new, access_log)     # tracing, access log
        if "logging" in parts:
            logs.configure(new.logging.level, new.logging.format)
        self.config = new
        return parts

    def _open_access_log(self, new: Config) -> AccessLog | None:
        """The access log ``new`` asks for, opened, when it differs from the running one; else None."""
        wanted = new.telemetry.access_log
        if wanted == self.config.telemetry.access_log:
            return None
        try:
            return access_log_for(wanted, self.clock)
        except OSError as e:
            raise invalid(ConfigError([f"telemetry.access_log.path: cannot open for appending: {e.strerror or e} "
                                       f"(got {show(wanted.path)})"])) from None

    async def _open_listeners(self, new: Config, parts: tuple[str, ...]) -> None:
        """The services' own listeners checked, the upstream listeners opened (a port in use fails here)."""
        if "services" in parts:
            for i, spec in enumerate(new.services):
                await self.own.check(spec, f"services[{i}].")
        if "upstreams" in parts:
            try:
                change = await self.dataplane.set_upstreams(new.upstreams, self.drain_grace, self.shed)
            except OSError as e:
                raise FailedPrecondition(f"{e.strerror}; nothing changed", {"part": "upstreams"}) from None
            for key in change.closed:
                self.closed(key)
            for key, address in change.opened.items():
                self.listening(key, address)

    def _reload_services(self, new: Config) -> None:
        now, now_ms = self.clock.monotonic(), int(self.clock.wall() * 1000)
        wanted = {spec.id or default_id(spec, new.node.name): spec for spec in new.services}
        for service_id, entry in list(self.registry.services.items()):
            if entry.source == "config" and service_id not in wanted:
                self.registry.deregister(service_id, "removed from the configuration", now_ms)
        for service_id, spec in wanted.items():
            held = self.registry.services.get(service_id)
            if held is None or held.spec != spec:
                self.registry.register(spec, "config", now, now_ms)
