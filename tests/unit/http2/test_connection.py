"""The HTTP/2 core against a raw peer: each protection ends (or refuses) exactly what it should."""

from __future__ import annotations

import pytest
from hyperframe.frame import GoAwayFrame, PingFrame, PriorityFrame, RstStreamFrame, WindowUpdateFrame

from sidecar.http2.connection import H2Connection
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from sidecar.http2.limits import H2Limits
from sidecar.http2.preface import PREFACE, Sniffed, sniff
from tests.unit.http2.peer import REQUEST, RawPeer, frames

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x7, 0xB


def server(**limits: object) -> tuple[H2Connection, RawPeer]:
    core = H2Connection(client_side=False, limits=H2Limits(**limits))  # type: ignore[arg-type]
    peer = RawPeer()
    assert core.receive_data(peer.preface(), 0.0) == []
    core.data_to_send()
    return core, peer


def terminated(events: list[Event]) -> ConnectionTerminated:
    ends = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(ends) == 1, events
    return ends[0]


def goaway_code(core: H2Connection) -> int:
    goaways = [f for f in frames(core.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1
    return int(goaways[0].error_code)


@pytest.mark.parametrize(("first", "sniffed"), [
    (b"", Sniffed.NEED_MORE),
    (b"PRI * HTTP/2", Sniffed.NEED_MORE),
    (PREFACE, Sniffed.H2C),
    (PREFACE + b"\x00\x00\x00\x04", Sniffed.H2C),
    (b"GET / HTTP/1.1\r\n", Sniffed.HTTP1),
    (b"P", Sniffed.NEED_MORE),
    (b"POST / HTTP/1.1\r\n", Sniffed.HTTP1),
    (b"PRI * HTTP/1.1\r\n", Sniffed.HTTP1),
])
def test_sniff_tells_h2c_prior_knowledge_from_http1(first: bytes, sniffed: Sniffed) -> None:
    assert sniff(first) is sniffed


def test_bad_preface_is_a_protocol_error() -> None:
    core = H2Connection(client_side=False)
    core.data_to_send()
    events = core.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 0.0)
    assert terminated(events).error_code == PROTOCOL_ERROR
    assert core.counters == {"bad_preface": 1}
    assert goaway_code(core) == PROTOCOL_ERROR
    assert core.closed and core.receive_data(b"more", 0.0) == []


def test_preface_may_arrive_a_byte_at_a_time() -> None:
    core = H2Connection(client_side=False)
    peer = RawPeer()
    data = peer.preface() + peer.headers(1, end_stream=True)
    events: list[Event] = []
    for i in range(len(data)):
        events += core.receive_data(data[i:i + 1], 0.0)
    assert [type(e) for e in events] == [HeadersReceived, StreamEnded]


def test_streams_past_the_limit_are_refused_and_the_connection_lives_on() -> None:
    core, peer = server(max_concurrent_streams=2)
    # the third stream's headers change the HPACK table: the fourth refers to its entry
    custom = [*REQUEST, (b"x-tenant", b"blue")]
    events = core.receive_data(peer.headers(1) + peer.headers(3) + peer.headers(5, custom), 0.0)
    assert [e.stream_id for e in events if isinstance(e, HeadersReceived)] == [1, 3]
    resets = [f for f in frames(core.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(5, REFUSED_STREAM)]
    assert core.counters == {"refused_streams": 1}
    # the peer's DATA on the refused stream is dropped, its bytes returned to the connection window
    core.receive_data(peer.data(5, b"x" * 100, end_stream=True), 0.0)
    updates = [f for f in frames(core.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert [(f.stream_id, f.window_increment) for f in updates] == [(0, 100)]
    core.reset(1)
    events = core.receive_data(peer.headers(7, custom, end_stream=True), 0.0)
    heads = [e for e in events if isinstance(e, HeadersReceived)]
    assert [h.stream_id for h in heads] == [7] and (b"x-tenant", b"blue") in heads[0].headers
    assert not core.closed


def test_rapid_reset_flood_is_told_to_calm_down() -> None:
    core, peer = server(max_peer_resets=50)
    flood = b"".join(peer.headers(sid) + peer.rst(sid) for sid in range(1, 2 * 60, 2))
    events = core.receive_data(flood, 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"rapid_reset": 1}
    assert goaway_code(core) == ENHANCE_YOUR_CALM


def test_resets_within_budget_spread_over_windows_are_fine() -> None:
    core, peer = server(max_peer_resets=50, budget_window=1.0)
    for second in range(4):
        sids = range(1 + second * 200, 1 + second * 200 + 80, 2)
        events = core.receive_data(b"".join(peer.headers(s) + peer.rst(s) for s in sids), float(second))
        assert not any(isinstance(e, ConnectionTerminated) for e in events)
    assert not core.closed


def test_refused_streams_count_against_the_reset_budget() -> None:
    core, peer = server(max_concurrent_streams=1, max_peer_resets=20)
    core.receive_data(peer.headers(1), 0.0)
    events = core.receive_data(b"".join(peer.headers(s) for s in range(3, 3 + 2 * 30, 2)), 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"refused_streams": 21, "rapid_reset": 1}


def test_continuation_flood_by_count() -> None:
    core, peer = server()
    block = peer.block()
    flood = peer.headers(1, block=block[:1], end_headers=False)
    flood += b"".join(peer.continuation(1, b"") for _ in range(40))
    events = core.receive_data(flood, 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"continuation_flood": 1}


def test_continuation_flood_by_bytes_before_the_block_is_buffered_whole() -> None:
    core, peer = server(max_header_block_bytes=32 * 1024)
    flood = peer.headers(1, block=b"\x00" * 16000, end_headers=False)
    flood += b"".join(peer.continuation(1, b"\x00" * 16000) for _ in range(4))
    events = core.receive_data(flood, 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"continuation_flood": 1}


def test_header_block_interrupted_by_another_frame_is_a_protocol_error() -> None:
    core, peer = server()
    events = core.receive_data(peer.headers(1, block=peer.block()[:2], end_headers=False) + peer.ping(), 0.0)
    assert terminated(events).error_code == PROTOCOL_ERROR


def test_oversized_header_list() -> None:
    core, peer = server(max_header_list_size=4096)
    events = core.receive_data(peer.headers(1, [*REQUEST, (b"x-big", b"v" * 5000)]), 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"header_list_too_large": 1}
    assert goaway_code(core) == ENHANCE_YOUR_CALM  # exactly one GOAWAY on the wire


def test_data_on_stream_zero_sends_one_goaway() -> None:
    core, _ = server()
    data_on_zero = b"\x00\x00\x04\x00\x00\x00\x00\x00\x00" + b"late"  # DATA, no flags, stream 0
    events = core.receive_data(data_on_zero, 0.0)
    assert terminated(events).error_code == PROTOCOL_ERROR
    assert goaway_code(core) == PROTOCOL_ERROR


def test_hpack_bomb_small_block_huge_list() -> None:
    core, peer = server(max_header_list_size=16 * 1024)
    # one 3 KB entry in the dynamic table, then a block referring to it 200 times: ~600 KB from ~600 bytes
    core.receive_data(peer.headers(1, [*REQUEST, (b"x-bomb", b"b" * 3000)], end_stream=True), 0.0)
    index = 62  # the newest dynamic entry
    bomb = peer.block(REQUEST) + bytes([0x80 | index]) * 200
    events = core.receive_data(peer.headers(3, block=bomb), 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"header_list_too_large": 1}


def test_window_overflow_is_a_flow_control_error() -> None:
    core, peer = server()
    events = core.receive_data(peer.window_update(0, 2**31 - 1), 0.0)
    assert terminated(events).error_code == FLOW_CONTROL_ERROR
    assert core.counters == {"flow_control": 1}


def test_stream_window_overflow_resets_the_stream_and_counts_against_the_reset_budget() -> None:
    core, peer = server(max_peer_resets=3)
    core.receive_data(peer.headers(1), 0.0)
    events = core.receive_data(peer.window_update(1, 2**31 - 1), 0.0)
    assert events == [StreamReset(1, FLOW_CONTROL_ERROR, remote=False)] and not core.closed
    assert core.counters == {"stream_errors": 1}
    flood = b"".join(peer.headers(s) + peer.window_update(s, 2**31 - 1) for s in (3, 5, 7))
    assert terminated(core.receive_data(flood, 0.0)).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"stream_errors": 4, "rapid_reset": 1}


def test_frames_on_closed_streams_are_counted_and_bounded() -> None:
    core, peer = server(max_closed_stream_frames=10)
    core.receive_data(peer.headers(1, end_stream=True), 0.0)
    core.send_headers(1, [(b":status", b"200")], end_stream=True)
    assert core.open_streams == 0
    events = core.receive_data(b"".join(peer.data(1, b"late") for _ in range(5)), 0.0)
    assert not core.closed, events
    events = core.receive_data(b"".join(peer.data(1, b"late") for _ in range(10)), 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"closed_stream_frames": 1}


@pytest.mark.parametrize("flood", ["ping", "ping-ack", "settings", "priority", "empty-data"])
def test_control_frame_flood(flood: str) -> None:
    core, peer = server(max_control_frames=100)
    if flood == "empty-data":
        core.receive_data(peer.headers(1), 0.0)
    frame = {"ping": peer.ping(), "ping-ack": PingFrame(0, opaque_data=b"unasked!", flags={"ACK"}).serialize(),
             "settings": peer.settings(), "priority": PriorityFrame(1, depends_on=0, stream_weight=16).serialize(),
             "empty-data": peer.data(1, b"")}[flood]
    assert not any(isinstance(e, ConnectionTerminated) for e in core.receive_data(frame * 90, 0.0))
    events = core.receive_data(frame * 20, 0.0)
    assert terminated(events).error_code == ENHANCE_YOUR_CALM
    assert core.counters == {"control_flood": 1}


def test_a_protected_connection_does_not_touch_another() -> None:
    victim, vpeer = server()
    attacked, apeer = server(max_control_frames=10)
    attacked.receive_data(apeer.ping() * 20, 0.0)
    assert attacked.closed
    events = victim.receive_data(vpeer.headers(1, end_stream=True), 0.0)
    assert [type(e) for e in events] == [HeadersReceived, StreamEnded] and victim.counters == {}


def pump(a: H2Connection, b: H2Connection, now: float = 0.0, ack: bool = True) -> list[Event]:
    """Exchange bytes until both are quiet; returns b's events (a's are acknowledged only)."""
    seen: list[Event] = []
    for _ in range(100):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return seen
        if x:
            for e in b.receive_data(x, now):
                seen.append(e)
                if ack and isinstance(e, DataReceived):
                    b.acknowledge(e.stream_id, e.flow_length)
        if y:
            for e in a.receive_data(y, now):
                if isinstance(e, DataReceived):
                    a.acknowledge(e.stream_id, e.flow_length)
    raise AssertionError("no quiet point")


@pytest.mark.parametrize("check_outbound", [True, False])
def test_request_response_with_trailers_between_two_cores(check_outbound: bool) -> None:
    client = H2Connection(client_side=True, check_outbound=check_outbound)
    srv = H2Connection(client_side=False, check_outbound=check_outbound)
    pump(client, srv)
    sid = client.start_request(REQUEST)
    client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    events = pump(client, srv)
    assert [type(e) for e in events] == [HeadersReceived, DataReceived, StreamEnded]
    srv.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    srv.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    srv.send_trailers(sid, [(b"grpc-status", b"0")])
    events = pump(srv, client)
    assert [type(e) for e in events] == [HeadersReceived, DataReceived, TrailersReceived, StreamEnded]
    assert client.open_streams == 0 and srv.open_streams == 0


def test_slow_reader_slows_the_writer_and_memory_stays_bounded() -> None:
    limits = H2Limits(initial_window=64 * 1024, connection_window=128 * 1024, stream_buffer_high=128 * 1024)
    client, srv = H2Connection(client_side=True, limits=limits), H2Connection(client_side=False, limits=limits)
    pump(client, srv)
    sid = client.start_request(REQUEST)
    writable = [client.send_data(sid, b"m" * 16384) for _ in range(16)]  # 256 KiB offered
    assert writable[0] and not writable[-1]  # back-pressure once 128 KiB wait
    events = pump(client, srv, ack=False)  # the reader passes nothing on
    held = sum(e.flow_length for e in events if isinstance(e, DataReceived))
    assert held == 64 * 1024  # exactly the stream window: the writer is stopped
    assert client.buffered(sid) == 256 * 1024 - held
    srv.acknowledge(sid, held)
    more = pump(client, srv, ack=False)
    assert sum(e.flow_length for e in more if isinstance(e, DataReceived)) == 64 * 1024
    srv.acknowledge(sid, 64 * 1024)
    client_events = []
    for _ in range(10):
        srv_bytes = srv.data_to_send()
        client_events += client.receive_data(srv_bytes, 0.0)
        for e in srv.receive_data(client.data_to_send(), 0.0):
            if isinstance(e, DataReceived):
                srv.acknowledge(e.stream_id, e.flow_length)
    assert StreamWritable(sid) in client_events
    assert client.buffered(sid) == 0


def test_a_stream_ended_after_waiting_for_its_window_sends_nothing_more() -> None:
    limits = H2Limits(initial_window=65535, connection_window=65535)
    client, srv = H2Connection(client_side=True, limits=limits), H2Connection(client_side=False, limits=limits)
    pump(client, srv)
    sid = client.start_request(REQUEST)  # the client keeps its side open, as in a bidi call
    client.send_data(sid, b"ask")
    srv.receive_data(client.data_to_send(), 0.0)
    srv.send_headers(sid, [(b":status", b"200")])
    srv.send_data(sid, b"x" * 100_000, end_stream=True)  # more than the window: it waits, then ends
    ends = 0
    for _ in range(6):  # window updates keep coming after the stream's last frame went out
        for event in client.receive_data(srv.data_to_send(), 0.0):
            ends += isinstance(event, StreamEnded)
            if isinstance(event, DataReceived):
                client.acknowledge(event.stream_id, event.flow_length)
        client.send_data(sid, b"more")
        assert not any(isinstance(e, ConnectionTerminated) for e in srv.receive_data(client.data_to_send(), 0.0))
    assert ends == 1 and srv.buffered(sid) == 0 and not srv.closed


def test_goaway_drain_finishes_in_flight_streams_and_refuses_new_ones() -> None:
    client, srv = H2Connection(client_side=True), H2Connection(client_side=False)
    pump(client, srv)
    first = client.start_request(REQUEST, end_stream=True)
    pump(client, srv)
    srv.goaway()
    # a stream the client opened before the GOAWAY reached it
    late = client.start_request(REQUEST, end_stream=True)
    srv.receive_data(client.data_to_send(), 0.0)
    events = client.receive_data(srv.data_to_send(), 0.0)
    assert GoAwayReceived(first, 0) in events
    assert StreamReset(late, REFUSED_STREAM, remote=True) in events
    assert not client.can_open()
    srv.send_headers(first, [(b":status", b"200")], end_stream=True)
    events = pump(srv, client)
    assert [type(e) for e in events] == [HeadersReceived, StreamEnded]
    assert client.open_streams == 0 and srv.open_streams == 0 and not srv.closed


def test_server_refuses_streams_above_its_goaway() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1), 0.0)
    core.goaway()
    core.data_to_send()
    events = core.receive_data(peer.headers(3, end_stream=True), 0.0)
    assert events == []
    resets = [f for f in frames(core.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(3, REFUSED_STREAM)]
    core.send_headers(1, [(b":status", b"200")])
    core.send_data(1, b"still flowing", end_stream=True)
    assert b"still flowing" in core.data_to_send()


def test_two_step_drain_notice_then_last_stream() -> None:
    core, peer = server()
    core.goaway(last_stream_id=2**31 - 1)  # notice: nothing refused yet
    events = core.receive_data(peer.headers(1, end_stream=True), 0.0)
    assert [type(e) for e in events] == [HeadersReceived, StreamEnded]
    core.goaway()
    core.goaway(last_stream_id=99)  # cannot raise it again
    sent = [f for f in frames(core.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [(f.last_stream_id, f.error_code) for f in sent] == [(2**31 - 1, 0), (1, 0), (1, 0)]
    core.receive_data(peer.headers(3, end_stream=True), 0.0)
    resets = [f for f in frames(core.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(3, REFUSED_STREAM)]


def test_peer_goaway_with_an_error_ends_the_connection() -> None:
    core, peer = server()
    events = core.receive_data(peer.goaway(0, PROTOCOL_ERROR), 0.0)
    assert events == [GoAwayReceived(0, PROTOCOL_ERROR), terminated(events)] and terminated(events).remote


def test_ping_is_answered_and_acknowledged() -> None:
    client, srv = H2Connection(client_side=True), H2Connection(client_side=False)
    pump(client, srv)
    client.ping(b"keepaliv")
    srv.receive_data(client.data_to_send(), 0.0)
    answer = srv.data_to_send()
    acks = [f for f in frames(answer) if isinstance(f, PingFrame)]
    assert [(f.opaque_data, "ACK" in f.flags) for f in acks] == [(b"keepaliv", True)]
    assert client.receive_data(answer, 0.0) == [PingAcked(b"keepaliv")]


def test_windows_below_the_protocol_default_are_refused() -> None:
    # the peer may send 65535 bytes before it reads our SETTINGS: a smaller window would fail it unfairly
    with pytest.raises(ValueError, match="at least 65535"):
        H2Limits(initial_window=32 * 1024)


@pytest.mark.parametrize("block", [b"\x80", b"\x44\x83\xff\xff\xff", b"\x3f\xe1\x7f"], ids=["index 0", "padding",
                                                                                          "table over ours"])
def test_a_malformed_header_block_is_a_compression_error(block: bytes) -> None:
    core, peer = server()
    events = core.receive_data(peer.headers(1, block=block), 0.0)
    assert terminated(events).error_code == 0x9  # COMPRESSION_ERROR (RFC 9113 section 4.3)
    assert goaway_code(core) == 0x9
    assert core.counters == {"compression_error": 1}


def test_the_core_encodes_with_our_hpack_and_keeps_a_sensitive_field_out_of_both_tables() -> None:
    client, srv = H2Connection(client_side=True), H2Connection(client_side=False)
    # the h2-backed core hangs its codec on h2's connection, ours keeps it itself
    client_codec, srv_codec = getattr(client, "_h2", client), getattr(srv, "_h2", srv)
    assert type(client_codec.encoder).__module__ == "sidecar.http2.hpack"
    pump(client, srv)
    secret = [*REQUEST, (b"authorization", b"Bearer abc")]
    client.start_request(secret, end_stream=True)
    [head, _] = pump(client, srv)
    assert isinstance(head, HeadersReceived) and head.headers == secret
    assert all(name != b"authorization" for name, _ in client_codec.encoder._entries)
    assert all(name != b"authorization" for name, _ in srv_codec.decoder._entries)
