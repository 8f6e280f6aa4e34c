"""HTTP/2 frames (RFC 9113 section 6): the ten frame types parsed and serialized, with the RFC's checks of
length, stream id and padding, compiled with mypyc.

:class:`FrameParser` takes bytes as they arrive and returns the complete frames; a frame's payload fields are
``memoryview`` slices of the received bytes (no copy) until the caller keeps them. A frame the RFC calls
malformed raises :class:`H2FrameError` with the error code to send and whether it ends the connection (stream id
0) or only its stream. Frames of unknown types are returned as they are (section 4.1 says ignore them).
"""

from __future__ import annotations

from typing import Final

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

PROTOCOL_ERROR: Final = 0x1
FLOW_CONTROL_ERROR: Final = 0x3
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
MAX_WINDOW: Final = 2**31 - 1
MIN_MAX_FRAME_SIZE: Final = 16384
MAX_MAX_FRAME_SIZE: Final = 2**24 - 1
HEADER_LENGTH: Final = 9
_EMPTY: Final = memoryview(b"")


class H2FrameError(Exception):
    """A malformed frame: send ``code`` in a GOAWAY (``stream_id`` 0) or an RST_STREAM on ``stream_id``."""

    def __init__(self, code: int, stream_id: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.stream_id = stream_id
        self.reason = reason


class Frame:
    """One frame; only the fields of its type are set (the others keep their defaults)."""

    def __init__(self, kind: int, flags: int, stream_id: int) -> None:
        self.kind = kind
        self.flags = flags
        self.stream_id = stream_id
        # DATA, HEADERS, PUSH_PROMISE, CONTINUATION: the (unpadded) payload; PING: the 8 octets; GOAWAY: debug
        # data; unknown types: the whole payload
        self.data: memoryview = _EMPTY
        self.pad_length = 0
        self.depends_on = 0  # HEADERS with PRIORITY, PRIORITY
        self.exclusive = False
        self.weight = 0  # the wire value (0-255): the weight is one more
        self.error_code = 0  # RST_STREAM, GOAWAY
        self.settings: list[tuple[int, int]] = []
        self.promised_stream_id = 0
        self.last_stream_id = 0
        self.increment = 0


def _u32(b: memoryview, at: int) -> int:
    return (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]


def _unpad(frame: Frame, payload: memoryview, fixed: int) -> memoryview:
    """``payload`` without its Pad Length octet and padding, starting ``fixed`` octets after them."""
    if frame.flags & PADDED:
        if len(payload) < 1 + fixed:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, "padded frame too short for its fields")
        pad = payload[0]
        if pad + 1 + fixed > len(payload):
            raise H2FrameError(PROTOCOL_ERROR, 0, f"padding of {pad} octets fills the frame")
        frame.pad_length = pad
        return payload[1:len(payload) - pad]
    return payload


def _need_stream(frame: Frame, name: str) -> None:
    if frame.stream_id == 0:
        raise H2FrameError(PROTOCOL_ERROR, 0, f"{name} frame on stream 0")


def _no_stream(frame: Frame, name: str) -> None:
    if frame.stream_id != 0:
        raise H2FrameError(PROTOCOL_ERROR, 0, f"{name} frame on stream {frame.stream_id}")


