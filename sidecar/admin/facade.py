"""What the admin port reads and does, gathered from the parts that hold it: ``sidecar.admin.server.AdminBackend``.

    facade = AdminFacade(lifecycle, applier, reloader, gossip=..., catalog=..., registry=..., ...)
    build_admin(facade, token, routes)

Views are JSON-ready dicts built on each call from the parts' current state; actions go to the part that owns
them (the keyring to gossip, drain and leave to the process's lifecycle, reloads to the reloader).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import group_json
from sidecar.catalog.registry import LocalRegistry
from sidecar.catalog.replication import CatalogReplication
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.errors import FailedPrecondition, InvalidArgument
from sidecar.gossip.errors import KeyringError
from sidecar.gossip.keyring import fingerprint
from sidecar.gossip.node import GossipNode
from sidecar.gossip.rotator import KeyRotator
from sidecar.log import fields
from sidecar.mesh.dataplane import DataPlane
from sidecar.ops.apply import ConfigApplier
from sidecar.ops.demotion import SelfDemotion
from sidecar.ops.reload import Reloader

log = logging.getLogger("sidecar.app")   # the process's own log name, as the lines were always logged under


class Lifecycle(Protocol):
    """The process's state, and the two transitions the admin port may ask for (``sidecar.app.Sidecar``)."""

    @property
    def state(self) -> str: ...   # starting → ready → draining → stopped
    @property
    def in_mesh(self) -> bool: ...
    async def drain(self) -> dict[str, Any]: ...
    async def leave(self) -> dict[str, Any]: ...


class AdminFacade:
    def __init__(self, lifecycle: Lifecycle, applier: ConfigApplier, reloader: Reloader, *, gossip: GossipNode,
                 rotation: KeyRotator | None, catalog: MeshCatalog, registry: LocalRegistry,
                 replication: CatalogReplication, demotion: SelfDemotion,
                 dataplane: DataPlane, bound: Mapping[str, HostPort]) -> None:
        self.lifecycle = lifecycle
        self.applier = applier
        self.reloader = reloader
        self.gossip = gossip
        self.rotation = rotation
        self.catalog = catalog
        self.registry = registry
        self.replication = replication
        self.demotion = demotion
        self.dataplane = dataplane
        self.bound = bound

    @property
    def config(self) -> Config:
        """The running configuration: the last one applied."""
        return self.applier.config

    # ------------------------------------------------------------------------------------ views

    def readiness(self) -> tuple[bool, str]:
        state = self.lifecycle.state
        if state != "ready":
            return False, state
        if not self.lifecycle.in_mesh:
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
        return self.dataplane.clusters_json()

    def gossip_json(self) -> dict[str, Any]:
        config = self.config
        address = self.gossip.address
        return {"node": config.node.name, "cluster": config.node.cluster,
                "address": str(address) if address else None, "joined": self.gossip.joined,
                "incarnation": self.gossip.incarnation if self.gossip.bound else 0,
                "encrypted": bool(config.gossip.encrypt_keys), "counters": self.gossip.counters(),
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

    def config_history(self) -> dict[str, Any]:
        return self.reloader.history_json()

    # ------------------------------------------------------------------------------------ actions

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
        return await self.lifecycle.drain()

    async def leave(self) -> dict[str, Any]:
        return await self.lifecycle.leave()

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
        state = self.lifecycle.state
        if state != "ready":
            raise FailedPrecondition(f"the sidecar is {state}: the configuration is {done} only while ready",
                                     {"state": state})
