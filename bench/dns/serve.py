"""The sidecar's DNS responder alone in a process, on uvloop, with the benchmark's fixed snapshot.

Prints the bound port on the first line of stdout, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from bench.dns import fixture
from sidecar.config.model import DnsConfig
from sidecar.config.values import Duration, HostPort
from sidecar.dns.server import DnsServer


async def serve(host: str) -> None:
    snapshot = fixture.snapshot()
    config = DnsConfig(listen=HostPort(host, 0), domain=fixture.DOMAIN, ttl=Duration(fixture.TTL))
    server = DnsServer(config, lambda: snapshot)
    _, port = await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, finish)
    loop.add_reader(sys.stdin.fileno(), finish)
    await done
    await server.stop()
    print(server.counters.as_dict(), file=sys.stderr, flush=True)


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host))
    else:
        uvloop.run(serve(host))


if __name__ == "__main__":
    main()
