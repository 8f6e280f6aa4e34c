"""One direction of an HTTP/2 connection through sidecar.http2's frames and HPACK and through hyperframe and
hpack: both agree frame by frame and header block by header block, or (bad input) both reject."""

from __future__ import annotations

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import ContinuationFrame, HeadersFrame, PushPromiseFrame
from hyperframe.frame import Frame as HFrame

from sidecar.http2 import frames
from sidecar.http2.hpack import Decoder
from sidecar.http2.hpack_errors import HeaderBlockError
from sidecar.http2.preface import PREFACE


def _reference_frames(wire: bytes) -> list[HFrame] | None:
    theirs: list[HFrame] = []
    view, at = memoryview(wire), 0
    try:
        while len(wire) - at >= 9:
            frame, length = HFrame.parse_frame_header(view[at:at + 9])
            if len(wire) - at - 9 < length:
                break
            frame.parse_body(view[at + 9:at + 9 + length])
            theirs.append(frame)
            at += 9 + length
    except (HyperframeError, ValueError):
        return None
    return theirs


def replay(wire: bytes, strict: bool = True) -> tuple[int, int]:
    """(frames, header blocks) compared; ``strict``: the bytes are a real capture, so nothing may be rejected.
    Otherwise our parsers may raise only their own errors, and a block we reject hpack must reject too."""
    if wire.startswith(PREFACE):
        wire = wire[len(PREFACE):]
    try:
        ours = frames.FrameParser(max_frame_size=frames.MAX_MAX_FRAME_SIZE).feed(wire)
    except frames.H2FrameError:
        assert not strict
        return 0, 0
    theirs = _reference_frames(wire)
    if theirs is None:  # hyperframe checks what RFC 9113 leaves to the connection (see test_http2_codec.py)
        assert not strict
        return len(ours), 0
    assert len(ours) == len(theirs)
    decoder, reference = Decoder(), hpack.Decoder()
    block = bytearray()
    blocks = 0
    for mine, frame in zip(ours, theirs, strict=True):
        assert (mine.kind, mine.stream_id) == (frame.type, frame.stream_id)
        if isinstance(frame, HeadersFrame | PushPromiseFrame | ContinuationFrame):
            assert bytes(mine.data) == frame.data
            block += frame.data
            if "END_HEADERS" in frame.flags:
                try:
                    decoded = decoder.decode(bytes(block), raw=True)
                except HeaderBlockError:
                    assert not strict
                    try:
                        reference.decode(bytes(block), raw=True)
                    except hpack.HPACKError:
                        return len(ours), blocks
                    raise
                assert decoded == reference.decode(bytes(block), raw=True)
                block.clear()
                blocks += 1
        elif hasattr(frame, "data"):
            assert bytes(mine.data) == frame.data
    return len(ours), blocks
