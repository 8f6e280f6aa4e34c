"""Publish → deliver through two sidecars, and the same workload through Redis Streams.

    python -m bench.messaging [--messages 5000] [--concurrency 16]

sidecar: the bench publishes N messages (``concurrency`` at a time) to the publisher sidecar's
``POST /v1/publish/bench`` (a 202 means fsync'd in its outbox); the publisher sidecar delivers each over mTLS
to the subscriber sidecar, which hands it to the bench's subscriber app (aiohttp, one in flight per stream).
redis: the same N messages XADDed with the same concurrency to a Redis on loopback (started by the bench with
its default persistence: RDB snapshots, no AOF, so an XADD is *not* fsync'd), read by one consumer of a
consumer group with XREADGROUP COUNT 1 + XACK (one in flight, like the sidecar's stream). A second Redis run
with ``appendonly yes, appendfsync always`` shows the cost of the same durability as the sidecar's.

Latency is publish call → arrival at the subscriber (both in this process's clock): p50 and p99; throughput is
messages / (last arrival - first publish). Ratios are sidecar / redis. Needs redis-server (Debian
``redis-server``); skipped without it. The sidecar processes need the messaging wiring in sidecar/app.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import SidecarProcess, free_port, http, make_certs, wait_for  # noqa: E402


class Result:
    def __init__(self, name: str, latencies: list[float], elapsed: float) -> None:
        self.name = name
        self.count = len(latencies)
        self.throughput = len(latencies) / elapsed if elapsed > 0 else 0.0
        ordered = sorted(latencies)
        self.p50 = statistics.median(ordered) * 1000
        self.p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def line(self) -> str:
        return f"{self.name:<16} {self.count:>7} msgs  {self.throughput:>9.0f} msg/s  p50 {self.p50:>8.2f} ms  " \
               f"p99 {self.p99:>8.2f} ms"


# ------------------------------------------------------------------------------------------ sidecar


async def run_sidecar(tmp: Path, messages: int, concurrency: int) -> Result:
    certs = make_certs(tmp / "certs", ["publisher", "subscriber"])
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        n = message["payload"]
        arrived.setdefault(n, time.monotonic())
        if len(arrived) >= messages:
            done.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/events", receive)
    app.router.add_get("/health", lambda r: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = {"gossip": {"profile": "local"}}
    publisher = SidecarProcess(tmp, {**base, "node": {"name": "pub"}, "tls": certs["publisher"]}, name="pub")
    publisher.start()
    subscriber = SidecarProcess(tmp, {**base, "node": {"name": "sub"}, "tls": certs["subscriber"],
                                      "gossip": {"profile": "local", "join": [publisher.listeners["gossip"]]},
                                      "services": [{"name": "subscriber", "port": port}],
                                      "subscriptions": [{"topic": "bench", "path": "/events"}]}, name="sub")
    subscriber.start()
    try:
        await asyncio.to_thread(wait_for, lambda: any(
            r["topic"] == "bench" for r in http("GET", publisher.api + "/v1/subscriptions").json()), 30)
        url = publisher.api + "/v1/publish/bench"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(messages):
                queue.put_nowait(n)

            async def worker() -> None:
                while not queue.empty():
                    n = queue.get_nowait()
                    sent[n] = time.monotonic()
                    async with session.post(url, json={"type": "bench", "payload": n}) as response:
                        assert response.status == 202, await response.text()
                        await response.read()

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await asyncio.wait_for(done.wait(), 300)
        elapsed = max(arrived.values()) - started
        return Result("sidecar", [arrived[n] - sent[n] for n in range(messages)], elapsed)
    finally:
        subscriber.terminate()
        publisher.terminate()
        await runner.cleanup()


async def _ok() -> web.Response:
    return web.json_response({})


# ------------------------------------------------------------------------------------------ redis


class Resp:
    """Just enough RESP2 for XADD, XGROUP, XREADGROUP and XACK."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Resp:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, *args: str | bytes) -> Any:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            data = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.writer.write(b"".join(parts))
        return await self._reply()

    async def _reply(self) -> Any:
        line = (await self.reader.readline())[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else (await self.reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [await self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line!r}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def run_redis(tmp: Path, messages: int, concurrency: int, durable: bool) -> Result:
    port = free_port()
    data = tmp / ("redis-aof" if durable else "redis")
    data.mkdir()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    if durable:
        args += ["--appendonly", "yes", "--appendfsync", "always"]
    server = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        control = await _connect_when_up(port)
        await control.call("XGROUP", "CREATE", "bench", "g", "$", "MKSTREAM")
        sent: dict[int, float] = {}
        arrived: dict[int, float] = {}

        async def consume() -> None:
            conn = await Resp.connect(port)
            while len(arrived) < messages:
                reply = await conn.call("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "BLOCK", "1000",
                                        "STREAMS", "bench", ">")
                if not reply:
                    continue
                for entry_id, fields in reply[0][1]:
                    n = int(fields[1])
                    arrived.setdefault(n, time.monotonic())
                    await conn.call("XACK", "bench", "g", entry_id)
            await conn.close()

        consumer = asyncio.create_task(consume())
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(messages):
            queue.put_nowait(n)

        async def producer() -> None:
            conn = await Resp.connect(port)
            while not queue.empty():
                n = queue.get_nowait()
                sent[n] = time.monotonic()
                body = json.dumps({"type": "bench", "payload": n})
                await conn.call("XADD", "bench", "*", "n", str(n), "body", body)
            await conn.close()

        started = time.monotonic()
        await asyncio.gather(*(producer() for _ in range(concurrency)))
        await asyncio.wait_for(consumer, 300)
        elapsed = max(arrived.values()) - started
        await control.close()
        return Result("redis-aof-always" if durable else "redis", [arrived[n] - sent[n] for n in range(messages)],
                      elapsed)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


async def _connect_when_up(port: int) -> Resp:
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = await Resp.connect(port)
            if await conn.call("PING") == "PONG":
                return conn
        except OSError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.messaging")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv if argv is not None else [])
    if shutil.which("redis-server") is None:
        print("skipped: redis-server is not installed (apt-get install redis-server)")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-messaging-") as folder:
        tmp = Path(folder)
        results = [asyncio.run(run_sidecar(tmp, args.messages, args.concurrency)),
                   asyncio.run(run_redis(tmp, args.messages, args.concurrency, durable=False)),
                   asyncio.run(run_redis(tmp, args.messages, args.concurrency, durable=True))]
    print(f"publish → deliver, {args.messages} messages, {args.concurrency} publishers at once, one consumer "
          "in flight")
    for result in results:
        print(result.line())
    sidecar = results[0]
    for baseline in results[1:]:
        print(f"sidecar / {baseline.name}: throughput x{sidecar.throughput / baseline.throughput:.2f}, "
              f"p50 x{sidecar.p50 / baseline.p50:.2f}, p99 x{sidecar.p99 / baseline.p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
