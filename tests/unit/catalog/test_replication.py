"""Catalog replication over gossip events, with a fake gossip member list (the pure part)."""

from __future__ import annotations

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo, ServiceMetadata
from sidecar.catalog.registry import LocalRegistry
from sidecar.catalog.replication import CatalogReplication, decode_meta, encode_meta
from sidecar.catalog.sync import Claim, decode_claims, encode_claims
from sidecar.config.load import build_section
from sidecar.config.model import ServiceConfig
from sidecar.events import EventBus
from sidecar.gossip.outputs import MemberDead, MemberJoined, MemberLeft, MemberReaped, RemoteState, UserMessage
from sidecar.gossip.state import MemberState, MemberView


class FakeGossip:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.live: list[MemberView] = []

    def broadcast_user(self, key: str, data: bytes) -> None:
        self.sent.append((key, data))

    def members(self) -> list[MemberView]:
        return self.live


def member(name: str, state: MemberState = MemberState.ALIVE, inbound: int = 15006) -> MemberView:
    return MemberView(name, "10.0.0.2", 7946, state, 1, "default", encode_meta(inbound))


def setup() -> tuple[CatalogReplication, FakeGossip, MeshCatalog, EventBus]:
    bus = EventBus()
    registry = LocalRegistry("a", bus)
    catalog = MeshCatalog(registry, NodeInfo("a", "10.0.0.1", 15006))
    gossip = FakeGossip()
    clock = iter(range(1000, 10**6, 10))
    replication = CatalogReplication(catalog, gossip, bus, lambda: next(clock))
    registry.listeners.append(replication.local_changed)
    return replication, gossip, catalog, bus


def instance(node: str, name: str = "pay") -> ServiceMetadata:
    return ServiceMetadata(f"{name}:{node}:1", name, "1", "127.0.0.1", 1, node=node)


def test_local_changes_are_broadcast_with_growing_versions() -> None:
    _, gossip, catalog, _ = setup()
    catalog.registry.register(build_section(ServiceConfig, {"name": "pay", "port": 1}), "config", 0.0, 1)
    catalog.registry.register(build_section(ServiceConfig, {"name": "inv", "port": 2}), "config", 0.0, 1)
    assert [key for key, _ in gossip.sent] == ["catalog:a", "catalog:a"]
    first, second = (decode_claims(data)[0] for _, data in gossip.sent)
    assert second.version > first.version
    assert [i.name for i in second.instances] == ["pay", "inv"]
    assert not second.signed   # a node without tls states its services unsigned


def test_peer_states_apply_only_for_live_members_and_leave_with_them() -> None:
    replication, gossip, catalog, bus = setup()
    state = Claim("b", "default", "", 5, (instance("b"),))
    replication.on_event(UserMessage("b", "catalog:b", encode_claims([state])))
    assert catalog.snapshot().service("pay") == []  # b is not a member yet: held back
    gossip.live = [member("b", inbound=16000)]
    replication.on_event(MemberJoined(member("b", inbound=16000)))
    assert [i.node for i in catalog.snapshot().service("pay")] == ["b"]
    assert catalog.snapshot().nodes["b"].inbound_port == 16000
    older = Claim("b", "default", "", 4, ())
    replication.on_event(RemoteState(encode_claims([older]), False))
    assert len(catalog.snapshot().service("pay")) == 1  # older loses
    replication.on_event(MemberDead(member("b", MemberState.DEAD)))
    assert catalog.snapshot().service("pay") == [] and "b" not in catalog.snapshot().nodes
    assert [e.type for e in bus.recent()] == ["member-joined", "member-dead"]


def test_push_pull_carries_every_known_state() -> None:
    replication, gossip, _, _ = setup()
    gossip.live = [member("b")]
    replication.on_event(MemberJoined(member("b")))
    replication.on_event(RemoteState(encode_claims([Claim("b", "default", "", 7, (instance("b"),))]), True))
    claims = decode_claims(replication.local_state())
    assert sorted(c.node for c in claims) == ["a", "b"]


def test_garbage_is_counted_not_raised() -> None:
    replication, _, _, _ = setup()
    replication.on_event(UserMessage("b", "catalog:b", b"\x00garbage"))
    assert replication.decode_errors == 1


def test_meta_round_trip() -> None:
    assert decode_meta(encode_meta(15006)) == 15006
    assert decode_meta(b"") == 0 and decode_meta(b"{bad") == 0 and decode_meta(b'{"inbound": -1}') == 0


def test_a_successful_join_rebroadcasts_our_state() -> None:
    from sidecar.gossip.outputs import SyncCompleted
    replication, gossip, _, _ = setup()
    replication.on_event(SyncCompleted(("10.0.0.9", 7946), True, True))
    replication.on_event(SyncCompleted(("10.0.0.9", 7946), True, False))
    replication.on_event(SyncCompleted(("10.0.0.9", 7946), False, True))
    assert [key for key, _ in gossip.sent] == ["catalog:a"]


def test_a_member_back_from_a_mistaken_death_has_its_services_back_at_once() -> None:
    # after a partition heals, a stale "dead" verdict from the other side reaches members that never lost sight
    # of the member; it refutes at once, and its services must not wait for the next push-pull to return
    replication, gossip, catalog, _ = setup()
    gossip.live = [member("b")]
    replication.on_event(MemberJoined(member("b")))
    replication.on_event(RemoteState(encode_claims([Claim("b", "default", "", 7, (instance("b"),))]), False))
    replication.on_event(MemberDead(member("b", MemberState.DEAD)))
    assert catalog.snapshot().service("pay") == []
    assert [(i.name, i.node) for i in catalog.snapshot().down] == [("pay", "b")]   # down, not unheard of
    replication.on_event(MemberJoined(member("b")))
    assert [i.node for i in catalog.snapshot().service("pay")] == ["b"]
    assert catalog.snapshot().down == ()
    # a newer state still wins over the kept one
    replication.on_event(RemoteState(encode_claims([Claim("b", "default", "", 8, ())]), False))
    assert catalog.snapshot().service("pay") == []


def with_members(*names: str) -> tuple[CatalogReplication, MeshCatalog]:
    """A catalog that knows each of ``names`` as a live member with one instance of pay."""
    replication, gossip, catalog, _ = setup()
    gossip.live = [member(name) for name in names]
    for name in names:
        replication.on_event(MemberJoined(member(name)))
        replication.on_event(RemoteState(encode_claims([Claim(name, "default", "", 7, (instance(name),))]), False))
    return replication, catalog


def test_a_departed_or_reaped_member_keeps_nothing() -> None:
    replication, catalog = with_members("b", "c")
    replication.on_event(MemberLeft(member("b", MemberState.LEFT)))
    replication.on_event(MemberDead(member("c", MemberState.DEAD)))
    replication.on_event(MemberReaped(member("c", MemberState.DEAD)))
    assert catalog.snapshot().down == ()
    for name in ("b", "c"):
        replication.on_event(MemberJoined(member(name)))
    assert catalog.snapshot().service("pay") == []


def test_a_dead_member_is_down_until_reaped_and_a_departed_one_at_once() -> None:
    replication, catalog = with_members("b", "c")
    for name in ("b", "c"):
        replication.on_event(MemberDead(member(name, MemberState.DEAD)))
    assert sorted(i.node for i in catalog.snapshot().down) == ["b", "c"]
    replication.on_event(MemberLeft(member("b", MemberState.LEFT)))     # a dead member's leave: gone
    replication.on_event(MemberReaped(member("c", MemberState.DEAD)))
    assert catalog.snapshot().down == ()
