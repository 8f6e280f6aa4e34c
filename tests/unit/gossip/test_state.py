"""The member table and its transition table."""

from __future__ import annotations

import random

import pytest

from sidecar.gossip.state import (
    TRANSITIONS,
    Input,
    Member,
    MemberSnapshot,
    MemberState,
    MemberTable,
    transition,
    updated,
)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


@pytest.mark.parametrize(("state", "event", "expected"), [
    (A, Input.ALIVE, A), (S, Input.ALIVE, A), (D, Input.ALIVE, A), (L, Input.ALIVE, A),
    (A, Input.SUSPECT, S), (S, Input.SUSPECT, S), (D, Input.SUSPECT, None), (L, Input.SUSPECT, None),
    (A, Input.DEAD, D), (S, Input.DEAD, D), (D, Input.DEAD, None), (L, Input.DEAD, None),
    (A, Input.LEAVE, L), (S, Input.LEAVE, L), (D, Input.LEAVE, L), (L, Input.LEAVE, None),
])
def test_transitions(state: MemberState, event: Input, expected: MemberState | None) -> None:
    assert transition(state, event) is expected


def test_the_table_covers_exactly_the_applicable_pairs() -> None:
    assert len(TRANSITIONS) == 11


def member(name: str, state: MemberState = A, inc: int = 1) -> Member:
    return Member(name, "10.0.0.1", 7946, b"", inc, state, 0.0)


def test_live_count_and_dead_since_follow_changes() -> None:
    table = MemberTable(random.Random(1))
    for name in "abc":
        table.put(member(name))
    assert table.live_count == 3 and not table.dead_since
    table.put(updated(member("b"), state=S))
    assert table.live_count == 3
    table.put(Member("b", "10.0.0.1", 7946, b"", 2, D, 5.0))
    assert table.live_count == 2 and table.dead_since == {"b": 5.0}
    table.put(member("b", A, 3))
    assert table.live_count == 3 and not table.dead_since
    table.put(updated(member("c"), state=L, state_change=7.0))
    table.remove("c")
    assert table.live_count == 2 and not table.dead_since and table.get("c") is None
    table.remove("a")
    assert table.live_count == 1


def test_probe_order_visits_everyone_once_per_round_and_skips() -> None:
    table = MemberTable(random.Random(2))
    names = [f"n{i}" for i in range(20)]
    for name in names:
        table.put(member(name))
    table.put(updated(member("n5"), state=D))
    seen = [table.next_probe_target(lambda m: m.state is D) for _ in range(19)]
    assert sorted(m.name for m in seen if m is not None) == sorted(set(names) - {"n5"})
    # the next round is a new shuffle of the same members
    again = [table.next_probe_target(lambda m: m.state is D) for _ in range(19)]
    assert sorted(m.name for m in again if m is not None) == sorted(set(names) - {"n5"})


def test_probe_target_is_none_when_everyone_is_skipped() -> None:
    table = MemberTable(random.Random(3))
    table.put(member("me"))
    assert table.next_probe_target(lambda m: True) is None


def test_random_members_are_distinct_and_accepted() -> None:
    table = MemberTable(random.Random(4))
    for i in range(10):
        table.put(member(f"n{i}", D if i % 2 else A))
    chosen = table.random_members(3, lambda m: m.state is A)
    assert len(chosen) == 3 and len({m.name for m in chosen}) == 3
    assert all(m.state is A for m in chosen)
    assert len(table.random_members(50, lambda m: m.state is A)) == 5


class _AlwaysFirst(random.Random):
    """Every draw lands on the first member of the order: the worst luck random draws can have."""

    def random(self) -> float:
        return 0.0


def test_random_members_never_miss_an_acceptable_member() -> None:
    # a cluster of two seen from "me": 3n = 6 draws all land on ourselves once in 64 rounds
    table = MemberTable(_AlwaysFirst())
    table.put(member("me"))
    table.put(member("peer"))
    drawn = table.random_members(1, lambda m: True)[0].name  # where every draw lands
    chosen = table.random_members(3, lambda m: m.name != drawn)
    assert [m.name for m in chosen] == [n for n in ("me", "peer") if n != drawn]


def test_snapshots_are_shared_copy_on_write() -> None:
    snap = MemberSnapshot.of([(f"n{i}", (f"n{i}", 1), 1, b"") for i in range(5)], now=0.0)
    t1, t2 = MemberTable(random.Random(5)), MemberTable(random.Random(6))
    t1.preload(snap)
    t2.preload(snap)
    t1.put(member("new"))
    t1.put(updated(member("n1"), state=D))
    assert t2.get("new") is None and t2.get("n1") is snap.members["n1"]
    assert len(snap.order) == 5 and t1.live_count == 5 and t2.live_count == 5
