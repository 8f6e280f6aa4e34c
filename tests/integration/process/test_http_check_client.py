"""An HTTP check's GET through the sidecar's own client, against a real aiohttp app: the status decides, credentials in
the URL are sent as Basic and never shown, every check dials afresh, and a dead or slow app is unhealthy in time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from sidecar.catalog.checks import http_check
from sidecar.catalog.model import HealthStatus
from sidecar.proxy.client import HttpClient
from tests.harness import free_port


async def app(seen: list[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    async def health(request: web.Request) -> web.Response:
        seen.append({"auth": request.headers.get("Authorization"), "host": request.headers.get("Host"),
                     "query": request.query_string,
                     "peer": request.transport.get_extra_info("peername") if request.transport else None})
        if request.path == "/slow":
            await asyncio.sleep(2)
        return web.Response(status=int(request.query.get("status", "200")), text="x" * 100_000)

    application = web.Application()
    application.router.add_get("/{tail:.*}", health)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def test_http_checks_through_the_sidecars_client() -> None:
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        runner, port = await app(seen)
        client = HttpClient(max_idle=0)
        try:
            ok = await http_check(client, f"http://user:s%3Acret@127.0.0.1:{port}/health?token=t", 1.0)
            assert ok.status is HealthStatus.HEALTHY and ok.output.endswith(": 200")
            assert "s%3Acret" not in ok.output and "token=t" not in ok.output
            assert seen[0]["auth"] == "Basic dXNlcjpzOmNyZXQ="   # user:s:cret
            assert seen[0]["host"] == f"127.0.0.1:{port}" and seen[0]["query"] == "token=t"
            shedding = await http_check(client, f"http://127.0.0.1:{port}/health?status=429", 1.0)
            assert shedding.status is HealthStatus.DEGRADED
            failing = await http_check(client, f"http://127.0.0.1:{port}/health?status=503", 1.0)
            assert failing.status is HealthStatus.UNHEALTHY and failing.output.endswith(": 503")
            assert len({s["peer"] for s in seen}) == 3 and client.idle == 0   # a new connection for each check
            started = time.monotonic()
            slow = await http_check(client, f"http://127.0.0.1:{port}/slow", 0.5)
            assert slow.status is HealthStatus.UNHEALTHY and "timed out after 0.500s" in slow.output
            assert time.monotonic() - started < 1.5
            dead = await http_check(client, f"http://127.0.0.1:{free_port()}/health", 1.0)
            assert dead.status is HealthStatus.UNHEALTHY and "connection refused" in dead.output
        finally:
            client.close()
            await runner.cleanup()

    asyncio.run(main())
