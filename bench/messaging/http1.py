"""The bench's own HTTP/1.1 ends on the sidecar side, built as lean as its RESP client is on the Redis side, so that
a run measures the system under test rather than the load generator.

* :class:`Connection`: one keep-alive HTTP/1.1 connection on asyncio streams with one request in flight (as a
  redis-py connection with one command in flight): the request's bytes are formatted once, the answer's head is
  read up to its blank line, its status and ``Content-Length`` taken from it, and its body read by that length.
* :class:`Pool`: ``size`` such connections to one server, each lent to one caller at a time (as the Redis side's
  free queue of connections); :class:`AiohttpPool` is the same interface on an aiohttp session, for the
  ``--client aiohttp`` figures.
* :func:`serve`: a minimal HTTP/1.1 server (an asyncio Protocol) for the subscribing apps: it reads each request by
  its ``Content-Length``, hands the path and body to a function, and answers 200 with that function's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

import aiohttp

JSON = b"application/json"


class ProtocolError(Exception):
    """The peer's bytes are not the HTTP/1.1 this bench expects (the message says what was wrong)."""


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a message head (its bytes up to the blank line); ProtocolError without one."""
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolError(f"no Content-Length in {head[:200]!r}")
    return int(lower[at + 17:lower.index(b"\r\n", at + 17)])


class Connection:
    """One keep-alive HTTP/1.1 connection with one request in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: bytes) -> None:
        self.reader, self.writer, self.host = reader, writer, host
        self.closed = False   # the server said ``Connection: close``: open another before the next request

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}".encode())

    async def post(self, path: bytes, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path``; the answer's status and body."""
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path, self.host, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            raise ProtocolError(f"not an HTTP/1.1 answer: {head[:200]!r}")
        length = content_length(head)
        answer = await self.reader.readexactly(length) if length else b""
        if b"\r\nconnection: close\r\n" in head.lower():
            self.closed = True
        return int(head[9:12]), answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):   # the server closed first
            await self.writer.wait_closed()


class Poster(Protocol):
    """What publishers POST through: :class:`Pool` or :class:`AiohttpPool`."""

    async def post(self, path: bytes, body: bytes) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class Pool:
    """``size`` keep-alive connections to ``host:port``, each with one request in flight; a caller waits for a free
    one, as the Redis side's publishers do for theirs."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.free: asyncio.Queue[Connection | None] = asyncio.Queue()
        self.open: list[Connection] = []
        for _ in range(size):
            self.free.put_nowait(None)   # opened on first use

    async def post(self, path: bytes, body: bytes) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            if conn is None or conn.closed:
                if conn is not None:
                    self.open.remove(conn)
                    await conn.close()
                conn = await Connection.open(self.host, self.port)
                self.open.append(conn)
            return await conn.post(path, body)
        except BaseException:
            if conn is not None:   # a connection that failed mid-exchange is not lent again
                conn.closed = True
            raise
        finally:
            self.free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.open:
            await conn.close()
        self.open.clear()


class AiohttpPool:
    """The same interface on an aiohttp client session limited to ``size`` connections."""

    def __init__(self, base: str, size: int) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=size))

    async def post(self, path: bytes, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(self.base + path.decode(), data=body,
                                     headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        await self.session.close()


def connect(kind: str, base: str, size: int) -> Poster:
    """Publishers' connections to ``base`` (``http://HOST:PORT``): ``raw`` (:class:`Pool`) or ``aiohttp``."""
    if kind == "aiohttp":
        return AiohttpPool(base, size)
    host, _, port = base.removeprefix("http://").rpartition(":")
    return Pool(host, int(port), size)


# A request's path and body → the JSON body of the 200 to answer with.
Handle = Callable[[bytes, bytes], bytes]


class AppProtocol(asyncio.Protocol):
    """One connection of :func:`serve`: requests read by their ``Content-Length`` (the sidecar sends one at a time
    a connection, and this keeps order if it pipelined), each answered 200 with ``handle(path, body)``."""

    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        answers = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end + 2]
            size = end + 4 + (content_length(head) if head.startswith(b"POST ") else 0)
            if len(buffer) < size:
                break
            path = head[head.index(b" ") + 1:head.index(b" HTTP/1.1\r\n")]
            answer = self.handle(path, buffer[end + 4:size])
            answers.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(answer), answer))
            buffer = buffer[size:]
        self.buffer = buffer
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))


async def serve(handle: Handle) -> tuple[asyncio.Server, int]:
    """An HTTP/1.1 server on 127.0.0.1 (a free port) answering every request with ``handle``; it and its port."""
    server = await asyncio.get_running_loop().create_server(lambda: AppProtocol(handle), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])
