"""Gossip drivers on real UDP/TCP loopback sockets, several in one event loop, on free ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sidecar.config.model import GossipTuning
from sidecar.config.values import Duration, HostPort
from sidecar.gossip import GossipNode, KeyringError, MemberLeft, RemoteState, UserMessage, generate_key
from tests.harness import wait_for_async

# the local profile, quicker still, so detection takes seconds: suspicion 3 * 1 * 0.2s = 0.6s to 3.6s
FAST = GossipTuning(
    probe_interval=Duration(0.2), probe_timeout=Duration(0.1), indirect_checks=2, suspicion_mult=3,
    suspicion_max_timeout_mult=6, retransmit_mult=3, gossip_interval=Duration(0.05), gossip_nodes=3,
    gossip_to_the_dead_time=Duration(5), push_pull_interval=Duration(2), tcp_timeout=Duration(1),
    awareness_max_multiplier=8, dead_reap_time=Duration(30))
LOOPBACK = HostPort("127.0.0.1", 0)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def wrapper() -> None:
        asyncio.run(asyncio.wait_for(test(), 60))
    wrapper.__name__ = test.__name__
    return wrapper


def node(name: str, listen: HostPort = LOOPBACK, **options: Any) -> GossipNode:
    options.setdefault("cluster", "it")
    return GossipNode(name, FAST, listen, **options)


async def cluster(n: int, **options: Any) -> list[GossipNode]:
    nodes = [node(f"node-{i}", meta=f"port={15000 + i}".encode(), **options) for i in range(n)]
    for each in nodes:
        await each.start()
    seed = nodes[0].address
    assert seed is not None
    for each in nodes[1:]:
        assert await each.join([seed]) == 1
    await wait_for_async(lambda: all(alive_names(x) == {y.name for y in nodes} for x in nodes), 10, what="convergence")
    return nodes


def alive_names(n: GossipNode) -> set[str]:
    return {m.name for m in n.members() if m.state == "alive"}


async def stop_all(nodes: list[GossipNode]) -> None:
    await asyncio.gather(*(x.stop() for x in nodes))


@run
async def test_five_members_converge_with_metadata() -> None:
    nodes = await cluster(5)
    try:
        view = nodes[3].member("node-1")
        assert view is not None and view.meta == b"port=15001" and view.cluster == "it"
        assert view.address == "127.0.0.1" and view.port == nodes[1].address.port  # type: ignore[union-attr]
        assert nodes[0].counters()["members_alive"] == 5
        assert nodes[0].bound is not None and nodes[0].bound.port > 0
    finally:
        await stop_all(nodes)


@run
async def test_a_stopped_member_is_declared_dead_by_all_others() -> None:
    nodes = await cluster(5)
    try:
        await nodes[2].stop()
        others = [x for i, x in enumerate(nodes) if i != 2]
        await wait_for_async(lambda: all(x.member("node-2").state == "dead" for x in others),  # type: ignore[union-attr]
                             15, what="node-2 declared dead")
        assert sum(x.counters()["deaths"] for x in others) >= 1
    finally:
        await stop_all([x for i, x in enumerate(nodes) if i != 2])


@run
async def test_a_restarted_member_rejoins_with_a_higher_incarnation() -> None:
    nodes = await cluster(4)
    reborn: GossipNode | None = None
    try:
        victim = nodes[3]
        victim.set_meta(b"first-life")
        await wait_for_async(lambda: nodes[0].member("node-3").meta == b"first-life", 5, what="meta")  # type: ignore[union-attr]
        port = victim.address.port  # type: ignore[union-attr]
        await victim.stop()
        await wait_for_async(lambda: nodes[0].member("node-3").state == "dead", 15, what="death")  # type: ignore[union-attr]
        old = nodes[0].member("node-3")
        assert old is not None
        reborn = node("node-3", HostPort("127.0.0.1", port), meta=b"second-life")
        await reborn.start()
        assert reborn.incarnation == 1
        assert await reborn.join([nodes[0].address]) == 1  # type: ignore[list-item]

        def back() -> bool:
            views = [x.member("node-3") for x in nodes[:3]]
            return all(v is not None and v.state == "alive" and v.meta == b"second-life" for v in views)

        await wait_for_async(back, 10, what="node-3 alive again everywhere")
        assert reborn.incarnation > old.incarnation
    finally:
        await stop_all(nodes[:3] + ([reborn] if reborn else []))


@run
async def test_wrong_key_and_wrong_cluster_are_refused_and_counted() -> None:
    key = generate_key()
    nodes = await cluster(2, keys=[key])
    strangers = [node("wrong-key", keys=[generate_key()]), node("no-key"),
                 node("other-cluster", keys=[key], cluster="elsewhere")]
    try:
        for s in strangers:
            await s.start()
            assert await s.join([nodes[0].address]) == 0  # type: ignore[list-item]
            s.broadcast_user("k", b"let me in")
        def all_refused() -> bool:
            c = nodes[0].counters()
            return c["refused_key"] >= 1 and c["refused_plaintext"] >= 1 and c["refused_cluster"] >= 1

        await wait_for_async(all_refused, 5, what="each stranger refused")
        for x in nodes:
            assert alive_names(x) == {"node-0", "node-1"}
        for s in strangers:
            assert alive_names(s) == {s.name}
    finally:
        await stop_all(nodes + strangers)


@run
async def test_key_rotation_install_use_remove_keeps_the_cluster_together() -> None:
    old, new = generate_key(), generate_key()
    nodes = await cluster(3, keys=[old])
    laggard = node("laggard", keys=[old])
    try:
        for x in nodes:
            x.install_key(new)
        for x in nodes:
            x.use_key(new)
        assert nodes[0].list_keys() == [new, old]
        with pytest.raises(KeyringError, match="primary"):
            nodes[0].remove_key(new)
        for x in nodes:
            x.remove_key(old)
        assert nodes[0].list_keys() == [new]
        joiner = node("joiner", keys=[new])
        nodes.append(joiner)
        await joiner.start()
        assert await joiner.join([nodes[0].address]) == 1  # type: ignore[list-item]
        await wait_for_async(lambda: all(len(alive_names(x)) == 4 for x in nodes), 10, what="joiner everywhere")
        await laggard.start()
        assert await laggard.join([nodes[0].address]) == 0  # type: ignore[list-item]
        assert nodes[0].counters()["refused_key"] >= 1
        with pytest.raises(KeyringError, match="not enabled"):
            node("plain").install_key(new)
    finally:
        await stop_all([*nodes, laggard])


@run
async def test_leave_user_broadcasts_and_remote_state() -> None:
    states = {f"node-{i}": f"catalog-of-{i}".encode() for i in range(3)}
    nodes = [node(name, local_state=lambda s=state: s) for name, state in states.items()]
    seen: dict[str, list[object]] = {x.name: [] for x in nodes}
    for x in nodes:
        x.subscribe(seen[x.name].append)
        await x.start()
    try:
        for x in nodes[1:]:
            assert await x.join([nodes[0].address]) == 1  # type: ignore[list-item]
        assert RemoteState(b"catalog-of-0", False) in seen["node-1"]
        assert RemoteState(b"catalog-of-1", True) in seen["node-0"]
        await wait_for_async(lambda: all(len(alive_names(x)) == 3 for x in nodes), 10, what="convergence")
        nodes[2].broadcast_user("svc/a", b"healthy")
        await wait_for_async(lambda: all(UserMessage("node-2", "svc/a", b"healthy") in seen[x.name] for x in nodes[:2]),
                             5, what="user broadcast")
        assert await nodes[2].leave(timeout=5)
        await wait_for_async(lambda: all(any(isinstance(e, MemberLeft) and e.member.name == "node-2"
                                             for e in seen[x.name]) for x in nodes[:2]), 5, what="leave seen")
        assert nodes[0].member("node-2").state == "left"  # type: ignore[union-attr]
    finally:
        await stop_all(nodes)


@run
async def test_joining_by_dns_name_and_retrying_until_a_seed_appears() -> None:
    # reserve a free port for the seed, then release it so the seed can take it later
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        seed_port = s.getsockname()[1]
    joiner = node("joiner")
    seed = node("seed", HostPort("127.0.0.1", seed_port))
    try:
        await joiner.start()
        joiner.start_joining([HostPort("localhost", seed_port)])
        assert not await joiner.wait_joined(0.3)
        await seed.start()
        assert await joiner.wait_joined(10), "the background join never succeeded"
        await wait_for_async(lambda: alive_names(seed) == {"seed", "joiner"}, 5, what="seed learns the joiner")
    finally:
        await stop_all([joiner, seed])
