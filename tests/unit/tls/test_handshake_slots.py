"""The inbound handshake slots, a pure core: who is closed to make room, as a table of floods."""

from __future__ import annotations

import pytest

from sidecar.tls.slots import HandshakeSlots, source_of


def test_a_source_over_its_share_loses_its_own_oldest() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(max_pending=10, max_per_source=3)
    assert slots.admit("peer-1", "10.0.0.1") == []
    for i in range(3):
        assert slots.admit(f"flood-{i}", "10.0.0.9") == []
    assert slots.admit("flood-3", "10.0.0.9") == ["flood-0"]
    assert slots.admit("flood-4", "10.0.0.9") == ["flood-1"]
    assert slots.pending("10.0.0.9") == 3 and slots.pending("10.0.0.1") == 1
    assert slots.evicted == 2 and len(slots) == 4


def test_at_the_cap_the_busiest_source_loses_its_oldest() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(max_pending=6, max_per_source=6)
    slots.admit("peer-old", "10.0.0.1")            # the oldest of all, but its source holds one
    for i in range(3):
        slots.admit(f"a-{i}", "10.0.0.7")
    slots.admit("b-0", "10.0.0.8")
    slots.admit("b-1", "10.0.0.8")
    assert slots.admit("peer-new", "10.0.0.2") == ["a-0"]
    assert slots.admit("c-0", "10.0.0.9") == ["a-1"]   # 10.0.0.7 and .8 hold 2 each: the first of them
    assert slots.pending("10.0.0.1") == 1 and len(slots) == 6


def test_done_frees_a_slot_and_unknown_keys_are_ignored() -> None:
    slots: HandshakeSlots[int] = HandshakeSlots(max_pending=2, max_per_source=2)
    slots.admit(1, "a")
    slots.admit(2, "a")
    slots.done(1)
    slots.done(1)
    slots.done(99)
    assert slots.admit(3, "b") == [] and len(slots) == 2 and slots.evicted == 0


def test_the_limits_must_make_sense() -> None:
    with pytest.raises(ValueError):
        HandshakeSlots(max_pending=4, max_per_source=5)
    with pytest.raises(ValueError):
        HandshakeSlots(max_pending=0, max_per_source=0)


@pytest.mark.parametrize(("host", "source"), [
    ("10.1.2.3", "10.1.2.3"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),      # one host's /64 is one share
    ("fe80::1%eth0", "fe80::/64"),
    ("unknown peer", "unknown peer"),
])
def test_sources(host: str, source: str) -> None:
    assert source_of(host) == source
