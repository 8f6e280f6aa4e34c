"""The :class:`Tunnel`: two transports spliced into one byte stream, after an HTTP upgrade (WebSocket, h2c)
and for the plain TCP relay.

A tunnel splices two transports: bytes from one are written to the other; when one side's write buffer
is above its high-water mark the other side stops being read (flat memory whatever the speeds); an EOF
from one side is passed on as a half-close where the transport can (plain TCP), so request-then-shutdown
protocols work; when both directions are done, or either side is lost, both are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Tunnel:
    __slots__ = ("_client_paused", "_on_done", "_server_paused", "bytes_down", "bytes_up", "client", "client_eof_seen",
                 "done", "server", "server_eof_seen")

    def __init__(self, client: asyncio.Transport, server: asyncio.Transport,
                 on_done: Callable[[Tunnel], None] | None = None) -> None:
        self.client = client
        self.server = server
        self._on_done = on_done
        self.bytes_up = 0             # client to server
        self.bytes_down = 0           # server to client
        self.client_eof_seen = False
        self.server_eof_seen = False
        self._client_paused = False
        self._server_paused = False
        self.done = False

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if not self.server.is_closing():
            self.server.write(data)

    def from_server(self, data: bytes) -> None:
        self.bytes_down += len(data)
        if not self.client.is_closing():
            self.client.write(data)

    def client_eof(self) -> bool:
        self.client_eof_seen = True
        return self._half_close(self.server, self.server_eof_seen)

    def server_eof(self) -> bool:
        self.server_eof_seen = True
        return self._half_close(self.client, self.client_eof_seen)

    def _half_close(self, other: asyncio.Transport, other_done: bool) -> bool:
        if other_done or not other.can_write_eof():
            self.close()
            return False
        other.write_eof()
        return True

    def client_lost(self, exc: BaseException | None) -> None:
        self.close(abort=exc is not None)

    def server_lost(self, exc: BaseException | None) -> None:
        self.close(abort=exc is not None)

    def pause_client(self, paused: bool) -> None:
        """Stop or resume reading the client (the server's write buffer is full or drained)."""
        if paused != self._client_paused and not self.client.is_closing():
            self._client_paused = paused
            if paused:
                self.client.pause_reading()
            else:
                self.client.resume_reading()

    def pause_server(self, paused: bool) -> None:
        if paused != self._server_paused and not self.server.is_closing():
            self._server_paused = paused
            if paused:
                self.server.pause_reading()
            else:
                self.server.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.done:
            return
        self.done = True
        for transport in (self.client, self.server):
            if abort:
                transport.abort()
            else:
                transport.close()  # writes what is buffered first
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self)   # let go of: it holds, through its owner, what holds this tunnel
