"""Differential tests: sidecar.http2.hpack against python-hyper's hpack, sidecar.http2.frames against
hyperframe. The same bytes go through both: equal header lists and frames, or both reject, except where the
RFC requires a check the reference leaves to h2 (each such case is named in ``_known_difference``)."""

from __future__ import annotations

import struct
from typing import Any

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame as HFrame
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http2 import frames as f
from sidecar.http2.hpack import Decoder, Encoder
from sidecar.http2.hpack_errors import HeaderBlockError
from tests.fuzz.strategies import fuzz_settings, mutated
from tests.fuzz.targets import http2_codec

# ---------------------------------------------------------------------------------------------------- HPACK

_COMMON = [b":method", b":path", b":status", b":authority", b":scheme", b"content-type", b"te", b"grpc-status",
           b"grpc-message", b"user-agent", b"traceparent", b"grpc-timeout", b"cookie", b"authorization",
           b"x-custom", b"date", b"content-length"]
names = st.one_of(st.sampled_from(_COMMON), st.binary(min_size=1, max_size=20).map(bytes.lower))
values = st.one_of(st.sampled_from([b"", b"GET", b"POST", b"200", b"application/grpc", b"trailers", b"0"]),
                   st.binary(max_size=60), st.binary(max_size=600))
headers = st.lists(st.tuples(names, values, st.booleans()), max_size=12)
blocks = st.lists(headers, min_size=1, max_size=6)


def _same(ours: list[Any], theirs: list[Any]) -> None:
    assert ours == theirs
    assert [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in ours] == \
        [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in theirs]


@fuzz_settings(300)
@given(blocks, st.lists(st.sampled_from([0, 64, 256, 4096, 1000]), max_size=3))
def test_our_blocks_decode_equal_with_hpack(lists: list[list[tuple[bytes, bytes, bool]]], sizes: list[int]) -> None:
    encoder, reference, ours = Encoder(), hpack.Decoder(), Decoder()
    for i, fields in enumerate(lists):
        if i < len(sizes):
            encoder.header_table_size = sizes[i]  # the peer's SETTINGS_HEADER_TABLE_SIZE changed
        block = encoder.encode(fields)
        expected = [(n, v) for n, v, _ in fields]
        theirs = reference.decode(block, raw=True)
        assert theirs == expected
        _same(ours.decode(block, raw=True), theirs)


@fuzz_settings(300)
@given(blocks, st.booleans())
def test_hpack_blocks_decode_equal_with_ours(lists: list[list[tuple[bytes, bytes, bool]]], huffman: bool) -> None:
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), Decoder()
    for fields in lists:
        block = encoder.encode(fields, huffman=huffman)
        decoded = ours.decode(block, raw=True)
        assert decoded == [(n, v) for n, v, _ in fields]
        _same(decoded, reference.decode(block, raw=True))


def _seed_blocks() -> list[bytes]:
    encoder = hpack.Encoder()
    request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.S/M"), (b":authority", b"svc"),
               (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"x-k", b"v" * 40)]
    return [encoder.encode(request), encoder.encode(request), encoder.encode([(b":status", b"200")]),
            encoder.encode([(b"grpc-status", b"0"), (b"password", b"x", True)]), b"\x3f\xe1\x1f\x82"]


@st.composite
def mutated_blocks(draw: st.DrawFn) -> list[bytes]:
    out = []
    for block in _seed_blocks()[: draw(st.integers(1, 5))]:
        data = bytearray(block)
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, max(0, len(data) - 1)))
            edit = draw(st.integers(0, 2))
            if edit == 0 and data:
                data[at] = draw(st.integers(0, 255))
            elif edit == 1:
                del data[at:]
            else:
                data[at:at] = draw(st.binary(max_size=8))
        out.append(bytes(data))
    return out


@fuzz_settings(500)
@given(st.one_of(mutated_blocks(), st.lists(st.binary(max_size=64), min_size=1, max_size=3)),
       st.sampled_from([64, 300, 65536]))
