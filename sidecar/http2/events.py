"""What the HTTP/2 core reports: one dataclass per event. Header lists are (name, value) bytes pairs,
names lower case, pseudo-headers first, as they came on the wire.

Each event is read-only by convention and has an ``__init__`` of its own (``init=False``): compiled, that is a
native constructor, where the generated one of a dataclass (frozen ones set each field through
``object.__setattr__``) runs as Python, several times a request."""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True, init=False)
class HeadersReceived:
    """A request's (server side) or response's (client side) header block; ``end_stream``: no body follows."""

    stream_id: int
    headers: Headers
    end_stream: bool

    def __init__(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream


@dataclass(slots=True, init=False)
class DataReceived:
    """Body bytes. Call ``acknowledge(stream_id, flow_length)`` once they are passed on: until then they
    count against the peer's window, which is how a slow reader slows the writer."""

    stream_id: int
    data: bytes
    flow_length: int

    def __init__(self, stream_id: int, data: bytes, flow_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_length = flow_length


@dataclass(slots=True, init=False)
class TrailersReceived:
    stream_id: int
    headers: Headers

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


@dataclass(slots=True, init=False)
class StreamEnded:
    """The peer finished its side of the stream (END_STREAM)."""

    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, init=False)
class StreamReset:
    """The stream is gone: reset by the peer (``remote``), by the core refusing it, or not processed before
    the peer's GOAWAY (``error_code`` REFUSED_STREAM: safe to retry elsewhere)."""

    stream_id: int
    error_code: int
    remote: bool

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


@dataclass(slots=True, init=False)
class StreamWritable:
    """A stream's outgoing buffer fell below the high-water mark again: the producer may resume."""

    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, init=False)
class PingAcked:
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True, init=False)
class GoAwayReceived:
    """The peer will process no stream above ``last_stream_id``; streams at or below it finish."""

    last_stream_id: int
    error_code: int

    def __init__(self, last_stream_id: int, error_code: int) -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code


@dataclass(slots=True, init=False)
class ConnectionTerminated:
    """The connection is over: a GOAWAY is queued (ours, for ``reason``) or the peer sent one with an error.
    Write what ``data_to_send`` holds, then close."""

    error_code: int
    reason: str
    remote: bool

    def __init__(self, error_code: int, reason: str, remote: bool) -> None:
        self.error_code = error_code
        self.reason = reason
        self.remote = remote


Event = (HeadersReceived | DataReceived | TrailersReceived | StreamEnded | StreamReset | StreamWritable
         | PingAcked | GoAwayReceived | ConnectionTerminated)
