"""One engine hop for the benchmark, in its own process on uvloop.

    python -m bench.proxy.engine --upstream 127.0.0.1:8080 [--listen-tls CERT KEY CA] [--upstream-tls CERT KEY CA]

Every request goes to ``--upstream``; the route callback returns one prebuilt Target (as the lead's
router does per endpoint). Prints ``PORT <n>`` on stdout once listening, runs until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import NamedTuple

import uvloop

from sidecar.proxy import ConnectionInfo, HttpProxy, RequestHead, Target


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    return context


class HopOptions(NamedTuple):
    """A benchmark hop's command line (this module's and bench.proxy.floor's)."""

    host: str
    port: int
    upstream_ssl: ssl.SSLContext | None
    listen_ssl: ssl.SSLContext | None
    server_name: str | None   # for the upstream's TLS, None without it


def hop_options() -> HopOptions:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--listen-tls", nargs=3, metavar=("CERT", "KEY", "CA"))
    parser.add_argument("--upstream-tls", nargs=3, metavar=("CERT", "KEY", "CA"))
    parser.add_argument("--server-name", default="localhost")
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    upstream_ssl = client_context(*args.upstream_tls) if args.upstream_tls else None
    return HopOptions(host, int(port), upstream_ssl, server_context(*args.listen_tls) if args.listen_tls else None,
                      args.server_name if upstream_ssl else None)


async def main() -> None:
    options = hop_options()
    target = Target((options.host, options.port), ssl=options.upstream_ssl, server_hostname=options.server_name,
                    timeout=15.0)

    def route(head: RequestHead, conn: ConnectionInfo) -> Target:
        return target

    proxy = HttpProxy(route, name="bench")
    server = await proxy.listen("127.0.0.1", 0, ssl_context=options.listen_ssl)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await proxy.close(grace=1.0)


if __name__ == "__main__":
    uvloop.run(main())
