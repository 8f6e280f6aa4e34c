"""sidecar.http2.frames: each frame type's fields round-trip, and each RFC 9113 rule rejects with its code."""

from __future__ import annotations

import pytest

from sidecar.http2 import frames as f


def parse(raw: bytes) -> f.Frame:
    [frame] = f.FrameParser().feed(raw)
    return frame


def test_every_frame_type_round_trips() -> None:
    data = parse(f.data_frame(1, b"body", end_stream=True, pad_length=3))
    assert (data.kind, bytes(data.data), data.pad_length, data.flags) == (f.DATA, b"body", 3, f.END_STREAM | f.PADDED)
    headers = parse(f.headers_frame(3, b"\x82", end_stream=True, pad_length=2, priority=(1, True, 15)))
    assert (bytes(headers.data), headers.depends_on, headers.exclusive, headers.weight) == (b"\x82", 1, True, 15)
    assert headers.flags == f.END_STREAM | f.END_HEADERS | f.PADDED | f.PRIORITY_FLAG
    prio = parse(f.priority_frame(5, 3, False, 200))
    assert (prio.depends_on, prio.exclusive, prio.weight) == (3, False, 200)
    assert parse(f.rst_stream_frame(7, 8)).error_code == 8
    settings = parse(f.settings_frame([(1, 0), (4, 2**31 - 1), (5, 16384), (0x99, 7)]))
    assert settings.settings == [(1, 0), (4, 2**31 - 1), (5, 16384), (0x99, 7)]
    assert parse(f.settings_frame([], ack=True)).flags == f.ACK
    push = parse(f.push_promise_frame(1, 2, b"\x82", pad_length=1))
    assert (push.promised_stream_id, bytes(push.data)) == (2, b"\x82")
    assert bytes(parse(f.ping_frame(b"12345678", ack=True)).data) == b"12345678"
    goaway = parse(f.goaway_frame(9, 2, b"why"))
    assert (goaway.last_stream_id, goaway.error_code, bytes(goaway.data)) == (9, 2, b"why")
    assert parse(f.window_update_frame(0, 1000)).increment == 1000
    assert bytes(parse(f.continuation_frame(1, b"\x84", end_headers=False)).data) == b"\x84"
    unknown = parse(f.frame_header(3, 0xFA, 0xFF, 1) + b"abc")  # an extension: passed through, not an error
    assert (unknown.kind, bytes(unknown.data)) == (0xFA, b"abc")


@pytest.mark.parametrize(("raw", "code", "stream_id"), [
    (f.data_frame(0, b"x"), f.PROTOCOL_ERROR, 0),  # DATA on stream 0
    (f.frame_header(2, f.DATA, f.PADDED, 1) + b"\x02x", f.PROTOCOL_ERROR, 0),  # padding fills the frame
    (f.frame_header(0, f.DATA, f.PADDED, 1), f.FRAME_SIZE_ERROR, 0),  # PADDED without a Pad Length
    (f.frame_header(4, f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1) + b"\x00\x00\x00\x00", f.FRAME_SIZE_ERROR, 0),
    (f.frame_header(7, f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1) + b"\x02\x00\x00\x00\x01\x10\x00",
     f.PROTOCOL_ERROR, 0),  # padding overlapping the priority fields
    (f.headers_frame(0, b"\x82"), f.PROTOCOL_ERROR, 0),
    (f.frame_header(4, f.PRIORITY, 0, 3) + b"\x00" * 4, f.FRAME_SIZE_ERROR, 3),  # a stream error
    (f.frame_header(3, f.RST_STREAM, 0, 1) + b"\x00" * 3, f.FRAME_SIZE_ERROR, 0),
    (f.rst_stream_frame(0, 8), f.PROTOCOL_ERROR, 0),
    (f.frame_header(6, f.SETTINGS, 0, 1) + b"\x00\x01\x00\x00\x00\x00", f.PROTOCOL_ERROR, 0),  # on a stream
    (f.frame_header(5, f.SETTINGS, 0, 0) + b"\x00" * 5, f.FRAME_SIZE_ERROR, 0),
    (f.frame_header(6, f.SETTINGS, f.ACK, 0) + b"\x00\x01\x00\x00\x00\x00", f.FRAME_SIZE_ERROR, 0),
    (f.settings_frame([(2, 2)]), f.PROTOCOL_ERROR, 0),  # ENABLE_PUSH not 0 or 1
    (f.settings_frame([(4, 2**31)]), f.FLOW_CONTROL_ERROR, 0),  # INITIAL_WINDOW_SIZE over 2^31-1
    (f.settings_frame([(5, 16383)]), f.PROTOCOL_ERROR, 0),  # MAX_FRAME_SIZE under 16384
    (f.push_promise_frame(1, 3, b""), f.PROTOCOL_ERROR, 0),  # an odd promised stream
    (f.frame_header(7, f.PING, 0, 0) + b"\x00" * 7, f.FRAME_SIZE_ERROR, 0),
    (f.frame_header(8, f.PING, 0, 1) + b"\x00" * 8, f.PROTOCOL_ERROR, 0),
    (f.frame_header(7, f.GOAWAY, 0, 0) + b"\x00" * 7, f.FRAME_SIZE_ERROR, 0),
    (f.goaway_frame(1, 0)[:5] + b"\x00\x00\x00\x01" + f.goaway_frame(1, 0)[9:], f.PROTOCOL_ERROR, 0),
    (f.frame_header(5, f.WINDOW_UPDATE, 0, 1) + b"\x00" * 5, f.FRAME_SIZE_ERROR, 0),
    (f.window_update_frame(5, 0), f.PROTOCOL_ERROR, 5),  # a zero increment on a stream: a stream error
    (f.window_update_frame(0, 0), f.PROTOCOL_ERROR, 0),
    (f.continuation_frame(0, b""), f.PROTOCOL_ERROR, 0),
    (f.frame_header(16385, f.DATA, 0, 1), f.FRAME_SIZE_ERROR, 0),  # over SETTINGS_MAX_FRAME_SIZE
])
def test_rfc_9113_rules_reject_with_their_error_code(raw: bytes, code: int, stream_id: int) -> None:
    with pytest.raises(f.H2FrameError) as e:
        f.FrameParser().feed(raw)
    assert (e.value.code, e.value.stream_id) == (code, stream_id)


def test_payloads_are_views_of_the_received_bytes_and_a_partial_frame_waits() -> None:
    wire = f.data_frame(1, b"a" * 100) + f.data_frame(3, b"b" * 10)
    parser = f.FrameParser()
    first = parser.feed(wire[:120])
    assert len(first) == 1 and isinstance(first[0].data, memoryview) and bytes(first[0].data) == b"a" * 100
    assert parser.feed(b"") == []
    [second] = parser.feed(wire[120:])
    assert (second.stream_id, bytes(second.data)) == (3, b"b" * 10)
    whole = f.data_frame(1, b"c" * 50)
    [view] = f.FrameParser().feed(whole)
    assert view.data.obj is whole  # a slice of the bytes fed, not a copy


def test_reserved_bits_of_stream_ids_are_ignored() -> None:
    """RFC 9113 section 4.1: the R bit is ignored on receipt, in the header and in the payload's stream ids."""
    goaway = parse(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x80\x00\x00\x05\x00\x00\x00\x00")
    assert goaway.last_stream_id == 5
    assert parse(f.frame_header(4, f.WINDOW_UPDATE, 0, 0) + b"\x80\x00\x00\x07").increment == 7
    assert parse(f.frame_header(0, f.DATA, 0, 0x80000003)).stream_id == 3