def parse_frame(kind: int, flags: int, stream_id: int, payload: memoryview) -> Frame:
    """One frame from its header fields and payload; raises :class:`H2FrameError` when malformed."""
    frame = Frame(kind, flags, stream_id)
    n = len(payload)
    if kind == DATA:
        _need_stream(frame, "DATA")
        frame.data = _unpad(frame, payload, 0)
    elif kind == HEADERS:
        _need_stream(frame, "HEADERS")
        fixed = 5 if flags & PRIORITY_FLAG else 0
        body = _unpad(frame, payload, fixed)
        if fixed:
            if len(body) < 5:
                raise H2FrameError(FRAME_SIZE_ERROR, 0, "HEADERS priority fields cut short")
            word = _u32(body, 0)
            frame.exclusive, frame.depends_on, frame.weight = bool(word >> 31), word & MAX_WINDOW, body[4]
            body = body[5:]
        frame.data = body
    elif kind == PRIORITY:
        _need_stream(frame, "PRIORITY")
        if n != 5:
            raise H2FrameError(FRAME_SIZE_ERROR, stream_id, f"PRIORITY frame of {n} octets")
        word = _u32(payload, 0)
        frame.exclusive, frame.depends_on, frame.weight = bool(word >> 31), word & MAX_WINDOW, payload[4]
    elif kind == RST_STREAM:
        _need_stream(frame, "RST_STREAM")
        if n != 4:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, f"RST_STREAM frame of {n} octets")
        frame.error_code = _u32(payload, 0)
    elif kind == SETTINGS:
        _no_stream(frame, "SETTINGS")
        if flags & ACK and n:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, "SETTINGS acknowledgement with a payload")
        if n % 6:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, f"SETTINGS frame of {n} octets")
        for at in range(0, n, 6):
            ident, value = (payload[at] << 8) | payload[at + 1], _u32(payload, at + 2)
            _check_setting(ident, value)
            frame.settings.append((ident, value))
    elif kind == PUSH_PROMISE:
        _need_stream(frame, "PUSH_PROMISE")
        body = _unpad(frame, payload, 4)
        if len(body) < 4:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, "PUSH_PROMISE without a promised stream id")
        frame.promised_stream_id = _u32(body, 0) & MAX_WINDOW
        if frame.promised_stream_id == 0 or frame.promised_stream_id % 2:  # servers push on even streams
            raise H2FrameError(PROTOCOL_ERROR, 0, f"PUSH_PROMISE of stream {frame.promised_stream_id}")
        frame.data = body[4:]
    elif kind == PING:
        _no_stream(frame, "PING")
        if n != 8:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, f"PING frame of {n} octets")
        frame.data = payload
    elif kind == GOAWAY:
        _no_stream(frame, "GOAWAY")
        if n < 8:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, f"GOAWAY frame of {n} octets")
        frame.last_stream_id = _u32(payload, 0) & MAX_WINDOW
        frame.error_code = _u32(payload, 4)
        frame.data = payload[8:]
    elif kind == WINDOW_UPDATE:
        if n != 4:
            raise H2FrameError(FRAME_SIZE_ERROR, 0, f"WINDOW_UPDATE frame of {n} octets")
        frame.increment = _u32(payload, 0) & MAX_WINDOW
        if frame.increment == 0:
            raise H2FrameError(PROTOCOL_ERROR, stream_id, "WINDOW_UPDATE of 0")
    elif kind == CONTINUATION:
        _need_stream(frame, "CONTINUATION")
        frame.data = payload
    else:
        frame.data = payload
    return frame


def _check_setting(ident: int, value: int) -> None:
    if ident == SETTINGS_ENABLE_PUSH and value > 1:
        raise H2FrameError(PROTOCOL_ERROR, 0, f"SETTINGS_ENABLE_PUSH of {value}")
    if ident == SETTINGS_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
        raise H2FrameError(FLOW_CONTROL_ERROR, 0, f"SETTINGS_INITIAL_WINDOW_SIZE of {value}")
    if ident == SETTINGS_MAX_FRAME_SIZE and not MIN_MAX_FRAME_SIZE <= value <= MAX_MAX_FRAME_SIZE:
        raise H2FrameError(PROTOCOL_ERROR, 0, f"SETTINGS_MAX_FRAME_SIZE of {value}")


