"""The floor of one message a publish POST: what the bench's publishers reach against the sidecar's own HTTP server
answering 202 at once and storing nothing, beside the same publishers on Redis XADD (no consumer in either).

    python -m bench.messaging.floor [--messages 5000] [--concurrency 16] [--rounds 3]

``bare``: ``POST /v1/publish/{topic}`` routed by :mod:`sidecar.httpd` in its own process (uvloop, as ``sidecar run``)
and answered ``202 {"id": ...}`` with a fixed id; ``api``: the same route behind the app API's middlewares (the error
shape and the access rule) that also parses and validates the body as the real handler does. The publishers are
:mod:`bench.messaging`'s (aiohttp, ``concurrency`` at once); CPU µs a request is the server process's own (user +
system), so it says what the HTTP exchange alone costs the sidecar. ``(raw client)``: the same servers driven by a
minimal HTTP/1.1 client, as cheap as the Redis publishers' RESP, to tell the server's bound from aiohttp's. A
publish to the real sidecar cannot be faster than ``bare`` on this machine: with ``bulk`` delivery bound by the
publish rate, this caps it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.messaging import http1  # noqa: E402
from bench.messaging.__main__ import Redis, Resp, cpu_seconds  # noqa: E402
from tests.harness import free_port  # noqa: E402

ANSWER = b'{"id":"00000000-0000-4000-8000-000000000000"}'


def serve(port: int, api: bool) -> None:
    """The server process: a sidecar.httpd Site on 127.0.0.1:PORT until killed."""
    import uvloop

    from sidecar.api.guard import check_api_request
    from sidecar.app import tune_gc
    from sidecar.config.values import HostPort
    from sidecar.httpd import App, Handler, Request, Response, RouteTable, Site, StreamResponse
    from sidecar.messaging.envelope import MessageBody
    from sidecar.web import errors_middleware, read_json_object

    async def guard(request: Request, handler: Handler) -> StreamResponse:
        refusal = check_api_request(request.host, request.headers.get("Origin"),
                                    request.headers.get("Sec-Fetch-Site"), request.headers.get("Authorization"),
                                    None, request.local_address)
        if refusal is not None:
            raise refusal
        return await handler(request)

    routes = RouteTable()
    headers = {"Content-Type": "application/json"}

    @routes.post("/v1/publish/{topic}")
    async def publish(request: Request) -> Response:
        if api:
            MessageBody.from_json(await read_json_object(request))
        return Response(202, ANSWER, headers)

    async def main() -> None:
        app = App(middlewares=[errors_middleware, guard] if api else [])
        app.add_routes(routes)
        await Site("api", app, HostPort("127.0.0.1", port)).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    tune_gc()
    uvloop.run(main())


async def drive(url: str, count: int, concurrency: int) -> float:
    """``count`` publishes by ``concurrency`` publishers (one message a POST, as bench.messaging's); msg/s."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        remaining = iter(range(count))

        async def publisher() -> None:
            for n in remaining:
                async with session.post(url, json={"type": "bench", "payload": n}) as response:
                    await response.read()
                    assert response.status == 202, response.status

        started = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        return count / (time.monotonic() - started)


async def drive_raw(port: int, count: int, concurrency: int) -> float:
    """The same publishes by the minimal HTTP/1.1 client of :mod:`bench.messaging.http1` (one keep-alive connection
    a publisher, the request bytes formatted here, the answer read by its Content-Length): what the server reaches
    when the publishers cost as little as Redis's; msg/s."""
    remaining = iter(range(count))
    pool = http1.Pool("127.0.0.1", port, concurrency)

    async def publisher() -> None:
        for n in remaining:
            status, _ = await pool.post(b"/v1/publish/floor", b'{"type":"bench","payload":%d}' % n)
            assert status == 202, status

    started = time.monotonic()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    rate = count / (time.monotonic() - started)
    await pool.close()
    return rate


async def xadd(redis: Redis, count: int, concurrency: int) -> float:
    """The same publishers on XADD to a stream no one reads; msg/s."""
    connections = [await Resp.connect(redis.port) for _ in range(concurrency)]
    remaining = iter(range(count))

    async def publisher(conn: Resp) -> None:
        for n in remaining:
            await conn.call("XADD", "floor", "*", "n", str(n), "body", f'{{"type":"bench","payload":{n}}}')

    started = time.monotonic()
    await asyncio.gather(*(publisher(c) for c in connections))
    rate = count / (time.monotonic() - started)
    for conn in connections:
        await conn.close()
    return rate


def start_server(api: bool) -> tuple[subprocess.Popen[str], int]:
    """A server process (:func:`serve`), once it listens; and its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.messaging.floor", "--serve", str(port),
                             *(["--api"] if api else [])], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, port


async def bench(tmp: Path, messages: int, concurrency: int, rounds: int) -> None:
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    redis = Redis(tmp, durable=False)
    try:
        for name in ("bare", "api"):
            servers[name] = await asyncio.to_thread(start_server, name == "api")
        await redis.start()
        for _, port in servers.values():   # warm up: connections, the first requests
            await drive(f"http://127.0.0.1:{port}/v1/publish/floor", 500, concurrency)
        names = [*servers, *(f"{name} (raw client)" for name in servers), "redis XADD"]
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in rates}
        publishers: dict[str, list[float]] = {name: [] for name in rates}
        for round_ in range(rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                server = servers.get(name.split()[0])
                pid = server[0].pid if server is not None else redis.server.pid if redis.server else 0
                before, own = cpu_seconds(pid), time.process_time()
                if server is None:
                    rate = await xadd(redis, messages, concurrency)
                elif name.endswith("(raw client)"):
                    rate = await drive_raw(server[1], messages, concurrency)
                else:
                    rate = await drive(f"http://127.0.0.1:{server[1]}/v1/publish/floor", messages, concurrency)
                rates[name].append(rate)
                cpu[name].append((cpu_seconds(pid) - before) / messages * 1e6)
                publishers[name].append((time.process_time() - own) / messages * 1e6)
                print(f"{name:<22} {rate:8.0f} msg/s  server CPU {cpu[name][-1]:5.0f} µs/request  publishers' "
                      f"{publishers[name][-1]:5.0f}", flush=True)
        print(f"\none message a POST, {concurrency} publishers, {messages} messages; medians of {rounds} rounds")
        print("| server | msg/s | server CPU µs/request | publishers' CPU µs/request |\n|---|---|---|---|")
        for name in rates:
            print(f"| {name} | {statistics.median(rates[name]):.0f} | {statistics.median(cpu[name]):.0f} | "
                  f"{statistics.median(publishers[name]):.0f} |")
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait(10)
        await redis.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.messaging.floor")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--api", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.api)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        asyncio.run(bench(Path(folder), args.messages, args.concurrency, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
