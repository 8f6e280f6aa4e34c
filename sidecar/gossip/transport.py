"""Real sockets for gossip: a UDP endpoint and length-prefixed TCP frames (memberlist's net_transport).

Nothing here knows the protocol: datagrams go to a callback, a TCP connection carries one request frame
and at most one reply frame, each ``length:u32`` then the bytes. Inbound streams pass a
:class:`~sidecar.gossip.streamgate.StreamGate` before anything is buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from sidecar.gossip.state import Address
from sidecar.gossip.streamgate import MAX_FRAME, StreamGate

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent a frame we will not read (too large, or cut short)."""


def frame(data: bytes) -> bytes:
    return _FRAME.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    try:
        header = await reader.readexactly(_FRAME.size)
        (length,) = _FRAME.unpack(header)
        if length > limit:
            raise FrameError(f"frame of {length} bytes is over {limit}")
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("the connection closed in the middle of a frame") from None


async def read_gated_frame(reader: asyncio.StreamReader, gate: StreamGate, host: str, limit: int) -> bytes:
    """One frame, its declared length checked and reserved in ``gate`` before the body is read."""
    try:
        (length,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
        refusal = gate.reserve(host, length, limit)
        if refusal is not None:
            raise FrameError(f"frame of {length} bytes refused ({refusal.value}; limit {limit})")
        try:
            return await reader.readexactly(length)
        finally:
            gate.release(host, length)
    except asyncio.IncompleteReadError:
        raise FrameError("the connection closed in the middle of a frame") from None


def peer_address(raw: object) -> Address:
    """``(host, port)`` of a socket address of either family."""
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return ("", 0)


class UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP socket; every datagram goes to ``on_datagram(data, (host, port))``."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._on_datagram(data, peer_address(addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead member, and the like: the protocol notices by itself
        self.send_errors += 1

    def sendto(self, data: bytes, address: Address) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(data, address)
        except OSError:
            self.send_errors += 1

    @property
    def bound(self) -> Address:
        assert self._transport is not None
        return peer_address(self._transport.get_extra_info("sockname"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


StreamHandler = Callable[[Address, bytes], Awaitable[bytes | None]]


async def open_listeners(host: str, port: int, on_datagram: Callable[[bytes, Address], None],
                         on_stream: StreamHandler, frame_timeout: float, gate: StreamGate,
                         frame_limit: Callable[[], int], attempts: int = 20) -> tuple[UdpEndpoint, asyncio.Server]:
    """A TCP server and a UDP socket on the same port (port 0: the same free port for both).

    Inbound streams go through ``gate``; a frame may declare at most ``frame_limit()`` bytes, and must
    arrive whole within ``frame_timeout``.
    """
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        src = peer_address(writer.get_extra_info("peername"))
        if not gate.enter(src[0]):
            writer.transport.abort()
            return
        try:
            data = await asyncio.wait_for(read_gated_frame(reader, gate, src[0], frame_limit()), frame_timeout)
            reply = await on_stream(src, data)
            if reply is not None:
                writer.write(frame(reply))
                await asyncio.wait_for(writer.drain(), frame_timeout)
        except (FrameError, OSError, TimeoutError) as exc:
            log.debug("gossip stream from %s failed: %s", src, exc)
        finally:
            gate.leave(src[0])
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    last: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        server = await asyncio.start_server(handle, host, port, reuse_address=True)
        bound_port = peer_address(server.sockets[0].getsockname())[1]
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpEndpoint(on_datagram), local_addr=(host, bound_port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:  # the UDP twin of a free TCP port was taken: try another
            last = exc
            server.close()
            await server.wait_closed()
            continue
        return protocol, server
    raise last if last is not None else OSError(f"cannot bind gossip UDP and TCP on {host}:{port}")


async def exchange(address: Address, data: bytes, timeout: float, limit: int = MAX_FRAME) -> bytes | None:
    """Send one frame and read one reply (at most ``limit`` bytes) over a fresh TCP connection; None on any
    failure or timeout."""
    if timeout <= 0:
        return None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address[0], address[1])
            writer.write(frame(data))
            await writer.drain()
            return await read_frame(reader, limit)
    except (OSError, TimeoutError, FrameError) as exc:
        log.debug("gossip stream to %s failed: %s", address, exc)
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
