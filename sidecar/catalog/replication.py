"""The catalog carried on gossip: this node's services go out, peers' services come in.

* After every local change the node's full state (all its services, a strictly growing version) is
  broadcast; the broadcast queue keeps only the newest per node, so a burst of changes costs one message.
* Every push-pull (on join, then every ``push_pull_interval``) carries every state this node knows, so a
  missed broadcast heals within one interval, and a new member learns the whole mesh at once.
* Membership decides what counts: a dead or departed member's services leave the catalog; a state about a
  node that is not (yet) a live member waits in a small pending table until it joins. A dead member's last
  state waits there too, so that a member declared dead by mistake has its services back when it refutes.
* Member metadata carries the node's inbound port, which peers dial for mTLS traffic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Protocol

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo, Subscription
from sidecar.catalog.sync import NodeState, SyncDecodeError, decode_states, encode_states, next_version
from sidecar.events import EventBus
from sidecar.gossip.core import (
    Event,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspect,
    MemberUpdated,
    RemoteState,
    SyncCompleted,
    UserMessage,
)
from sidecar.gossip.state import MemberView
from sidecar.log import fields

log = logging.getLogger("sidecar.catalog")

CATALOG_KEY = "catalog"  # user-broadcast key prefix: one slot per origin node
MAX_PENDING = 1024        # states of nodes not yet seen as members


class Gossip(Protocol):
    def broadcast_user(self, key: str, data: bytes) -> None: ...
    def members(self) -> list[MemberView]: ...


def encode_meta(inbound_port: int) -> bytes:
    return json.dumps({"inbound": inbound_port}, separators=(",", ":")).encode()


def decode_meta(meta: bytes) -> int:
    """The inbound port a member advertises; 0 when absent or unreadable."""
    try:
        value = json.loads(meta).get("inbound", 0) if meta else 0
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and 0 <= value <= 65535 else 0


_EVENT_NAMES = {MemberJoined: "member-joined", MemberUpdated: "member-updated", MemberSuspect: "member-suspect",
                MemberAlive: "member-alive", MemberDead: "member-dead", MemberLeft: "member-left",
                MemberReaped: "member-reaped"}


class CatalogReplication:
    def __init__(self, catalog: MeshCatalog, gossip: Gossip, bus: EventBus, now_ms: Callable[[], int]) -> None:
        self.catalog = catalog
        self.gossip = gossip
        self.bus = bus
        self.now_ms = now_ms
        self.version = 0
        self._known: dict[str, NodeState] = {}     # live peers' newest states
        self._pending: dict[str, NodeState] = {}   # states of nodes not yet live members
        self.decode_errors = 0
        # messaging: this node's subscriptions go out with its state; peers' come in through the listeners,
        # called (node, subscriptions) when a newer state is applied and (node, ()) when the node is gone
        self.local_subscriptions: Callable[[], tuple[Subscription, ...]] = lambda: ()
        self.subscription_listeners: list[Callable[[str, tuple[Subscription, ...]], None]] = []

    # ---------------------------------------------------------------------------------------- outgoing

    def own_state(self) -> NodeState:
        return NodeState(self.catalog.local_node.name, self.version, tuple(self.catalog.registry.instances()),
                         self.local_subscriptions())

    def local_changed(self) -> None:
        """Called after every change of the local registry."""
        self.version = next_version(self.version, self.now_ms())
        self.gossip.broadcast_user(f"{CATALOG_KEY}:{self.catalog.local_node.name}", encode_states([self.own_state()]))

    def local_state(self) -> bytes:
        """What push-pull sends: our own state and every live peer's we know."""
        return encode_states([self.own_state(), *self._known.values()])

    # ---------------------------------------------------------------------------------------- incoming

    def on_event(self, event: Event) -> None:
        if isinstance(event, UserMessage):
            if event.key.startswith(CATALOG_KEY + ":"):
                self._merge(event.data, f"broadcast from {event.origin}")
        elif isinstance(event, RemoteState):
            self._merge(event.data, "push-pull")
        elif isinstance(event, MemberJoined | MemberUpdated | MemberAlive | MemberSuspect):
            self._member_live(event.member)
            self._publish(event)
        elif isinstance(event, MemberDead | MemberLeft):
            self._member_gone(event.member, keep=isinstance(event, MemberDead))
            self._publish(event)
        elif isinstance(event, SyncCompleted):
            if event.join and event.ok:
                # our state went to the seed only; say it to everyone now rather than at the next push-pull
                self.local_changed()
        elif isinstance(event, MemberReaped):
            self._pending.pop(event.member.name, None)
            self._publish(event)

    def _member_live(self, member: MemberView) -> None:
        if member.name == self.catalog.local_node.name:
            return
        state = "suspect" if member.state.value == "suspect" else "alive"
        self.catalog.node_state(NodeInfo(member.name, member.address, decode_meta(member.meta), member.cluster, state))
        waiting = self._pending.pop(member.name, None)
        if waiting is not None:
            self._apply(waiting)

    def _member_gone(self, member: MemberView, keep: bool) -> None:
        known = self._known.pop(member.name, None)
        self._pending.pop(member.name, None)
        if keep and known is not None and len(self._pending) < MAX_PENDING:
            # a member declared dead by mistake (a stale verdict crossing a healed partition) refutes within
            # moments: its services come back with it then, not a push-pull interval later; newer states win
            self._pending[member.name] = known
        self.catalog.remove_node(member.name)
        for listener in self.subscription_listeners:
            listener(member.name, ())

    def _merge(self, data: bytes, source: str) -> None:
        try:
            states = decode_states(data)
        except SyncDecodeError as e:
            self.decode_errors += 1
            log.warning("ignored a catalog state", extra=fields(source=source, error=str(e)))
            return
        live = {m.name for m in self.gossip.members() if m.state.value in ("alive", "suspect")}
        for state in states:
            if state.node == self.catalog.local_node.name:
                if state.version > self.version:
                    # a state of ours from before a restart: say the current one with a newer version
                    self.version = state.version
                    self.local_changed()
                continue
            if state.node in live:
                self._apply(state)
            else:
                held = self._pending.get(state.node)
                if (held is None or held.version < state.version) and len(self._pending) < MAX_PENDING:
                    self._pending[state.node] = state

    def _apply(self, state: NodeState) -> None:
        held = self._known.get(state.node)
        if held is not None and held.version >= state.version:
            return
        self._known[state.node] = state
        self.catalog.apply_node(state.node, state.version, state.instances)
        for listener in self.subscription_listeners:
            listener(state.node, state.subscriptions)

    def _publish(self, event: MemberJoined | MemberUpdated | MemberSuspect | MemberAlive | MemberDead | MemberLeft
                 | MemberReaped) -> None:
        member = event.member
        self.bus.publish(_EVENT_NAMES[type(event)], self.now_ms(), member=member.to_json())
        level = logging.WARNING if isinstance(event, MemberDead) else logging.INFO
        log.log(level, _EVENT_NAMES[type(event)].replace("-", " "),
                extra=fields(member=member.name, address=f"{member.address}:{member.port}",
                             incarnation=member.incarnation))
