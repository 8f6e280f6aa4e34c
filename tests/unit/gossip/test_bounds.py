"""What a sender can make a core hold: incarnations under the clock's ceiling, unconfirmed members capped
per source and in total, a bounded record of delivered user broadcasts, and gated inbound streams."""

from __future__ import annotations

import pytest

from sidecar.gossip.admission import UNCONFIRMED_FLOOR, UNCONFIRMED_PER_SOURCE, MemberAdmission
from sidecar.gossip.incarnation import (
    INCARNATION_EPOCH,
    INCARNATION_HEADROOM,
    INCARNATION_MAX,
    incarnation_ceiling,
)
from sidecar.gossip.messages import Alive, Dead, Ping, ProbeAck, PushNodeState, PushPull, Suspect, UserMsg, to_wire
from sidecar.gossip.node import exposure_warning
from sidecar.gossip.outputs import UserMessage, member_events
from sidecar.gossip.seen import USER_SEEN_FLOOR, SeenVersions
from sidecar.gossip.state import MemberState
from sidecar.gossip.streamgate import (
    FRAME_BASE,
    FRAME_PER_MEMBER,
    MAX_FRAME,
    StreamGate,
    StreamLimits,
    StreamRefusal,
    frame_limit,
)
from tests.unit.gossip.test_core import ENV, make_core, packet, sent_of, with_members

NOW_2026 = 1_780_000_000.0  # a wall clock in 2026
FAR_FUTURE = INCARNATION_EPOCH + INCARNATION_MAX + 10.0  # past 2156: the ceiling is the wire maximum


@pytest.mark.parametrize(("wall", "ceiling"), [
    (0.0, INCARNATION_HEADROOM),  # a clock before the epoch (no RTC) still gets the headroom
    (INCARNATION_EPOCH, INCARNATION_HEADROOM),
    (INCARNATION_EPOCH + 1000.9, 1000 + INCARNATION_HEADROOM),
    (FAR_FUTURE, INCARNATION_MAX),
])
def test_the_incarnation_ceiling_follows_the_clock(wall: float, ceiling: int) -> None:
    assert incarnation_ceiling(wall) == ceiling


# ------------------------------------------------------------------------------------------ incarnations


def test_a_suspicion_of_us_above_the_ceiling_is_dropped_and_counted() -> None:
    core = make_core(wall_offset=NOW_2026)
    with_members(core, ["a"])
    out = core.on_packet(("a", 7946), packet(Suspect(INCARNATION_MAX, "me", "a")), 1.0)
    assert core.incarnation == 1
    assert core.counters.refused_incarnation == 1 and core.counters.refutations == 0
    assert core.stuck is None and out == []


def test_a_suspicion_of_us_at_the_ceiling_is_refuted_above_it() -> None:
    core = make_core(wall_offset=NOW_2026)
    with_members(core, ["a"])
    top = core.incarnation_ceiling(1.0)
    core.on_packet(("a", 7946), packet(Suspect(top, "me", "a")), 1.0)
    assert core.incarnation == top + 1 and core.counters.refutations == 1 and core.stuck is None
    # the refutation goes out on the next packet: encoding it never fails
    out = core.on_tick(10.0)
    assert any(a.incarnation == top + 1 for _, a in sent_of(out, Alive))


@pytest.mark.parametrize("kind", [Suspect, Dead])
def test_an_accusation_of_a_peer_above_the_ceiling_leaves_it_alive(kind: type[Suspect] | type[Dead]) -> None:
    core = make_core(wall_offset=NOW_2026)
    with_members(core, ["a", "b"])
    out = core.on_packet(("b", 7946), packet(kind(INCARNATION_MAX, "a", "b")), 1.0)
    view = core.member("a")
    assert view is not None and view.state is MemberState.ALIVE and view.incarnation == 1
    assert member_events(out) == [] and core.counters.refused_incarnation == 1


def test_an_alive_above_the_ceiling_neither_adds_nor_raises_a_member() -> None:
    core = make_core(wall_offset=NOW_2026)
    with_members(core, ["a"])
    core.on_packet(("x", 1), packet(Alive(INCARNATION_MAX, "a", "a", 7946), Alive(INCARNATION_MAX, "new", "n", 1),
                                    Alive(INCARNATION_MAX, "me", "me", 7946)), 1.0)
    a = core.member("a")
    assert a is not None and a.incarnation == 1
    assert core.member("new") is None and core.incarnation == 1
    assert core.counters.refused_incarnation == 3


