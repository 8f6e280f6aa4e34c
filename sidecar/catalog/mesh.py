"""The mesh-wide catalog: this node's registry plus what peers reported, as immutable snapshots.

Gossip feeds remote state in through :meth:`MeshCatalog.apply_node` and :meth:`MeshCatalog.node_state`;
readers (the API, DNS, the proxy) take :meth:`MeshCatalog.snapshot`, which is rebuilt only after a change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sidecar.catalog.model import CatalogSnapshot, NodeInfo, ServiceMetadata
from sidecar.catalog.registry import LocalRegistry


class MeshCatalog:
    def __init__(self, registry: LocalRegistry, local_node: NodeInfo) -> None:
        self.registry = registry
        self.local_node = local_node
        self._remote_nodes: dict[str, NodeInfo] = {}
        self._remote_instances: dict[str, tuple[int, tuple[ServiceMetadata, ...]]] = {}  # node → (version, ...)
        self._down: dict[str, tuple[ServiceMetadata, ...]] = {}   # node declared dead → its last instances
        self._version = 0
        self._snapshot: CatalogSnapshot | None = None
        self._synced = True
        self.listeners: list[Callable[[CatalogSnapshot], None]] = []
        registry.listeners.append(self._changed)

    def snapshot(self) -> CatalogSnapshot:
        if self._snapshot is None:
            nodes = {self.local_node.name: self.local_node, **self._remote_nodes}
            instances = tuple(self.registry.instances()) + tuple(
                i for _, items in self._remote_instances.values() for i in items)
            down = tuple(i for items in self._down.values() for i in items)
            self._snapshot = CatalogSnapshot(self._version, nodes, instances, self._synced, down)
        return self._snapshot

    def set_synced(self, synced: bool) -> None:
        """Whether this node has joined: until then, a name missing from the catalog is answered 503, not 404."""
        if synced != self._synced:
            self._synced = synced
            self._changed()

    def set_local_node(self, node: NodeInfo) -> None:
        self.local_node = node
        self._changed()

    def node_state(self, node: NodeInfo) -> None:
        """A peer joined, changed address, or changed state (alive, suspect, dead, left)."""
        if node.name == self.local_node.name:
            return
        changed = node.state in ("alive", "suspect") and self._down.pop(node.name, None) is not None
        if self._remote_nodes.get(node.name) != node:
            self._remote_nodes[node.name] = node
            changed = True
        if changed:
            self._changed()

    def apply_node(self, node: str, version: int, instances: Sequence[ServiceMetadata]) -> bool:
        """A peer's full list of services; older versions than the one held are ignored (newer wins)."""
        if node == self.local_node.name:
            return False
        held = self._remote_instances.get(node)
        if held is not None and held[0] >= version:
            return False
        stamped = tuple(i if i.node == node else replace(i, node=node) for i in instances)
        self._remote_instances[node] = (version, stamped)
        self._changed()
        return True

    def remove_node(self, node: str, down: bool = False) -> None:
        """A dead or departed peer: its services leave the catalog. ``down``: a member declared dead whose claims
        are held for its refutation; its instances stay in the snapshot's ``down`` until it is alive again, leaves
        or is reaped (:meth:`forget_node`)."""
        held = self._remote_instances.pop(node, None)
        removed = self._remote_nodes.pop(node, None) is not None or held is not None
        if down and held is not None and held[1]:
            self._down[node] = held[1]
        elif self._down.pop(node, None) is not None:
            removed = True
        if removed:
            self._changed()

    def forget_node(self, node: str) -> None:
        """A member reaped: nothing of it is held any more."""
        if self._down.pop(node, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._snapshot = None
        if self.listeners:
            snapshot = self.snapshot()
            for listener in list(self.listeners):
                listener(snapshot)