def test_any_block_sequence_decodes_equal_or_both_reject(sequence: list[bytes], list_limit: int) -> None:
    reference, ours = hpack.Decoder(max_header_list_size=list_limit), Decoder(max_header_list_size=list_limit)
    for block in sequence:
        try:
            theirs = reference.decode(block, raw=True)
        except hpack.HPACKError as e:
            try:
                ours.decode(block, raw=True)
            except HeaderBlockError as mine:
                assert isinstance(mine, hpack.OversizedHeaderListError) == isinstance(e, hpack.OversizedHeaderListError)
                return
            raise AssertionError(f"hpack rejected {block.hex()} ({e}), we accepted it") from None
        _same(ours.decode(block, raw=True), theirs)
        assert ours._entries == [tuple(e) for e in reversed(reference.header_table.dynamic_entries)]


# --------------------------------------------------------------------------------------------------- frames

_DEFINED = {f.DATA: 0x9, f.HEADERS: 0x2D, f.SETTINGS: 0x1, f.PUSH_PROMISE: 0xC, f.PING: 0x1, f.CONTINUATION: 0x4}


def _theirs(raw: bytes) -> tuple[Any, ...] | None:
    try:
        frame, length = HFrame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:9 + length]))
    except (HyperframeError, ValueError):
        return None
    flags = 0
    for flag in frame.defined_flags:
        if flag.name in frame.flags:
            flags |= flag.bit
    return (frame.type, flags, frame.stream_id, bytes(getattr(frame, "data", b"") or getattr(frame, "opaque_data", b"")
                                                      or getattr(frame, "additional_data", b"")),
            getattr(frame, "pad_length", 0), getattr(frame, "depends_on", 0), bool(getattr(frame, "exclusive", False)),
            getattr(frame, "stream_weight", 0) if "PRIORITY" in frame.flags or frame.type == 2 else 0,
            getattr(frame, "error_code", 0), sorted(getattr(frame, "settings", {}).items()),
            getattr(frame, "promised_stream_id", 0), getattr(frame, "last_stream_id", 0),
            getattr(frame, "window_increment", 0))


def _ours(raw: bytes) -> tuple[Any, ...] | None:
    length = int.from_bytes(raw[:3], "big")
    stream_id = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
    try:
        frame = f.parse_frame(raw[3], raw[4], stream_id, memoryview(raw[9:9 + length]))
    except f.H2FrameError:
        return None
    settings: dict[int, int] = dict(frame.settings)  # a repeated setting: the last one counts
    return (frame.kind, frame.flags & _DEFINED.get(frame.kind, 0), frame.stream_id, bytes(frame.data),
            frame.pad_length, frame.depends_on, frame.exclusive, frame.weight, frame.error_code,
            sorted(settings.items()), frame.promised_stream_id, frame.last_stream_id, frame.increment)