def test_push_pull_entries_above_the_ceiling_are_skipped() -> None:
    core = make_core(wall_offset=NOW_2026)
    states = (PushNodeState("me", "me", 7946, b"", INCARNATION_MAX, MemberState.DEAD),
              PushNodeState("c", "c", 7946, b"", 3, MemberState.ALIVE))
    core.on_stream(("c", 40000), ENV.seal(to_wire(PushPull(False, states))), 1.0)
    assert core.incarnation == 1 and core.counters.refused_incarnation == 1
    assert core.member("c") is not None


def test_a_member_that_cannot_refute_says_so_and_never_fails_to_encode() -> None:
    core = make_core(wall_offset=FAR_FUTURE)  # a clock past 2156: the ceiling is the wire's maximum
    with_members(core, ["a"])
    core.on_packet(("a", 7946), packet(Suspect(INCARNATION_MAX, "me", "a")), 1.0)  # no struct.error
    assert core.stuck is not None and "cannot refute" in core.stuck
    assert core.incarnation == 1
    core.set_meta(b"new")
    out = core.on_tick(10.0)  # gossips and probes: everything it encodes fits the wire
    assert all(a.incarnation <= INCARNATION_MAX for _, a in sent_of(out, Alive))


def test_metadata_changes_stop_at_the_maximum_incarnation() -> None:
    core = make_core(incarnation=INCARNATION_MAX)
    core.set_meta(b"x")
    assert core.incarnation == INCARNATION_MAX and core.stuck is not None


# -------------------------------------------------------------------------------------------- admission


def test_one_source_introduces_at_most_its_share_of_unconfirmed_members() -> None:
    core = make_core()
    flood = [Alive(1, f"fake-{i}", "10.9.9.9", 2000 + i) for i in range(UNCONFIRMED_PER_SOURCE + 50)]
    for alive in flood:
        core.on_packet(("10.6.6.6", 5000), packet(alive), 1.0)
    assert core.known_members == 1 + UNCONFIRMED_PER_SOURCE
    assert core.unconfirmed_members == UNCONFIRMED_PER_SOURCE and core.counters.refused_member == 50
    # another source still introduces members
    core.on_packet(("10.7.7.7", 5000), packet(Alive(1, "other", "10.7.7.7", 5000)), 1.0)
    assert core.member("other") is not None


def test_the_total_of_unconfirmed_members_is_capped() -> None:
    admission = MemberAdmission(per_source=10, floor=25)
    admitted = 0
    for source in range(10):
        for _ in range(10):
            if admission.admits(("10.0.0.1", source), 1 + len(admission)):
                admission.add(f"m{admitted}", ("10.0.0.1", source))
                admitted += 1
    assert admitted == 25 == len(admission)


def test_an_ack_to_our_probe_confirms_a_member_and_frees_its_introducers_share() -> None:
    core = make_core()
    core.on_packet(("10.6.6.6", 5000), packet(Alive(1, "real", "real", 7946)), 0.0)
    assert core.unconfirmed_members == 1
    out = core.on_tick(10.0)
    pings = sent_of(out, Ping)
    assert pings and pings[0][0] == ("real", 7946)
    core.on_packet(("real", 7946), packet(ProbeAck(pings[0][1].seq)), 10.1)
    assert core.unconfirmed_members == 0


def test_members_from_a_join_are_trusted_and_from_an_unsolicited_push_pull_are_not() -> None:
    core = make_core()
    many = tuple(PushNodeState(f"n{i}", "10.1.1.1", 3000 + i, b"", 1, MemberState.ALIVE)
                 for i in range(UNCONFIRMED_PER_SOURCE + 20))
    core.on_stream(("10.5.5.5", 40000), ENV.seal(to_wire(PushPull(False, many))), 1.0)
    assert core.known_members == 1 + UNCONFIRMED_PER_SOURCE
    joiner = make_core()
    [cmd] = joiner.join([("seed", 7946)], 0.0)
    token = cmd.token  # type: ignore[union-attr]
    joiner.on_stream_reply(token, ENV.seal(to_wire(PushPull(False, many))), 0.1)
    assert joiner.known_members == 1 + len(many) and joiner.unconfirmed_members == 0


def test_the_floor_keeps_room_for_a_big_cluster_learned_by_gossip() -> None:
    assert UNCONFIRMED_FLOOR >= 1000 and UNCONFIRMED_PER_SOURCE >= 100


# ----------------------------------------------------------------------------------------- user records


def test_user_messages_from_ever_new_origins_keep_the_record_bounded() -> None:
    core = make_core()
    delivered = 0
    for i in range(USER_SEEN_FLOOR + 500):
        out = core.on_packet(("10.6.6.6", 5000), packet(UserMsg(f"origin-{i}", "k", 1, b"x")), 1.0)
        delivered += sum(isinstance(o, UserMessage) for o in out)
    assert delivered == USER_SEEN_FLOOR + 500
    assert core.user_seen_entries == USER_SEEN_FLOOR and core.user_seen_evicted == 500


