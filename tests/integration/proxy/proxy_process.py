"""The engine alone in a process, for tests that watch its memory: every request goes to --upstream.

    python -m tests.integration.proxy.proxy_process --upstream 127.0.0.1:PORT

Prints ``PORT <n>`` once listening; stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from sidecar.proxy import ConnectionInfo, HttpProxy, RequestHead, Target


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    target = Target((host, int(port)), timeout=30.0)

    def route(head: RequestHead, conn: ConnectionInfo) -> Target:
        return target

    proxy = HttpProxy(route)
    server = await proxy.listen("127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await proxy.close(grace=1.0)


if __name__ == "__main__":
    uvloop.run(main())
