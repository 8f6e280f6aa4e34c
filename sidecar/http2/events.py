"""What the HTTP/2 core reports: one frozen dataclass per event. Header lists are (name, value) bytes pairs,
names lower case, pseudo-headers first, as they came on the wire."""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """A request's (server side) or response's (client side) header block; ``end_stream``: no body follows."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes. Call ``acknowledge(stream_id, flow_length)`` once they are passed on: until then they
    count against the peer's window, which is how a slow reader slows the writer."""

    stream_id: int
    data: bytes
    flow_length: int


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer finished its side of the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: reset by the peer (``remote``), by the core refusing it, or not processed before
    the peer's GOAWAY (``error_code`` REFUSED_STREAM: safe to retry elsewhere)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """A stream's outgoing buffer fell below the high-water mark again: the producer may resume."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcked:
    data: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer will process no stream above ``last_stream_id``; streams at or below it finish."""

    last_stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over: a GOAWAY is queued (ours, for ``reason``) or the peer sent one with an error.
    Write what ``data_to_send`` holds, then close."""

    error_code: int
    reason: str
    remote: bool


Event = (HeadersReceived | DataReceived | TrailersReceived | StreamEnded | StreamReset | StreamWritable
         | PingAcked | GoAwayReceived | ConnectionTerminated)
