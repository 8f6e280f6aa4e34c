"""A bare mTLS server for ``bench.memory``: the inbound listener's way of taking a connection (raw accept, then
``loop.connect_accepted_socket(ssl=...)`` with the inbound's server context) and nothing else, on uvloop or on
asyncio's own loop, so that what the event loop's TLS transport costs per connection can be read apart from
the sidecar.

    python -m bench.memory.tlsserver uvloop|asyncio CA CERT KEY     # prints the port, serves until killed
"""

from __future__ import annotations

import asyncio
import socket
import sys

from sidecar.tls.context import server_context


class Idle(asyncio.Protocol):
    """Holds the connection; reads and drops whatever arrives."""

    def data_received(self, data: bytes) -> None:
        pass


async def serve(ca: str, cert: str, key: str) -> None:
    context = server_context(ca, cert, key)
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)

    async def handshake(sock: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(Idle, sock, ssl=context, ssl_handshake_timeout=10)
        except (OSError, TimeoutError):
            sock.close()

    tasks: set[asyncio.Task[None]] = set()
    while True:
        sock, _ = await loop.sock_accept(listener)
        task = loop.create_task(handshake(sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> int:
    loop_name, ca, cert, key = sys.argv[1:5]
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(serve(ca, cert, key))
    else:
        asyncio.run(serve(ca, cert, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
