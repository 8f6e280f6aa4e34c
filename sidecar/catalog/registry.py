"""The services registered on this sidecar, their health, and the events their changes make.

Sources are the YAML config and the app API; both go through :meth:`LocalRegistry.register`.
Time comes in as arguments; the check runner (``checks.py``) is the driver that feeds results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.catalog.health import CheckResult, HealthTracker, StatusChange
from sidecar.catalog.model import HealthStatus, ServiceMetadata
from sidecar.config.model import ServiceConfig
from sidecar.errors import InvalidArgument, NotFound
from sidecar.events import EventBus
from sidecar.log import fields

log = logging.getLogger("sidecar.registry")


@dataclass(slots=True)
class LocalService:
    spec: ServiceConfig
    metadata: ServiceMetadata
    tracker: HealthTracker
    source: str  # "config" or "api"


def default_id(spec: ServiceConfig, node: str) -> str:
    # deterministic, so a restarted sidecar registers the same ids; unique per node and port
    return f"{spec.name}:{node}:{spec.port}"


class LocalRegistry:
    def __init__(self, node: str, bus: EventBus) -> None:
        self.node = node
        self.bus = bus
        self.services: dict[str, LocalService] = {}
        self.version = 0
        self.listeners: list[Callable[[], None]] = []  # told after every change
        self.draining = False
        # self-demotion (sidecar.ops.demotion): while set, services whose checks say healthy are reported degraded
        self.demoted: str | None = None

    # -------------------------------------------------------------------------------- registration

    def register(self, spec: ServiceConfig, source: str, now: float, now_ms: int) -> LocalService:
        """Add or replace (same id) a service. Replacing keeps nothing of the old one's health."""
        service_id = spec.id or default_id(spec, self.node)
        tracker = HealthTracker(spec.check, now)
        if self.draining:
            tracker.force(HealthStatus.UNHEALTHY, "sidecar is draining", now)
        metadata = ServiceMetadata(
            id=service_id, name=spec.name, version=spec.version, host=spec.host, port=spec.port,
            tags=tuple(spec.tags), capabilities=tuple(spec.capabilities), status=self._effective(tracker.status),
            last_heartbeat=now_ms, node=self.node, messages_path=spec.messages_path,
        )
        replaced = service_id in self.services
        entry = LocalService(spec, metadata, tracker, source)
        self.services[service_id] = entry
        check = spec.check.kind if spec.check else "none"
        log.info("service registered", extra=fields(id=service_id, service=spec.name, port=spec.port,
                                                        check=check, status=tracker.status.value, source=source))
        self.bus.publish("service-registered", now_ms, service=metadata.to_json(), replaced=replaced, source=source)
        self._changed()
        return entry

    def deregister(self, service_id: str, reason: str, now_ms: int) -> ServiceMetadata:
        entry = self.services.pop(service_id, None)
        if entry is None:
            raise NotFound(f"no service with id {service_id!r} on this sidecar", {"id": service_id})
        log.info("service deregistered", extra=fields(id=service_id, service=entry.spec.name, reason=reason))
        self.bus.publish("service-deregistered", now_ms, service=entry.metadata.to_json(), reason=reason)
        self._changed()
        return entry.metadata

    def get(self, service_id: str) -> LocalService:
        entry = self.services.get(service_id)
        if entry is None:
            raise NotFound(f"no service with id {service_id!r} on this sidecar", {"id": service_id})
        return entry

    def instances(self) -> list[ServiceMetadata]:
        return [entry.metadata for entry in self.services.values()]

    # --------------------------------------------------------------------------------------- health

    def record(self, service_id: str, result: CheckResult, now: float, now_ms: int) -> None:
        """A check result for a service (ignored if it was removed meanwhile)."""
        entry = self.services.get(service_id)
        if entry is None:
            return
        self._apply(entry, entry.tracker.record(result, now), now_ms)

    def heartbeat(self, service_id: str, status: HealthStatus, note: str, now: float, now_ms: int) -> LocalService:
        entry = self.get(service_id)
        if entry.spec.check is None or entry.spec.check.ttl is None:
            raise InvalidArgument(f"service {service_id!r} has no ttl check; heartbeats are for ttl checks",
                                  {"id": service_id})
        self._apply(entry, entry.tracker.heartbeat(status, note, now), now_ms)
        return entry

    def on_tick(self, now: float, now_ms: int) -> None:
        """TTL expiries and automatic deregistration."""
        for service_id, entry in list(self.services.items()):
            self._apply(entry, entry.tracker.on_tick(now), now_ms)
            if entry.tracker.should_deregister(now) and entry.spec.check is not None:
                after = entry.spec.check.deregister_after
                assert after is not None
                self.deregister(service_id, f"unhealthy for {after.to_text()} (deregister_after)", now_ms)

    def drain(self, now: float, now_ms: int) -> None:
        """Mark every local service unhealthy so peers stop sending traffic; results no longer count."""
        self.draining = True
        for entry in self.services.values():
            self._apply(entry, entry.tracker.force(HealthStatus.UNHEALTHY, "sidecar is draining", now), now_ms)

    def demote(self, reason: str | None, now_ms: int) -> None:
        """Self-demotion: while ``reason`` is set, healthy services are reported degraded (what their checks say
        is kept, and reported again once ``reason`` is None)."""
        if (reason is None) == (self.demoted is None):
            self.demoted = reason
            return
        self.demoted = reason
        changed = False
        for entry in self.services.values():
            status = self._effective(entry.tracker.status)
            if status is not entry.metadata.status:
                before = entry.metadata.status
                entry.metadata = entry.metadata.with_status(status, now_ms)
                self.bus.publish("health-changed", now_ms, id=entry.metadata.id, service=entry.spec.name,
                                 before=before.value, after=status.value,
                                 output=reason or "self-demotion over")
                changed = True
        if changed:
            self._changed()

    def _effective(self, status: HealthStatus) -> HealthStatus:
        return HealthStatus.DEGRADED if self.demoted is not None and status is HealthStatus.HEALTHY else status

    def _apply(self, entry: LocalService, change: StatusChange | None, now_ms: int) -> None:
        if change is None:
            # a result that does not flip the status still proves the service was checked
            entry.metadata = entry.metadata.with_status(entry.metadata.status, now_ms)
            return
        entry.metadata = entry.metadata.with_status(self._effective(change.after), now_ms)
        level = logging.WARNING if change.after is HealthStatus.UNHEALTHY else logging.INFO
        log.log(level, "service health changed",
                extra=fields(id=entry.metadata.id, service=entry.spec.name, before=change.before.value,
                             after=change.after.value, output=change.output))
        self.bus.publish("health-changed", now_ms, id=entry.metadata.id, service=entry.spec.name,
                         before=change.before.value, after=change.after.value, output=change.output)
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        for listener in list(self.listeners):
            listener()
