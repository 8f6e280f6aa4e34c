"""The catalog carried on gossip: this node's claims go out, peers' claims come in.

* A node with ``tls`` states each service it holds a certificate for as its own claim, signed with that
  service's key (:mod:`sidecar.catalog.signing`); instances of a service it holds no certificate for are not
  announced (a warning says so). A node without ``tls`` sends one unsigned claim for all its services.
* After every local change, the claims whose content changed get a new, strictly growing version, are signed
  and broadcast (one broadcast slot per (node, service), the queue keeps the newest). A claim that does not fit
  a gossip packet with its certificate goes without it (peers know it by fingerprint), and one that does not fit
  even so is left to push-pull: a node hosting hundreds of services never overflows a packet.
* Every push-pull (on join, then every ``push_pull_interval``) carries every claim this node knows, each with
  its certificate, so a missed broadcast heals within one interval and a new member learns the whole mesh.
* Peers keep, per (node, service), the newest claim that verifies; a tls node keeps signed claims only, a node
  without tls keeps what it is told (it carries no traffic; it answers DNS). Refused claims are counted by
  reason (``refused``). An older or equal version is dropped before any signature is checked.
* Membership decides what counts: a dead or departed member's services leave the catalog; claims about a node
  that is not (yet) a live member wait in a small pending table until it joins. A dead member's last claims
  wait there too, so that a member declared dead by mistake has its services back when it refutes.
* Member metadata carries the node's inbound port, which peers dial for mTLS traffic.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NODE_STREAM, NodeInfo, ServiceMetadata, Subscription
from sidecar.catalog.signing import ClaimRefused, ClaimVerifier, fingerprint, sign
from sidecar.catalog.sync import WHOLE_NODE, Claim, SyncDecodeError, decode_claims, encode_claims, next_version
from sidecar.events import EventBus
from sidecar.gossip.errors import GossipMessageTooLarge
from sidecar.gossip.outputs import (
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

if TYPE_CHECKING:
    from sidecar.tls.primitives import SigningKey

log = logging.getLogger("sidecar.catalog")

CATALOG_KEY = "catalog"  # user-broadcast key prefix: one slot per (origin node, service)
MAX_PENDING = 1024        # nodes not yet seen as members whose claims are held
MAX_CLAIMS_PER_NODE = 4096  # a node's claims held at most (services it hosts)
WARN_EVERY_MS = 60_000      # refused claims are logged as a warning at most this often per reason

# the identities this node signs with, the first one first: service -> (certificate DER, private key)
Identities = Callable[[], Mapping[str, tuple[bytes, "SigningKey"]]]


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
    """``identities``: this node's signing identities (None: no tls, unsigned claims); ``verifier``: how peers'
    claims are checked (None: kept unchecked, for a node without tls). Messaging's subscriptions ride on the
    claims: ``local_subscriptions`` gives this node's, each of ``subscription_listeners`` is told peers'."""

    def __init__(self, catalog: MeshCatalog, gossip: Gossip, bus: EventBus, now_ms: Callable[[], int], *,
                 identities: Identities | None = None, verifier: ClaimVerifier | None = None,
                 local_subscriptions: Callable[[], tuple[Subscription, ...]] = lambda: (),
                 subscription_listeners: Iterable[Callable[[str, tuple[Subscription, ...]], None]] = ()) -> None:
        self.catalog = catalog
        self.gossip = gossip
        self.bus = bus
        self.now_ms = now_ms
        self.identities = identities
        self.verifier = verifier
        self.version = 0
        self._own: dict[str, Claim] = {}                   # our claims by service
        self._known: dict[str, dict[str, Claim]] = {}      # live peers' newest claims, by node and service
        self._pending: dict[str, dict[str, Claim]] = {}    # claims about nodes not yet live members
        self._applied: dict[str, int] = {}                 # per node: how often its claims changed the catalog
        self._unannounced: set[str] = set()                # local services without a certificate (warned once)
        self.decode_errors = 0
        self.refused: Counter[str] = Counter()             # claims not kept, by reason
        self.left_to_push_pull = 0                         # claims too large for any gossip packet
        self._warned: dict[str, int] = {}                  # reason -> when a refusal was last logged as a warning
        # messaging: this node's subscriptions go out with its claims; peers' come in through the listeners,
        # called (node, subscriptions) when newer claims are applied and (node, ()) when the node is gone
        self.local_subscriptions = local_subscriptions
        self.subscription_listeners = list(subscription_listeners)

    def sign_with(self, identities: Identities, verifier: ClaimVerifier) -> None:
        """Sign our claims and verify peers' from now on: the identities exist once tls is loaded, at start."""
        self.identities = identities
        self.verifier = verifier

    # ---------------------------------------------------------------------------------------- outgoing

    def own_claims(self) -> list[Claim]:
        return list(self._own.values())

    def local_changed(self, force: bool = False) -> None:
        """Called after every change of the local registry or subscriptions (and of our certificates): claims
        whose content changed (all with ``force``) get a new version, are signed and broadcast."""
        for claim in self._restate(force):
            self._broadcast(claim)

    def _restate(self, force: bool) -> list[Claim]:
        local = self.catalog.local_node
        instances = tuple(self.catalog.registry.instances())
        subscriptions = self.local_subscriptions()
        identities = self.identities() if self.identities is not None else None
        groups: dict[str, tuple[list[ServiceMetadata], list[Subscription]]]
        if identities is None:
            groups = {WHOLE_NODE: (list(instances), list(subscriptions))}
        else:
            groups = {service: ([], []) for service in identities}
            first = next(iter(identities), None)
            for instance in instances:
                if instance.name in groups:
                    groups[instance.name][0].append(instance)
                elif instance.name not in self._unannounced:
                    self._unannounced.add(instance.name)
                    log.warning("a service this node holds no certificate for is not announced to the mesh",
                                extra=fields(service=instance.name, fix="add it to tls.identities with a"
                                             f" certificate from `sidecar certs issue {instance.name}`"))
            for sub in subscriptions:
                if sub.service == NODE_STREAM and first is not None:
                    # the node's stream readers: deliveries dial this node for the first identity's service and
                    # require its certificate, so the claim that carries the subscription names it
                    groups[first][1].append(replace(sub, path=first))
                elif sub.service in groups:
                    groups[sub.service][1].append(sub)
        changed = []
        for service, (members, subs) in groups.items():
            proof = identities.get(service) if identities is not None else None
            held = self._own.get(service)
            if (not force and held is not None and held.instances == tuple(members)
                    and held.subscriptions == tuple(subs)
                    and held.fingerprint == (fingerprint(proof[0]) if proof is not None else b"")):
                continue
            self.version = next_version(self.version, self.now_ms())
            claim = Claim(local.name, local.cluster, service, self.version, tuple(members), tuple(subs))
            if proof is not None:
                claim = sign(claim, *proof)
            self._own[service] = claim
            changed.append(claim)
        for gone in [service for service in self._own if service not in groups]:
            del self._own[gone]
        return changed

    def _broadcast(self, claim: Claim) -> None:
        key = f"{CATALOG_KEY}:{claim.node}" + (f":{claim.service}" if claim.service else "")
        for with_certificate in (True, False):
            try:
                self.gossip.broadcast_user(key, encode_claims([claim], with_certificate))
                return
            except GossipMessageTooLarge:
                continue
        self.left_to_push_pull += 1
        log.debug("catalog claim larger than a gossip packet: push-pull carries it",
                  extra=fields(service=claim.service, instances=len(claim.instances)))

    def local_state(self) -> bytes:
        """What push-pull sends: our own claims and every live peer's we know, with their certificates."""
        if not self._own:
            self._restate(False)
        return encode_claims([*self._own.values(), *(c for slots in self._known.values() for c in slots.values())])

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
                # our claims went to the seed only; say them to everyone now rather than at the next push-pull
                self._restate(False)
                for claim in self._own.values():
                    self._broadcast(claim)
        elif isinstance(event, MemberReaped):
            self._pending.pop(event.member.name, None)
            self.catalog.forget_node(event.member.name)
            self._publish(event)

    def _member_live(self, member: MemberView) -> None:
        if member.name == self.catalog.local_node.name:
            return
        state = "suspect" if member.state.value == "suspect" else "alive"
        self.catalog.node_state(NodeInfo(member.name, member.address, decode_meta(member.meta), member.cluster, state))
        waiting = self._pending.pop(member.name, None)
        if waiting is not None:
            slots = self._known.setdefault(member.name, {})
            for claim in waiting.values():
                held = slots.get(claim.service)
                if held is None or held.version < claim.version:
                    slots[claim.service] = claim
            self._apply(member.name)

    def _member_gone(self, member: MemberView, keep: bool) -> None:
        known = self._known.pop(member.name, None)
        self._pending.pop(member.name, None)
        held = False
        if keep and known and len(self._pending) < MAX_PENDING:
            held = True
            # a member declared dead by mistake (a stale verdict crossing a healed partition) refutes within
            # moments: its services come back with it then, not a push-pull interval later; newer claims win
            self._pending[member.name] = known
        self._applied.pop(member.name, None)
        self.catalog.remove_node(member.name, down=held)
        for listener in self.subscription_listeners:
            listener(member.name, ())

    def _merge(self, data: bytes, source: str) -> None:
        try:
            claims = decode_claims(data)
        except SyncDecodeError as e:
            self.decode_errors += 1
            log.warning("ignored a catalog claim", extra=fields(source=source, error=str(e)))
            return
        live = {m.name for m in self.gossip.members() if m.state.value in ("alive", "suspect")}
        me = self.catalog.local_node.name
        touched: set[str] = set()
        restate = False
        for claim in claims:
            if claim.node == me:
                # a claim of ours from before a restart: say the current ones with newer versions
                restate = restate or (claim.version > self.version and self._kept(claim, source) is not None)
                continue
            table = self._known if claim.node in live else self._pending
            slots = table.get(claim.node)
            held = slots.get(claim.service) if slots is not None else None
            if held is not None and held.version >= claim.version:
                continue   # what we hold already, or older: no signature to check
            if slots is None and table is self._pending and len(self._pending) >= MAX_PENDING:
                continue
            checked = self._kept(claim, source)
            if checked is None:
                continue
            slots = table.setdefault(claim.node, {})
            if claim.service not in slots and len(slots) >= MAX_CLAIMS_PER_NODE:
                self.refused["too-many"] += 1
                continue
            slots[claim.service] = checked
            if table is self._known:
                touched.add(claim.node)
        for node in touched:
            self._apply(node)
        if restate:
            self.version = max(self.version, *(c.version for c in claims if c.node == me))
            self.local_changed(force=True)

    def _kept(self, claim: Claim, source: str) -> Claim | None:
        """The claim as it is kept (its certificate attached), or None when refused (counted)."""
        if self.verifier is None:
            return claim
        try:
            return self.verifier.check(claim)
        except ClaimRefused as refused:
            self.refused[refused.reason] += 1
            now = self.now_ms()
            # a forger may send thousands: one line per reason a minute, with the count so far
            level = logging.WARNING if now - self._warned.get(refused.reason, -WARN_EVERY_MS) >= WARN_EVERY_MS \
                else logging.DEBUG
            if level == logging.WARNING:
                self._warned[refused.reason] = now
            log.log(level, "refused a catalog claim", extra=fields(
                source=source, node=claim.node, service=claim.service, why=str(refused),
                refused_so_far=self.refused[refused.reason]))
            return None

    def _apply(self, node: str) -> None:
        slots = self._known.get(node, {})
        instances = [i for claim in slots.values() for i in claim.instances]
        subscriptions = tuple(s for claim in slots.values() for s in claim.subscriptions)
        # the catalog's per-node version is ours: claims of one node carry versions of their own
        version = self._applied[node] = self._applied.get(node, 0) + 1
        self.catalog.apply_node(node, version, instances)
        for listener in self.subscription_listeners:
            listener(node, subscriptions)

    def _publish(self, event: MemberJoined | MemberUpdated | MemberSuspect | MemberAlive | MemberDead | MemberLeft
                 | MemberReaped) -> None:
        member = event.member
        self.bus.publish(_EVENT_NAMES[type(event)], self.now_ms(), member=member.to_json())
        level = logging.WARNING if isinstance(event, MemberDead) else logging.INFO
        log.log(level, _EVENT_NAMES[type(event)].replace("-", " "),
                extra=fields(member=member.name, address=f"{member.address}:{member.port}",
                             incarnation=member.incarnation))
