"""Which instances of a service a request may go to: endpoints from a catalog snapshot.

Pure: a snapshot in, endpoints out. The pick among them is :mod:`sidecar.resilience`'s (ejected outliers left
out, round robin / least request / peak EWMA per policy, another instance on a retry): it takes
:meth:`Router.endpoints`.

Endpoints are sidecars, not apps: each instance is reached at its node's inbound listener
(``snapshot.nodes[instance.node].address : inbound_port``), which hands the request to the app. An instance
on this very node is reached through our own inbound listener too (``local_inbound``), so that identity,
authorization and metrics are the same whichever node serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, ServiceMetadata
from sidecar.errors import NotFound, Unavailable
from sidecar.mesh.naming import ServiceName


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service, as the proxy dials it: the inbound address of the sidecar next to it."""

    service: str
    instance: str          # ServiceMetadata.id
    node: str
    address: tuple[str, int]
    status: HealthStatus

    @property
    def authority(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The endpoints of one service (and tag) in one snapshot: healthy ones, then degraded ones.

    The counts say why there may be none: ``total`` instances of the name (any tag, any health), how many
    carry the tag, how many are unhealthy, how many sit on nodes that are dead or whose address is
    unknown, and how many were last seen on members since declared dead (``down``, not in ``total``).
    """

    name: ServiceName
    healthy: tuple[Endpoint, ...] = ()
    degraded: tuple[Endpoint, ...] = ()
    total: int = 0
    tagged: int = 0
    unhealthy: int = 0
    unreachable: int = 0
    synced: bool = True   # the catalog's: see CatalogSnapshot.synced
    down: int = 0

    @property
    def usable(self) -> tuple[Endpoint, ...]:
        """What traffic may use: the healthy endpoints, or the degraded ones only when none is healthy."""
        return self.healthy or self.degraded

    def no_endpoint(self) -> NotFound | Unavailable:
        """The error to answer when :attr:`usable` is empty."""
        service, tag = self.name.service, self.name.tag
        if self.total == 0 and not self.synced:
            return Unavailable(f"no instance of {service} known yet: this sidecar has not joined the mesh",
                               {"service": service, "reason": "not-joined"})
        if self.total == 0 and self.down:
            # every instance went with a member declared dead: one refuting a stale verdict is back in moments
            return Unavailable(f"no live instance of {service}: {self.down} instance{'s' if self.down != 1 else ''}"
                               f" on members that are down", {"service": service, "instances": 0,
                                                               "down": self.down, "reason": "members-down"})
        if self.total == 0:
            return NotFound(f"no service named {service!r} in the catalog", {"service": service})
        details: dict[str, object] = {"service": service, "instances": self.total, "unhealthy": self.unhealthy,
                                      "unreachable": self.unreachable}
        if tag is not None:
            details["tag"] = tag
            details["tagged"] = self.tagged
            if self.tagged == 0:
                return Unavailable(f"no instance of {service} has the tag {tag!r} ({self.total} instances)", details)
        parts = [f"{self.unhealthy} unhealthy"] if self.unhealthy else []
        if self.unreachable:
            parts.append(f"{self.unreachable} on nodes that are down or have no address")
        counted = self.tagged if tag is not None else self.total
        why = ", ".join(parts) or "none routable"
        return Unavailable(f"no healthy instance of {service}: {counted} instance{'s' if counted != 1 else ''}, "
                           f"{why}", details)


@dataclass(frozen=True, slots=True)
class LocalInbound:
    """This node's name and where its own inbound listener is bound (what its NodeInfo may not know yet)."""

    node: str
    address: tuple[str, int]


def endpoint_set(snapshot: CatalogSnapshot, name: ServiceName, local: LocalInbound | None = None) -> EndpointSet:
    """Every instance of ``name`` that traffic may use, healthy first, with the counts of the others."""
    healthy: list[Endpoint] = []
    degraded: list[Endpoint] = []
    total = tagged = unhealthy = unreachable = 0
    for instance in snapshot.instances:
        if instance.name != name.service:
            continue
        total += 1
        if name.tag is not None and name.tag not in instance.tags:
            continue
        tagged += 1
        if instance.status is HealthStatus.UNHEALTHY:
            unhealthy += 1
            continue
        address = _inbound_of(snapshot, instance, local)
        if address is None:
            unreachable += 1
            continue
        endpoint = Endpoint(instance.name, instance.id, instance.node, address, instance.status)
        (healthy if instance.status is HealthStatus.HEALTHY else degraded).append(endpoint)
    down = 0
    if total == 0:
        down = sum(1 for i in snapshot.down if i.name == name.service)
    return EndpointSet(name, tuple(healthy), tuple(degraded), total, tagged, unhealthy, unreachable,
                       snapshot.synced, down)


def _inbound_of(snapshot: CatalogSnapshot, instance: ServiceMetadata,
                local: LocalInbound | None) -> tuple[str, int] | None:
    if local is not None and instance.node == local.node:
        return local.address
    node = snapshot.nodes.get(instance.node)
    if node is None or node.state not in ("alive", "suspect"):
        return None
    if not node.address or node.address in ("0.0.0.0", "::") or not 0 < node.inbound_port < 65536:
        return None
    return node.address, node.inbound_port


class Router:
    """Endpoint sets per service, rebuilt when the catalog snapshot changes."""

    __slots__ = ("_sets", "_snapshot", "local")

    def __init__(self, local: LocalInbound | None = None) -> None:
        self.local = local
        self._snapshot: CatalogSnapshot | None = None
        self._sets: dict[ServiceName, EndpointSet] = {}

    def endpoints(self, snapshot: CatalogSnapshot, name: ServiceName) -> EndpointSet:
        if snapshot is not self._snapshot:  # the catalog hands out the same object until something changes
            self._sets = {}
            self._snapshot = snapshot
        found = self._sets.get(name)
        if found is None:
            found = self._sets[name] = endpoint_set(snapshot, name, self.local)
        return found

    def set_local(self, local: LocalInbound | None) -> None:
        self.local = local
        self._snapshot = None