def _known_difference(raw: bytes) -> str | None:
    """Why the two may disagree on ``raw`` (RFC 9113 checks hyperframe leaves to h2, or gets otherwise)."""
    length, kind, flags = int.from_bytes(raw[:3], "big"), raw[3], raw[4]
    payload = raw[9:9 + length]
    if kind == f.SETTINGS:
        for at in range(0, len(payload) - 5, 6):
            ident, value = struct.unpack(">HL", payload[at:at + 6])
            if (ident == 2 and value > 1) or (ident == 4 and value > 2**31 - 1) or \
                    (ident == 5 and not 16384 <= value <= 2**24 - 1):
                return "setting value out of range (hyperframe leaves it to h2)"
    if kind in (f.HEADERS, f.PUSH_PROMISE) and flags & f.PADDED and payload:
        return "padding against the fixed fields (hyperframe: HEADERS may not leave an empty fragment, " \
               "and neither checks padding overlapping priority or the promised id)"
    if kind == f.PUSH_PROMISE and len(payload) >= 4 and payload[0] & 0x80:
        return "PUSH_PROMISE's reserved bit (RFC 9113 says ignore it; hyperframe keeps it in the stream id)"
    if kind == f.GOAWAY and len(payload) >= 8 and payload[0] & 0x80:
        return "GOAWAY's reserved bit (RFC 9113 says ignore it; hyperframe keeps it in the last stream id)"
    if kind == f.WINDOW_UPDATE and len(payload) == 4 and payload[0] & 0x80:
        return "WINDOW_UPDATE's reserved bit (RFC 9113 says ignore it; hyperframe rejects the value)"
    if kind > f.CONTINUATION:
        return "extension frame type (hyperframe parses ALTSVC; we pass unknown types through)"
    return None


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    sid = draw(st.sampled_from([0, 1, 2, 3, 2**31 - 1]))
    pad = draw(st.sampled_from([-1, 0, 3]))
    data = draw(st.binary(max_size=40))
    kind = draw(st.integers(0, 9))
    if kind == f.DATA:
        raw = f.data_frame(sid, data, draw(st.booleans()), pad)
    elif kind == f.HEADERS:
        prio = draw(st.none() | st.tuples(st.integers(0, 2**31 - 1), st.booleans(), st.integers(0, 255)))
        raw = f.headers_frame(sid, data, draw(st.booleans()), draw(st.booleans()), pad, prio)
    elif kind == f.PRIORITY:
        raw = f.priority_frame(sid, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()), draw(st.integers(0, 255)))
    elif kind == f.RST_STREAM:
        raw = f.rst_stream_frame(sid, draw(st.integers(0, 2**32 - 1)))
    elif kind == f.SETTINGS:
        raw = f.settings_frame(draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**32 - 1)), max_size=4)),
                               draw(st.booleans()))
    elif kind == f.PUSH_PROMISE:
        raw = f.push_promise_frame(sid, draw(st.integers(0, 2**31 - 1)), data, draw(st.booleans()), pad)
    elif kind == f.PING:
        raw = f.ping_frame(draw(st.binary(min_size=8, max_size=8)), draw(st.booleans()))
    elif kind == f.GOAWAY:
        raw = f.goaway_frame(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**32 - 1)), data)
    elif kind == f.WINDOW_UPDATE:
        raw = f.window_update_frame(sid, draw(st.integers(0, 2**31 - 1)))
    else:
        raw = f.continuation_frame(sid, data, draw(st.booleans()))
    if draw(st.booleans()):  # break it: a byte changed, or the length field lying about the payload
        body = bytearray(raw)
        at = draw(st.integers(0, len(body) - 1))
        body[at] = draw(st.integers(0, 255))
        raw = bytes(body)
    length = int.from_bytes(raw[:3], "big")
    return raw[:9 + length] + bytes(max(0, 9 + length - len(raw)))  # the payload exactly ``length`` long


@fuzz_settings(1000)
@given(frame_bytes())
def test_frames_parse_equal_with_hyperframe_or_both_reject(raw: bytes) -> None:
    if int.from_bytes(raw[:3], "big") > 2**14 + 100:
        return  # a lying length: nothing to compare byte for byte
    ours, theirs = _ours(raw), _theirs(raw)
    if ours != theirs:
        assert _known_difference(raw), f"{raw.hex()}: ours {ours}, hyperframe {theirs}"


@fuzz_settings(200)
@given(st.lists(frame_bytes(), max_size=8), st.lists(st.integers(1, 64), max_size=10))
def test_the_streaming_parser_cuts_the_same_frames_however_the_bytes_arrive(parts: list[bytes],
                                                                            cuts: list[int]) -> None:
    wire = b"".join(p for p in parts if _ours(p) is not None and int.from_bytes(p[:3], "big") <= 16384)
    whole = [_summary(fr) for fr in f.FrameParser().feed(wire)]
    parser, got, at = f.FrameParser(), [], 0
    for cut in cuts:
        got += [_summary(fr) for fr in parser.feed(wire[at:at + cut])]
        at += cut
    got += [_summary(fr) for fr in parser.feed(wire[at:])]
    assert got == whole
    assert len(whole) == len([p for p in parts if _ours(p) is not None and int.from_bytes(p[:3], "big") <= 16384])


def _summary(frame: f.Frame) -> tuple[int, int, int, bytes]:
    return frame.kind, frame.flags, frame.stream_id, bytes(frame.data)


@fuzz_settings(300)
@given(mutated("http2_codec", max_noise=32))
def test_mutated_real_traffic_parses_equal_or_both_reject(data: bytes) -> None:
    http2_codec(data)
