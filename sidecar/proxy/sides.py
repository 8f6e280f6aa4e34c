"""The two sides of an exchange, as the engine sees them whatever the codec: :class:`ClientSide` (where the
request came from) and :class:`UpstreamStream` (where it goes), with the pool that hands out upstream
streams (:class:`StreamPools`, :class:`StreamPool`) and what the exchange hears back (:class:`StreamUser`).

The HTTP/1.1 codec implements them in :mod:`~sidecar.proxy.downstream` (one client connection, one request
at a time), :mod:`~sidecar.proxy.upstream` (one pooled connection per request) and :mod:`~sidecar.proxy.pool`;
an HTTP/2 codec implements them per stream. They are compiled abstract classes, not ``Protocol`` types, so
the compiled exchange calls each method through a vtable rather than by name; tests subclass them with fakes.

Framing is the codec's: whether a response goes chunked or close-delimited, when a connection is kept alive,
how an error the sidecar produces is written (a JSON body for HTTP/1.1; trailers-only for a gRPC call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mypy_extensions import mypyc_attr

from sidecar.proxy.http1 import RemoteProtocolError, RequestHead, ResponseHead, Trailers
from sidecar.proxy.target import ConnectionInfo, Target
from sidecar.proxy.tunnel import Tunnel


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientSide:
    """What an exchange does to its client: one request's response, in order.

    A response is ``send_interim``* then ``send_head``, ``send_body``*, ``send_end``; or ``send_error``
    instead of all of it; or ``cut`` at any point after ``send_head``. ``flush`` ends a batch of calls made
    in one event. ``exchange_done`` comes last, once, unless the exchange became a tunnel.
    """

    __slots__ = ()

    def connection_info(self) -> ConnectionInfo:
        """The client connection (listener, peer, certificate) for routing and records."""
        raise NotImplementedError

    def write_paused(self) -> bool:
        """The client reads the response slower than it comes: the upstream stops being read meanwhile."""
        raise NotImplementedError

    def send_interim(self, head: ResponseHead) -> None:
        """A 1xx before the final response (100 Continue, 103 Early Hints)."""
        raise NotImplementedError

    def send_head(self, head: ResponseHead, request: RequestHead) -> None:
        """The final response head; the codec chooses its framing towards the client."""
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        raise NotImplementedError

    def send_end(self, trailers: Trailers | None) -> None:
        """The response is complete (``trailers``, when the upstream sent some, for codecs that carry them)."""
        raise NotImplementedError

    def send_error(self, error: BaseException, request: RequestHead, request_complete: bool) -> int:
        """Answer with the sidecar's own error for ``error`` (SPEC's table) instead of a response; the status."""
        raise NotImplementedError

    def cut(self) -> None:
        """Fail the response after its head went out: the client must see it incomplete (reset, abort)."""
        raise NotImplementedError

    def pause_request(self, reason: str, paused: bool) -> None:
        """Stop or resume reading the request body, for ``reason`` (each reason is paused and resumed apart)."""
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def exchange_done(self, request_complete: bool, now: float) -> None:
        """The exchange ended (response sent or error answered) at loop time ``now``; ``request_complete``: its
        body was all read."""
        raise NotImplementedError

    def open_tunnel(self, server: asyncio.Transport, rest: bytes, on_done: Callable[[Tunnel], None]) -> Tunnel:
        """After a 101: splice the client to ``server``; ``rest`` is what the server sent after its head."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class StreamUser:
    """What an upstream stream and its pool report to the exchange that holds (or waits for) it."""

    __slots__ = ()

    def on_connection(self, stream: UpstreamStream) -> None:
        raise NotImplementedError

    def on_connect_failed(self, error: BaseException) -> None:
        raise NotImplementedError

    def on_response_interim(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def on_response_head(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def on_response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_response_end(self, trailers: Trailers | None) -> None:
        """The response is complete; ``trailers``: the fields of its trailer section, if it had one."""
        raise NotImplementedError

    def on_upstream_error(self, error: RemoteProtocolError) -> None:
        raise NotImplementedError

    def on_upstream_upgraded(self, rest: bytes) -> None:
        raise NotImplementedError

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def on_upstream_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamStream:
    """What an exchange sends upstream: one request, head first, then body pieces, then its end."""

    __slots__ = ()

    def start(self, user: StreamUser, head: RequestHead, body: list[bytes], end: bool,
              trailers: Trailers | None) -> None:
        """Bind ``user`` for the response and send the head, the body so far and, if ``end``, its end (with
        the request's ``trailers``, for a codec and a framing that carry them)."""
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        raise NotImplementedError

    def send_end(self, trailers: Trailers | None) -> None:
        """The request is complete (``trailers``, when the client sent some, for framings that carry them)."""
        raise NotImplementedError

    def pause_reading(self, paused: bool) -> None:
        """Stop or resume reading the response (the client's write buffer is full or drained)."""
        raise NotImplementedError

    def unbind(self) -> None:
        """The exchange lets go: the stream never calls it back again."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def is_closed(self) -> bool:
        raise NotImplementedError

    def was_reused(self) -> bool:
        """It carried an exchange before this one (the server may have closed it meanwhile)."""
        raise NotImplementedError

    def tunnel_transport(self) -> asyncio.Transport | None:
        """After a 101: the transport to splice (None when already closed)."""
        raise NotImplementedError

    def attach_tunnel(self, tunnel: Tunnel) -> None:
        """From now on, the stream's bytes and events go to ``tunnel``."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class StreamPool:
    """Upstream streams to one target key, handed out and taken back."""

    __slots__ = ()

    def acquire(self, target: Target, user: StreamUser, fresh: bool = False) -> UpstreamStream | None:
        """A stream now, or None: ``user.on_connection`` or ``user.on_connect_failed`` follows.

        ``fresh``: not a pooled connection (a retry after a pooled one turned out to be closed)."""
        raise NotImplementedError

    def cancel(self, user: StreamUser) -> None:
        """``user`` no longer waits for a stream."""
        raise NotImplementedError

    def release(self, stream: UpstreamStream, now: float) -> None:
        """A stream whose request was sent and whose response was received in full, both framed."""
        raise NotImplementedError

    def forget(self, stream: UpstreamStream) -> None:
        """A stream that will not be used again (closed, or failed)."""
        raise NotImplementedError

    def detach(self, stream: UpstreamStream) -> None:
        """A stream that leaves the pool open (turned into a tunnel)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close every connection the pool holds (the listener is closing)."""
        raise NotImplementedError

    def sweep(self, now: float) -> None:
        """Close the connections idle for longer than the pool's idle timeout."""

    def counts(self) -> dict[str, int]:
        """The pool's gauges and counters by name, for /metrics (HTTP/2 pools)."""
        return {}


@mypyc_attr(allow_interpreted_subclasses=True)
class StreamPools:
    """The pools of every target key."""

    __slots__ = ()

    def get(self, target: Target) -> StreamPool:
        raise NotImplementedError
