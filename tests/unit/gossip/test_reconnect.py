"""Reconnects: which failed member is called back, and when."""

from __future__ import annotations

import random

from sidecar.gossip.outputs import MemberAlive, MemberDead, MemberJoined, MemberLeft
from sidecar.gossip.reconnect import Reconnects
from sidecar.gossip.state import MemberState, MemberView


def view(name: str, port: int = 7946) -> MemberView:
    return MemberView(name, "10.0.0.1", port, MemberState.DEAD, 3, "c")


def test_nothing_to_do_until_a_member_fails() -> None:
    r = Reconnects(interval=5, timeout=100, rng=random.Random(1))
    assert r.due(0.0) is None
    r.on_event(MemberDead(view("b", 7001)), 1.0)
    assert r.due(2.0) is None            # one decision per interval: the last was at 0
    assert r.due(5.0) == ("10.0.0.1", 7001)
    assert r.due(6.0) is None
    assert r.due(10.0) == ("10.0.0.1", 7001)
    assert r.attempts == 2


def test_a_member_that_comes_back_or_leaves_is_not_called() -> None:
    r = Reconnects(interval=1, timeout=100, rng=random.Random(1))
    for event in (MemberJoined(view("b")), MemberAlive(view("b")), MemberLeft(view("b"))):
        r.on_event(MemberDead(view("b")), 0.0)
        assert r.failed == ["b"]
        r.on_event(event, 0.5)
        assert r.failed == []
    assert r.due(10.0) is None


def test_failed_members_are_forgotten_after_the_timeout() -> None:
    r = Reconnects(interval=1, timeout=30, rng=random.Random(1))
    r.on_event(MemberDead(view("b", 1)), 0.0)
    r.on_event(MemberDead(view("c", 2)), 20.0)
    assert r.due(29.0) in {("10.0.0.1", 1), ("10.0.0.1", 2)}
    assert r.due(31.0) == ("10.0.0.1", 2)
    assert r.failed == ["c"]
    assert r.due(51.0) is None and r.failed == []


def test_every_failed_member_gets_its_turn() -> None:
    r = Reconnects(interval=1, timeout=1000, rng=random.Random(7))
    for port, name in enumerate("bcd", start=1):
        r.on_event(MemberDead(view(name, port)), 0.0)
    tried = {r.due(float(t)) for t in range(1, 40)}
    assert tried == {("10.0.0.1", 1), ("10.0.0.1", 2), ("10.0.0.1", 3)}
