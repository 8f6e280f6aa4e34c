"""A small demo service for `sidecar demo`: answers requests, and its /health follows a script so the
demo can show health turning. Run as ``python -m sidecar.demoapp --name payment --port 3000``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

# seconds in each state, cycled: healthy, then degraded (429), then unhealthy (500)
HEALTH_SCRIPT = ((8.0, 200), (5.0, 429), (5.0, 500))


def health_at(elapsed: float, script: tuple[tuple[float, int], ...] = HEALTH_SCRIPT) -> int:
    period = sum(d for d, _ in script)
    t = elapsed % period
    for duration, status in script:
        if t < duration:
            return status
        t -= duration
    return script[-1][1]


def build_app(name: str, flaky: bool) -> web.Application:
    started = time.monotonic()
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        status = health_at(time.monotonic() - started) if flaky else 200
        return web.json_response({"service": name, "status": status}, status=status)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"service": name, "path": request.path, "method": request.method})

    async def message(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"service": name, "received": body.get("type"), "id": body.get("id")})

    app.router.add_get("/health", health)
    app.router.add_post("/messages", message)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flaky", action="store_true", help="cycle /health through healthy, degraded, unhealthy")
    args = parser.parse_args()
    print(json.dumps({"demoapp": args.name, "port": args.port}), flush=True)
    asyncio.run(web._run_app(build_app(args.name, args.flaky), host="127.0.0.1", port=args.port, print=None,
                             handle_signals=True))


if __name__ == "__main__":
    main()
