"""The data model every part shares: ServiceMetadata (an instance of a service) and the catalog snapshot.

Field names on the wire (JSON) are the product's data model: ``lastHeartbeat`` is epoch milliseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


class HealthStatus(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def rank(self) -> int:
        """Preference order: healthy before degraded before unhealthy."""
        return _RANK[self]


_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


@dataclass(frozen=True, slots=True)
class ServiceMetadata:
    """One registered instance of a service."""

    id: str
    name: str
    version: str
    host: str
    port: int
    tags: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    status: HealthStatus = HealthStatus.HEALTHY
    last_heartbeat: int = 0  # epoch ms of the last check result or heartbeat
    node: str = ""
    messages_path: str = "/messages"

    def with_status(self, status: HealthStatus, at_ms: int) -> ServiceMetadata:
        return replace(self, status=status, last_heartbeat=at_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "tags": list(self.tags),
            "capabilities": list(self.capabilities),
            "status": self.status.value,
            "lastHeartbeat": self.last_heartbeat,
            "node": self.node,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceMetadata:
        """Inverse of :meth:`to_json`; raises KeyError/ValueError/TypeError on a malformed mapping."""
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            version=str(data["version"]),
            host=str(data["host"]),
            port=int(data["port"]),
            tags=tuple(str(t) for t in data.get("tags", ())),
            capabilities=tuple(str(c) for c in data.get("capabilities", ())),
            status=HealthStatus(data.get("status", "healthy")),
            last_heartbeat=int(data.get("lastHeartbeat", 0)),
            node=str(data.get("node", "")),
            messages_path=str(data.get("messagesPath", "/messages")),
        )


# the service field of a node-level stream subscription: SSE readers on that node, not a service's app
NODE_STREAM = "@stream"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A push subscription gossiped with its node's state: ``topic``'s messages are POSTed to ``path`` of one
    instance of ``service``. ``service == NODE_STREAM`` is a node-level stream subscription (``path`` unused):
    the topic's messages go to that node's sidecar, which keeps them for its SSE readers."""

    service: str
    topic: str
    path: str = ""
    bulk: int = 0       # messages per POST with bulk delivery (a JSON array); 0: one ServiceMessage per POST

    def to_json(self) -> list[str | int]:
        # [service, topic, path] without bulk delivery: what every version reads
        return [self.service, self.topic, self.path, self.bulk] if self.bulk else [self.service, self.topic, self.path]

    @classmethod
    def from_json(cls, data: Any) -> Subscription:
        """Inverse of :meth:`to_json`; raises ValueError/TypeError on a malformed item."""
        service, topic, path, *rest = data
        if not all(isinstance(x, str) for x in (service, topic, path)):
            raise TypeError("a subscription is [service, topic, path] strings")
        if len(rest) > 1 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 100_000
                                    for x in rest):
            raise ValueError("a subscription's bulk size is one integer in [0, 100000]")
        return cls(service, topic, path, rest[0] if rest else 0)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A sidecar as the catalog knows it: where peers reach it."""

    name: str
    address: str        # IP address peers dial (the gossip advertise host)
    inbound_port: int   # this node's mTLS inbound listener
    cluster: str = "default"
    state: str = "alive"  # alive | suspect | dead | left


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """An immutable view of the mesh at one moment; ``version`` grows with every change."""

    version: int = 0
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    instances: tuple[ServiceMetadata, ...] = ()
    # False until this node has exchanged state with a peer (joined): an unknown name may only be unknown *yet*
    synced: bool = True
    # the last instances of members declared dead, held until they refute or are reaped: never routed to, they
    # tell a service whose every instance is down (503) from a name nobody ever served (404)
    down: tuple[ServiceMetadata, ...] = ()

    def by_name(self) -> dict[str, list[ServiceMetadata]]:
        out: dict[str, list[ServiceMetadata]] = {}
        for instance in self.instances:
            out.setdefault(instance.name, []).append(instance)
        return out

    def service(self, name: str) -> list[ServiceMetadata]:
        return [i for i in self.instances if i.name == name]

    def routable(self, name: str, tag: str | None = None) -> list[ServiceMetadata]:
        """Instances fit for traffic: healthy first, then degraded; never unhealthy, never on a dead node."""
        fit = [
            i for i in self.instances
            if i.name == name and i.status is not HealthStatus.UNHEALTHY
            and (tag is None or tag in i.tags)
            and self._node_alive(i.node)
        ]
        return sorted(fit, key=lambda i: i.status.rank)

    def _node_alive(self, node: str) -> bool:
        info = self.nodes.get(node)
        return info is None or info.state in ("alive", "suspect")


def group_json(instances: Iterable[ServiceMetadata]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for instance in sorted(instances, key=lambda i: (i.name, i.node, i.id)):
        out.setdefault(instance.name, []).append(instance.to_json())
    return out
