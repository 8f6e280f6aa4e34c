"""Backend instances for the resilience tests and bench, in their own process so the sidecars under test keep a CPU:
``python -m tests.integration.resilience.backend N`` listens on N free loopback ports and prints ``PORTS p1 .. pN``.

Each port is one instance with its own behaviour, set through its control paths (called directly, not
through a sidecar):

    GET /_control?mode=ok|fail|every:N|reset&delay_ms=D&forward=SERVICE&outbound=PORT
        fail: 503 to every request; every:N: 503 to every Nth; reset: the connection is cut without an answer;
        delay_ms: wait before answering; forward: answer by calling SERVICE through the sidecar at
        127.0.0.1:PORT, passing on the x-sidecar-deadline-ms it was given (as an app passes on traceparent)
    GET /_health    200, or 503 in mode fail, or a cut connection in mode reset (for HAProxy's health checks)
    GET /_stats     {"requests": n, "failures": n, "deadlines": [values of x-sidecar-deadline-ms seen, latest 50]}
    GET /_reset     counters back to zero, mode ok, no delay, no forwarding

Any other path is work: ``{"instance": PORT, "deadline": header or null, "headers": [names received]}`` (or the
forwarded call's answer).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

import aiohttp
import uvloop
from aiohttp import web

DEADLINE = "x-sidecar-deadline-ms"


@dataclass
class Instance:
    port: int = 0
    mode: str = "ok"
    delay: float = 0.0
    forward: str | None = None
    outbound: int = 0
    requests: int = 0
    failures: int = 0
    deadlines: list[str | None] = field(default_factory=list)

    def reset(self) -> None:
        self.mode, self.delay, self.forward, self.outbound = "ok", 0.0, None, 0
        self.requests = self.failures = 0
        self.deadlines = []


STATE = web.AppKey("state", Instance)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def control(request: web.Request) -> web.Response:
    inst = request.app[STATE]
    query = request.query
    if "mode" in query:
        inst.mode = query["mode"]
    if "delay_ms" in query:
        inst.delay = int(query["delay_ms"]) / 1000.0
    if "forward" in query:
        inst.forward = query["forward"] or None
    if "outbound" in query:
        inst.outbound = int(query["outbound"])
    return web.json_response({"mode": inst.mode, "delay_ms": inst.delay * 1000, "forward": inst.forward})


async def stats(request: web.Request) -> web.Response:
    inst = request.app[STATE]
    return web.json_response({"requests": inst.requests, "failures": inst.failures, "deadlines": inst.deadlines})


async def health(request: web.Request) -> web.Response:
    mode = request.app[STATE].mode
    if mode == "reset":
        assert request.transport is not None
        request.transport.abort()
    return web.Response(status=503 if mode in ("fail", "reset") else 200, text=mode)


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


async def work(request: web.Request) -> web.StreamResponse:
    inst = request.app[STATE]
    inst.requests += 1
    seen = request.headers.get(DEADLINE)
    inst.deadlines = [*inst.deadlines[-49:], seen]
    await request.read()
    mode = inst.mode
    failing = mode == "fail" or (mode.startswith("every:") and inst.requests % int(mode[6:]) == 0)
    if mode == "reset":
        inst.failures += 1
        assert request.transport is not None
        request.transport.abort()   # the connection is cut: what follows is written nowhere
        return web.Response(status=500)
    if inst.delay:
        await asyncio.sleep(inst.delay)
    if failing:
        inst.failures += 1
        return web.json_response({"instance": inst.port, "failed": True}, status=503)
    if inst.forward is not None:
        headers = {"Host": inst.forward}
        if seen is not None:
            headers[DEADLINE] = seen
        async with request.app[SESSION].get(f"http://127.0.0.1:{inst.outbound}/work", headers=headers) as answer:
            body = await answer.read()
            return web.json_response({"instance": inst.port, "deadline": seen, "upstreamStatus": answer.status,
                                      "upstream": body.decode("utf-8", "replace")})
    return web.json_response({"instance": inst.port, "deadline": seen,
                              "headers": sorted(name.lower() for name in request.headers)})


async def main(count: int) -> None:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    runners = []
    ports = []
    for _ in range(count):
        app = web.Application()
        inst = Instance()
        app[STATE] = inst
        app[SESSION] = session
        app.router.add_get("/_control", control)
        app.router.add_get("/_stats", stats)
        app.router.add_get("/_reset", reset)
        app.router.add_get("/_health", health)
        app.router.add_route("*", "/{tail:.*}", work)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        inst.port = int(runner.addresses[-1][1])
        ports.append(inst.port)
        runners.append(runner)
    print("PORTS " + " ".join(map(str, ports)), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