def test_a_delivered_version_is_not_delivered_again_while_remembered() -> None:
    core = make_core()
    first = core.on_packet(("a", 7946), packet(UserMsg("a", "k", 5, b"x")), 1.0)
    again = core.on_packet(("b", 7946), packet(UserMsg("a", "k", 5, b"x")), 2.0)
    older = core.on_packet(("b", 7946), packet(UserMsg("a", "k", 4, b"y")), 3.0)
    assert [type(o) for o in first if isinstance(o, UserMessage)] == [UserMessage]
    assert not any(isinstance(o, UserMessage) for o in again + older)


def test_records_expire_after_their_ttl() -> None:
    seen = SeenVersions(ttl=60.0)
    seen.record("a", "k", 1, now=0.0)
    seen.record("b", "k", 1, now=30.0)
    seen.expire(now=70.0)
    assert len(seen) == 1 and not seen.is_new("b", "k", 1) and seen.is_new("a", "k", 1)


def test_our_own_broadcast_coming_back_is_neither_delivered_nor_recorded() -> None:
    core = make_core()
    core.broadcast_user("k", b"x")
    out = core.on_packet(("a", 7946), packet(UserMsg("me", "k", 1, b"x")), 1.0)
    assert not any(isinstance(o, UserMessage) for o in out) and core.user_seen_entries == 0


# -------------------------------------------------------------------------------------------- streams


def test_the_frame_limit_scales_with_the_members_known() -> None:
    assert frame_limit(1) == FRAME_BASE + FRAME_PER_MEMBER
    assert frame_limit(100) == FRAME_BASE + 100 * FRAME_PER_MEMBER
    assert frame_limit(1_000_000) == MAX_FRAME


def test_streams_are_capped_in_total_and_per_host() -> None:
    gate = StreamGate(StreamLimits(max_streams=3, max_streams_per_host=2))
    assert gate.enter("h1") and gate.enter("h1") and not gate.enter("h1")
    assert gate.enter("h2") and not gate.enter("h3")
    gate.leave("h1")
    assert gate.enter("h3") and gate.open_streams == 3
    assert gate.refused[StreamRefusal.STREAMS] == 2


def test_frames_are_refused_before_reading_when_too_big_or_over_the_budget() -> None:
    gate = StreamGate(StreamLimits(max_buffered=100, max_buffered_per_host=60))
    assert gate.reserve("h1", 1000, limit=500) is StreamRefusal.FRAME_SIZE
    assert gate.reserve("h1", 50, limit=500) is None
    assert gate.reserve("h1", 20, limit=500) is StreamRefusal.BUFFER  # over the host's share
    assert gate.reserve("h2", 50, limit=500) is None
    assert gate.reserve("h3", 10, limit=500) is StreamRefusal.BUFFER  # over the total
    gate.release("h1", 50)
    assert gate.reserve("h3", 10, limit=500) is None and gate.buffered == 60


def test_a_member_joining_through_us_is_admitted_while_a_flood_fills_the_total_cap() -> None:
    core = make_core()
    core._admission.floor = 10  # a small total cap, filled by a flood from many sources
    for i in range(20):
        core.on_packet((f"10.6.6.{i}", 5000), packet(Alive(1, f"fake-{i}", "10.9.9.9", 2000 + i)), 1.0)
    assert core.unconfirmed_members == 10 and core.counters.refused_member == 10
    joiner = (PushNodeState("joiner", "10.3.3.3", 7946, b"", 1, MemberState.ALIVE),
              PushNodeState("friend", "10.3.3.3", 7947, b"", 1, MemberState.ALIVE))
    core.on_stream(("10.3.3.3", 40000), ENV.seal(to_wire(PushPull(True, joiner))), 2.0)
    assert core.member("joiner") is not None
    assert core.member("friend") is None  # only the joiner itself passes the total cap


@pytest.mark.parametrize(("host", "encrypted", "warned"), [
    ("0.0.0.0", False, True), ("::", False, True), ("10.0.0.1", False, True),
    ("0.0.0.0", True, False), ("127.0.0.1", False, False), ("127.0.0.5", False, False), ("::1", False, False),
    ("localhost", False, False),
])
def test_plaintext_gossip_beyond_loopback_is_warned_about(host: str, encrypted: bool, warned: bool) -> None:
    warning = exposure_warning(host, encrypted)
    assert (warning is not None) == warned
    if warning is not None:
        assert "WITHOUT ENCRYPTION" in warning and "gossip.encrypt_keys" in warning and host in warning
