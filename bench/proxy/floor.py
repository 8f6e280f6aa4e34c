"""The least a Python hop can do, for the benchmark: bytes passed through on uvloop, nothing else.

    python -m bench.proxy.floor --upstream 127.0.0.1:8080 [--listen-tls CERT KEY CA] [--upstream-tls CERT KEY CA]

Each client connection gets its own upstream connection, dialed when the client connects, and every byte read
from one side is written to the other (TLS where asked, with the same contexts as bench.proxy.engine). No HTTP
parsing, no routing, no pool, no headers added: not a proxy anyone could run, but the floor under any proxy
written in Python on uvloop and the ssl module, so the rows it adds say how much of the sidecar's cost is
the language and the event loop, and how much is the sidecar's own work. Prints ``PORT <n>`` on stdout once
listening, runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop

from bench.proxy.engine import hop_options


class _Side(asyncio.Protocol):
    """One connection of a pair; what it reads goes to its peer."""

    def __init__(self) -> None:
        self.transport: Any = None   # uvloop's transports are not asyncio.Transport subclasses
        self.peer: _Side | None = None
        self.early: list[bytes] = []   # bytes from the client before the upstream is connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def main() -> None:
    options = hop_options()
    loop = asyncio.get_running_loop()

    async def pair(client: _Side) -> None:
        try:
            _, upstream = await loop.create_connection(_Side, options.host, options.port, ssl=options.upstream_ssl,
                                                       server_hostname=options.server_name)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        upstream.peer, client.peer = client, upstream
        if upstream.transport is not None and client.early:
            upstream.transport.writelines(client.early)
            client.early.clear()

    tasks: set[asyncio.Task[None]] = set()

    def accept() -> _Side:
        client = _Side()
        task = loop.create_task(pair(client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", 0, ssl=options.listen_ssl)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
