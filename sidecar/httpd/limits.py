"""The limits of one listener of this server, its counters, and what a refused request is answered (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.errors import HeadersTooLarge, InvalidArgument, SidecarError
from sidecar.proxy.http1 import HeadLimits, MalformedRequest, RequestHeadTooLarge


@dataclass(frozen=True, slots=True)
class WebLimits:
    """Protocol limits of one listener, with the reason for each default."""

    # the whole request head, like the data plane's listeners (HeadLimits: 60 KiB, 100 headers)
    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # one request target, or one header's name and value together; nginx's large_client_header_buffers is 8k
    max_field_bytes: int = 8190
    # a request head must be complete this soon after the connection opens or its first byte arrives, and its
    # body this soon after the head
    header_timeout: float = 10.0
    # a kept-alive connection with no request is closed after this; longer than the keep-alive of common client
    # pools (15-60 s), so the client usually closes first
    idle_timeout: float = 75.0
    # open connections; the APIs are local and used by one app and a few operators' tools
    max_connections: int = 256
    # a refused connection is half-closed and read for this long before closing, so the client reads the 429
    refuse_linger: float = 1.0
    # complete requests read ahead of the one being served (pipelining) before reading pauses
    max_pipelined: int = 8

    def head_limits(self) -> HeadLimits:
        return HeadLimits(self.max_head_bytes, self.max_headers, self.max_field_bytes)


DEFAULT_WEB_LIMITS = WebLimits()


def body_too_large(limit: int) -> InvalidArgument:
    """A request body over the app's limit: answered before the handler runs, and the connection closed."""
    return InvalidArgument(f"request body is larger than {limit} bytes", {"limit": limit})


def refusal(exc: SidecarError) -> SidecarError:
    """What to answer for a request the reader refused: SPEC's shape, saying it is the request's head or framing."""
    if isinstance(exc, RequestHeadTooLarge):
        return HeadersTooLarge(f"request head too large: {exc.message}", exc.details)
    if isinstance(exc, MalformedRequest):
        reason = exc.message.removeprefix("malformed request: ")[:200]
        return InvalidArgument(f"malformed HTTP request: {reason}", {**exc.details, "reason": reason})
    return exc
