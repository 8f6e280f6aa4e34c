"""Small demo services for `sidecar demo`. Run as ``python -m sidecar.demo.app --name payment-service --port 3000``.

Every instance answers any path with a JSON echo, receives ServiceMessages at /messages and published events at
/events/{topic}. Faults are opt-in, so the demo can show retries, outlier ejection and health turning:
``--fail-rate 0.4`` answers that share of requests with 503, ``--delay 0.2`` slows every answer, and
``--flaky-health`` cycles /health through healthy, degraded (429) and unhealthy (500).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
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


def build_app(name: str, flaky_health: bool, fail_rate: float = 0.0, delay: float = 0.0,
              seed: int | None = None) -> web.Application:
    started = time.monotonic()
    rng = random.Random(seed)
    counts = {"requests": 0, "failed": 0, "events": 0, "messages": 0}
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        status = health_at(time.monotonic() - started) if flaky_health else 200
        return web.json_response({"service": name, "status": status}, status=status)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"service": name, **counts})

    async def event(request: web.Request) -> web.Response:
        body = await request.json()
        counts["events"] += 1
        return web.json_response({"service": name, "topic": request.match_info["topic"], "id": body.get("id")})

    async def message(request: web.Request) -> web.Response:
        body = await request.json()
        counts["messages"] += 1
        return web.json_response({"service": name, "received": body.get("type"), "id": body.get("id")})

    async def hello(request: web.Request) -> web.Response:
        counts["requests"] += 1
        if delay > 0:
            await asyncio.sleep(delay)
        if fail_rate > 0 and rng.random() < fail_rate:
            counts["failed"] += 1
            return web.json_response({"service": name, "error": "injected failure"}, status=503)
        return web.json_response({"service": name, "path": request.path, "method": request.method})

    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_post("/messages", message)
    app.router.add_post("/events/{topic}", event)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flaky-health", "--flaky", dest="flaky_health", action="store_true",
                        help="cycle /health through healthy, degraded, unhealthy")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered with 503")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps({"demoapp": args.name, "port": args.port}), flush=True)
    app = build_app(args.name, args.flaky_health, args.fail_rate, args.delay, args.seed)
    asyncio.run(web._run_app(app, host="127.0.0.1", port=args.port, print=None, handle_signals=True))


if __name__ == "__main__":
    main()
