"""Wire format: every message round-trips, and malformed bytes raise GossipDecodeError and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.gossip.errors import GossipDecodeError, GossipMessageTooLarge
from sidecar.gossip.messages import (
    MAX_META,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Ping,
    ProbeAck,
    ProbeNack,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
    compound_to_wire,
    from_wire,
    packet_from_wire,
    split_packet,
    to_wire,
)
from sidecar.gossip.state import MemberState

names = st.text(min_size=0, max_size=40)
u32 = st.integers(0, 2**32 - 1)
ports = st.integers(0, 65535)
meta = st.binary(max_size=MAX_META)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, u32, names),
    st.builds(IndirectPing, u32, names, names, ports, st.booleans()),
    st.builds(ProbeAck, u32),
    st.builds(ProbeNack, u32),
    st.builds(Suspect, u32, names, names),
    st.builds(Alive, u32, names, names, ports, meta),
    st.builds(Dead, u32, names, names),
    st.builds(UserMsg, names, names, st.integers(0, 2**64 - 1), st.binary(max_size=1000)),
    st.builds(PushPull, st.booleans(),
              st.lists(st.builds(PushNodeState, names, names, ports, meta, u32, st.sampled_from(list(MemberState))),
                       max_size=20).map(tuple),
              st.binary(max_size=2000)),
)


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    assert from_wire(to_wire(msg)) == msg


@given(st.lists(messages.filter(lambda m: not isinstance(m, PushPull)), min_size=1, max_size=10))
def test_compound_packets_round_trip(msgs: list[Message]) -> None:
    assert packet_from_wire(compound_to_wire([to_wire(m) for m in msgs])) == msgs


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_decode_or_raise_the_decode_error(data: bytes) -> None:
    with contextlib.suppress(GossipDecodeError):
        packet_from_wire(data)


@given(messages, st.data())
def test_every_truncation_is_a_decode_error(msg: Message, data: st.DataObject) -> None:
    wire = to_wire(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(GossipDecodeError):
        from_wire(wire[:cut])


@given(messages, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_a_decode_error(msg: Message, extra: bytes) -> None:
    with pytest.raises(GossipDecodeError):
        from_wire(to_wire(msg) + extra)


@given(messages, st.data())
def test_flipped_bytes_decode_or_raise_the_decode_error(msg: Message, data: st.DataObject) -> None:
    wire = bytearray(to_wire(msg))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(GossipDecodeError):
        from_wire(bytes(wire))


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xff", b"\x09", b"\x09\x00", b"\x09\x02\x00\x01", b"\x09\x01\x00\x01\x09",  # nested compound
    b"\x08\x00\xff\xff\xff\xff",  # push-pull claiming 4 billion members
    b"\x01\x00\x00\x00\x01\x02\xff\xfe",  # invalid UTF-8 name
    b"\x03\x00\x00\x00",  # short ack
])
def test_known_malformed_packets(data: bytes) -> None:
    with pytest.raises(GossipDecodeError):
        packet_from_wire(data)


def test_a_single_part_is_sent_as_itself() -> None:
    raw = to_wire(ProbeAck(7))
    assert compound_to_wire([raw]) == raw
    assert split_packet(raw) == [raw]


def test_names_longer_than_255_bytes_cannot_be_encoded() -> None:
    with pytest.raises(GossipMessageTooLarge):
        to_wire(Ping(1, "x" * 256))


def test_metadata_over_the_cap_is_refused_on_decode() -> None:
    with pytest.raises(GossipDecodeError, match="metadata"):
        from_wire(to_wire(Alive(1, "a", "h", 1, b"m" * (MAX_META + 1))))


def test_leave_is_a_dead_message_from_the_member_itself() -> None:
    assert Dead(3, "a", "a").is_leave
    assert not Dead(3, "a", "b").is_leave


def test_messages_are_compact() -> None:
    assert len(to_wire(ProbeAck(1))) == 5
    assert len(to_wire(Ping(1, "node-a"))) == 12
    assert len(to_wire(Alive(1, "node-a", "10.0.0.1", 7946, b""))) == 25
