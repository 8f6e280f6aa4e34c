"""The apps registered on this node, as the inbound listener's Targets: which instance gets a request or tunnel."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry
from sidecar.errors import NotFound, Unavailable
from sidecar.mesh.naming import ServiceName
from sidecar.proxy import Target
from sidecar.proxy.target import H2cKey


@dataclass(frozen=True, slots=True)
class LocalApp:
    """One app instance on this node, as the inbound route's Target.tag."""

    service: str
    instance: str
    status: HealthStatus


@dataclass(frozen=True, slots=True)
class _LocalSet:
    healthy: tuple[Target, ...]
    degraded: tuple[Target, ...]
    unhealthy: int


class LocalServices:
    """The apps registered on this node by service name (and tag), as Targets; rebuilt when the registry
    changes. Healthy instances first; degraded only when none is healthy; unhealthy never."""

    __slots__ = ("_names", "_sets", "_targets", "_turn", "_version", "node", "registry")

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry
        self.node = registry.node
        self._version = -1
        self._sets: dict[ServiceName, _LocalSet] = {}
        self._names: frozenset[str] = frozenset()
        self._targets: dict[tuple[str, int, str], Target] = {}
        self._turn = 0

    def _fresh(self) -> None:
        if self.registry.version != self._version:
            self._version = self.registry.version
            self._sets = {}
            self._names = frozenset(entry.spec.name for entry in self.registry.services.values())

    def known(self, service: str) -> bool:
        """Whether any instance of ``service`` is registered here, whatever its health."""
        self._fresh()
        return service in self._names

    def pick(self, name: ServiceName) -> Target:
        """A Target for one request or tunnel; NotFound when not registered here, Unavailable when unhealthy."""
        self._fresh()
        found = self._sets.get(name)
        if found is None:
            found = self._sets[name] = self._build(name)
        usable = found.healthy or found.degraded
        if not usable:
            if found.unhealthy:
                raise Unavailable(f"{name.service} is registered on node {self.node} but unhealthy",
                                  {"service": name.service, "node": self.node, "unhealthy": found.unhealthy})
            where = f"{name.service} with tag {name.tag!r}" if name.tag and self.known(name.service) else name.service
            raise NotFound(f"{where} is not registered on node {self.node}",
                           {"service": name.service, "node": self.node})
        if len(usable) == 1:
            return usable[0]
        self._turn += 1
        return usable[self._turn % len(usable)]

    def _build(self, name: ServiceName) -> _LocalSet:
        healthy: list[Target] = []
        degraded: list[Target] = []
        unhealthy = 0
        for entry in self.registry.services.values():
            meta = entry.metadata
            if meta.name != name.service or (name.tag is not None and name.tag not in meta.tags):
                continue
            if meta.status is HealthStatus.UNHEALTHY:
                unhealthy += 1
                continue
            key = (entry.spec.host, entry.spec.port, meta.id)
            target = self._targets.get(key)
            spec = entry.spec
            if target is None or target.tag.status is not meta.status or (target.pool_key is not None) != spec.h2c:
                # an h2c app (protocol grpc or http2) gets its own pool of multiplexed HTTP/2 connections
                target = self._targets[key] = Target((spec.host, spec.port),
                                                     pool_key=H2cKey(spec.host, spec.port) if spec.h2c else None,
                                                     tag=LocalApp(meta.name, meta.id, meta.status))
            (healthy if meta.status is HealthStatus.HEALTHY else degraded).append(target)
        return _LocalSet(tuple(healthy), tuple(degraded), unhealthy)
