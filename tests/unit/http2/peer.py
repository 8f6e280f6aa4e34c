"""A raw HTTP/2 peer for the core's tests: frames built with hyperframe and hpack, no h2 state machine, so a
test can send what a well-behaved client never would."""

from __future__ import annotations

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.http2.preface import PREFACE

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Service/Method"),
           (b":authority", b"payment-service"), (b"content-type", b"application/grpc")]


class RawPeer:
    def __init__(self) -> None:
        self.encoder = Encoder()

    def preface(self) -> bytes:
        return PREFACE + SettingsFrame(0).serialize()

    def block(self, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        return bytes(self.encoder.encode(headers or REQUEST))

    def headers(self, stream_id: int, headers: list[tuple[bytes, bytes]] | None = None, *, end_stream: bool = False,
                end_headers: bool = True, block: bytes | None = None) -> bytes:
        flags = {"END_HEADERS"} if end_headers else set()
        if end_stream:
            flags.add("END_STREAM")
        return HeadersFrame(stream_id, data=self.block(headers) if block is None else block,
                            flags=flags).serialize()

    @staticmethod
    def continuation(stream_id: int, data: bytes, *, end_headers: bool = False) -> bytes:
        return ContinuationFrame(stream_id, data=data, flags={"END_HEADERS"} if end_headers else set()).serialize()

    @staticmethod
    def data(stream_id: int, data: bytes, *, end_stream: bool = False) -> bytes:
        return DataFrame(stream_id, data=data, flags={"END_STREAM"} if end_stream else set()).serialize()

    @staticmethod
    def rst(stream_id: int, code: int = 8) -> bytes:
        return RstStreamFrame(stream_id, error_code=code).serialize()

    @staticmethod
    def ping(opaque: bytes = b"12345678") -> bytes:
        return PingFrame(0, opaque_data=opaque).serialize()

    @staticmethod
    def settings() -> bytes:
        return SettingsFrame(0).serialize()

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        return WindowUpdateFrame(stream_id, window_increment=increment).serialize()

    @staticmethod
    def goaway(last: int, code: int = 0) -> bytes:
        return GoAwayFrame(0, last_stream_id=last, error_code=code).serialize()


def frames(data: bytes) -> list[Frame]:
    """Parse what the core wrote (no preface: the core under test is the server)."""
    out: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        out.append(frame)
        view = view[9 + length:]
    return out