class FrameParser:
    """Complete frames out of a byte stream (after the connection preface), at most ``max_frame_size`` each."""

    def __init__(self, max_frame_size: int = MIN_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames ``data`` completes; a partial frame waits for more. Payload views stay valid: each
        call's frames are cut from one immutable copy of the bytes they span."""
        if self._buffer:
            self._buffer += data
            chunk = bytes(self._buffer)
            self._buffer.clear()
        else:
            chunk = data if isinstance(data, bytes) else bytes(data)
        view = memoryview(chunk)
        frames: list[Frame] = []
        pos = 0
        end = len(chunk)
        while end - pos >= HEADER_LENGTH:
            length = (chunk[pos] << 16) | (chunk[pos + 1] << 8) | chunk[pos + 2]
            if length > self.max_frame_size:
                raise H2FrameError(FRAME_SIZE_ERROR, 0, f"frame of {length} octets, over {self.max_frame_size}")
            if end - pos - HEADER_LENGTH < length:
                break
            stream_id = ((chunk[pos + 5] << 24) | (chunk[pos + 6] << 16) | (chunk[pos + 7] << 8)
                         | chunk[pos + 8]) & MAX_WINDOW
            start = pos + HEADER_LENGTH
            frames.append(parse_frame(chunk[pos + 3], chunk[pos + 4], stream_id, view[start:start + length]))
            pos = start + length
        if pos < end:
            self._buffer += view[pos:]
        return frames


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return bytes((length >> 16, (length >> 8) & 0xFF, length & 0xFF, kind, flags,
                  (stream_id >> 24) & 0x7F, (stream_id >> 16) & 0xFF, (stream_id >> 8) & 0xFF, stream_id & 0xFF))


def _u32_bytes(value: int) -> bytes:
    return bytes(((value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))


def _padded(payload: bytes, pad_length: int) -> bytes:
    return bytes((pad_length,)) + payload + bytes(pad_length)


def data_frame(stream_id: int, data: bytes, end_stream: bool = False, pad_length: int = -1) -> bytes:
    """``pad_length`` >= 0 sets PADDED with that many octets of padding."""
    flags = END_STREAM if end_stream else 0
    if pad_length >= 0:
        data = _padded(data, pad_length)
        flags |= PADDED
    return frame_header(len(data), DATA, flags, stream_id) + data


def headers_frame(stream_id: int, block: bytes, end_stream: bool = False, end_headers: bool = True,
                  pad_length: int = -1, priority: tuple[int, bool, int] | None = None) -> bytes:
    """``priority``: (depends_on, exclusive, wire weight 0-255)."""
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    if priority is not None:
        depends_on, exclusive, weight = priority
        block = _u32_bytes(depends_on | (1 << 31 if exclusive else 0)) + bytes((weight,)) + block
        flags |= PRIORITY_FLAG
    if pad_length >= 0:
        block = _padded(block, pad_length)
        flags |= PADDED
    return frame_header(len(block), HEADERS, flags, stream_id) + block


def priority_frame(stream_id: int, depends_on: int, exclusive: bool, weight: int) -> bytes:
    payload = _u32_bytes(depends_on | (1 << 31 if exclusive else 0)) + bytes((weight,))
    return frame_header(5, PRIORITY, 0, stream_id) + payload


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    return frame_header(4, RST_STREAM, 0, stream_id) + _u32_bytes(error_code)


def settings_frame(settings: list[tuple[int, int]], ack: bool = False) -> bytes:
    payload = b"".join(bytes(((ident >> 8) & 0xFF, ident & 0xFF)) + _u32_bytes(value) for ident, value in settings)
    return frame_header(len(payload), SETTINGS, ACK if ack else 0, 0) + payload


def push_promise_frame(stream_id: int, promised_stream_id: int, block: bytes, end_headers: bool = True,
                       pad_length: int = -1) -> bytes:
    flags = END_HEADERS if end_headers else 0
    payload = _u32_bytes(promised_stream_id) + block
    if pad_length >= 0:
        payload = _padded(payload, pad_length)
        flags |= PADDED
    return frame_header(len(payload), PUSH_PROMISE, flags, stream_id) + payload


def ping_frame(opaque: bytes, ack: bool = False) -> bytes:
    if len(opaque) != 8:
        raise ValueError(f"PING carries 8 octets (got {len(opaque)})")
    return frame_header(8, PING, ACK if ack else 0, 0) + opaque


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    payload = _u32_bytes(last_stream_id) + _u32_bytes(error_code) + debug
    return frame_header(len(payload), GOAWAY, 0, 0) + payload


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + _u32_bytes(increment)


def continuation_frame(stream_id: int, block: bytes, end_headers: bool = True) -> bytes:
    return frame_header(len(block), CONTINUATION, END_HEADERS if end_headers else 0, stream_id) + block
