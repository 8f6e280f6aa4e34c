"""Publish → deliver through two sidecars, and the same workloads through Redis Streams, in one run.

    python -m bench.messaging [--messages 3000] [--concurrency 16] [--rounds 3] [--burst 10000]

Workloads (each round runs them against the sidecars, Redis and Redis with ``appendfsync always``, in alternating
order; the table shows medians over the rounds):

* ``single``: N messages, ``concurrency`` publishers at once, one subscribing service, one message per POST to its
  app (Redis: one consumer of a consumer group, XREADGROUP COUNT 1 + XACK: one in flight, as the sidecar's stream);
* ``bulk``: the same with bulk delivery (up to 100 messages per POST, a status per message; Redis: COUNT 100, one
  XACK for the batch), and Redis's COUNT 1 line stays the reference;
* ``sse``: the ``single`` workload read by an SSE reader (``GET /v1/subscribe/sse``) on the subscriber's node: the
  publisher sidecar sends it batches, stored by the subscriber sidecar before they are acked;
* ``sdk``: the same read by ``sidecar.client``'s async iterator (``SidecarClient.subscribe("sdk")``);
* ``bulkpub``: bulk publish and bulk delivery: each publisher posts bulks of 100 messages
  (``POST /v1/publish/bulk/bulkpub``, one commit a bulk), the app gets them in bulks of up to 100 (Redis: the
  publishers pipeline 100 XADDs a round trip, the consumer reads COUNT 100 and acks with one XACK); at least
  16,000 messages, so that each publisher posts ten bulks; its ratio is shown against default Redis's ``single``;
* ``fanout``: one topic, two subscribing services (Redis: two consumer groups);
* ``burst``: 10,000 messages from 64 publishers at once, default delivery;
* ``paced``: the sidecar at half the ``single`` maximum, for its latency there.

sidecar: the bench publishes to the publisher sidecar's ``POST /v1/publish/TOPIC`` (a 202 means fsync'd in its
outbox); the publisher sidecar sends each stream in batches over mTLS to the subscriber sidecar, which stores them
before it acks and hands them to the bench's apps. fsyncs/message is both sidecars' fsyncs over the
workload (GET /messaging) divided by the messages published.

The bench's clients are built alike on both sides, so each system is measured rather than the load generator: on
the sidecar side each publisher is one keep-alive HTTP/1.1 connection on asyncio streams with one request in flight
(its bytes formatted once a message, the 202 read by its Content-Length and its status checked), and the subscribing
apps are a minimal HTTP/1.1 server (an asyncio Protocol) that parses each delivered message for its arrival and
answers 200 (a bulk POST: its status array), both in :mod:`bench.messaging.http1`; on the Redis side each publisher
is one RESP connection with one command in flight and each consumer one RESP connection. ``--client aiohttp`` puts
aiohttp's client session and web server on the sidecar side instead. CPU µs a message is shown for this process
(publishers, apps, readers: "bench"), the sidecars (publisher / subscriber) and redis-server.
Redis (``redis-server`` from Debian, started by the bench): default persistence (RDB snapshots, no AOF: an XADD is
*not* fsync'd) and ``appendonly yes, appendfsync always`` (as durable as the sidecar's 202).

Latency is publish call → arrival at the subscriber (both in this process's clock): p50 and p99; throughput is
messages delivered / (last arrival - first publish). Skipped without redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.messaging import http1  # noqa: E402
from bench.proxy.mesh import summarize  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402
from tests.harness import SidecarProcess, free_port, http, make_certs, wait_for  # noqa: E402

BULK = 100
BURST_PUBLISHERS = 64
BULKPUB_BULKS = 10   # bulks a publisher posts in the bulkpub workload, at least


@dataclass
class Result:
    system: str
    workload: str
    count: int
    throughput: float
    p50: float
    p99: float
    fsyncs_per_message: float | None = None
    cpu_us: tuple[float, float] | None = None   # the publisher's and the subscriber's sidecar, CPU µs a message
    bench_us: float | None = None    # this process's (publishers, apps, readers) CPU µs a message
    server_us: float | None = None   # redis-server's CPU µs a message


def result(system: str, workload: str, latencies: list[float], first: float, last: float,
           fsyncs: float | None = None, cpu_us: tuple[float, float] | None = None) -> Result:
    ordered = sorted(latencies)
    elapsed = last - first
    return Result(system, workload, len(ordered), len(ordered) / elapsed if elapsed > 0 else 0.0,
                  statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                  fsyncs, cpu_us)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (/proc/PID/stat utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Arrivals:
    """Who expects what: arrival times by (consumer, n), and an event when ``expected`` have come."""

    expected: int
    sent: dict[int, float] = field(default_factory=dict)
    arrived: dict[tuple[str, int], float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def arrive(self, consumer: str, n: int) -> None:
        self.arrived.setdefault((consumer, n), time.monotonic())
        if len(self.arrived) >= self.expected:
            self.done.set()

    def latencies(self) -> list[float]:
        return [at - self.sent[n] for (_, n), at in self.arrived.items()]


async def publish_all(count: int, concurrency: int, arrivals: Arrivals, send: Callable[[int], Awaitable[None]],
                      rate: float | None = None) -> float:
    """Publish 0..count-1 with ``concurrency`` publishers (at ``rate`` per second overall when given); returns
    the time of the first publish."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    started = time.monotonic()

    async def publisher() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            if rate is not None:
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            arrivals.sent[n] = time.monotonic()
            await send(n)

    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return started


async def publish_bulks(count: int, concurrency: int, size: int, arrivals: Arrivals,
                        send: Callable[[range], Awaitable[None]]) -> float:
    """Publish 0..count-1 in bulks of ``size`` (``send`` takes a bulk's numbers) with ``concurrency`` publishers;
    returns the time of the first publish."""
    bulks: asyncio.Queue[range] = asyncio.Queue()
    for start in range(0, count, size):
        bulks.put_nowait(range(start, min(start + size, count)))
    started = time.monotonic()

    async def publisher() -> None:
        while not bulks.empty():
            numbers = bulks.get_nowait()
            sent = time.monotonic()
            for n in numbers:
                arrivals.sent[n] = sent
            await send(numbers)

    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return started


# ------------------------------------------------------------------------------------------ sidecar


class Sidecars:
    """A publisher sidecar and a subscriber sidecar hosting three services: ``sub`` (topic ``single``, and
    ``burst``, one message per POST), ``bulksub`` (topic ``bulk``, bulk delivery) and ``fan-a``/``fan-b`` (both
    on topic ``fanout``)."""

    SERVICES = ("sub", "bulksub", "fan-a", "fan-b")

    def __init__(self, tmp: Path, timing: bool = False, profile: Path | None = None, client: str = "raw") -> None:
        self.tmp = tmp
        # the bench's publishers and apps: ``raw`` (bench.messaging.http1, as lean as the Redis side's RESP) or
        # ``aiohttp`` (its client session and web server)
        self.client = client
        self.workload = ""
        # with ``profile``, each sidecar run is sampled by py-spy in both sidecars: FOLDER/WORKLOAD-N-{pub,sub}.txt
        # (py-spy's raw format) and a summary of each printed
        self.profile = profile
        self.profiled = 0
        # with ``timing``, the sidecars log each message's stages (sidecar.messaging.timing) and the bench keeps,
        # by payload, the message id and the wall-clock times of its publish, its 202 and its arrival
        self.timing = tmp / "timing" if timing else None
        self.stamps: dict[int, tuple[str, float, float]] = {}
        self.landed: dict[int, float] = {}
        self.arrivals: Arrivals | None = None
        self.runner: web.AppRunner | None = None
        self.app_server: asyncio.Server | None = None
        self.processes: list[SidecarProcess] = []
        self.refused = 0   # publishes answered 429 or 503 (backpressure), then tried again
        self.posts = 0     # POSTs the apps received (a bulk POST counts once)
        self.counters = False   # print each run's counters (commits, batches, ...) of both sidecars

    def deliver(self, path: bytes, body: bytes) -> bytes:
        """A delivery POST to ``/in/CONSUMER`` (one ServiceMessage, or a bulk array of them): each message's arrival
        taken, and the JSON to answer 200 with (a SUCCESS status a message for a bulk POST)."""
        consumer = path[4:].decode()
        arrivals = self.arrivals
        self.posts += 1
        doc = json.loads(body)
        if isinstance(doc, list):
            if arrivals is not None:
                for m in doc:
                    arrivals.arrive(consumer, m["payload"])
            return json.dumps({"statuses": [{"id": m["id"], "status": "SUCCESS"} for m in doc]}).encode()
        if arrivals is not None:
            arrivals.arrive(consumer, doc["payload"])
            if self.timing is not None and self.workload == "paced":
                self.landed[doc["payload"]] = time.time()   # the last paced run's, as ``stamps``
        return b"{}"

    async def _serve_apps(self) -> int:
        """The subscribing apps' server (every service's ``/in/CONSUMER`` and ``/health``): the minimal HTTP/1.1
        server of :mod:`bench.messaging.http1`, or aiohttp's with ``--client aiohttp``; its port."""
        if self.client != "aiohttp":
            self.app_server, port = await http1.serve(
                lambda path, body: self.deliver(path, body) if path.startswith(b"/in/") else b"{}")
            return port

        async def receive(request: web.Request) -> web.Response:
            return web.Response(body=self.deliver(request.path.encode(), await request.read()),
                                content_type="application/json")

        app = web.Application()
        app.router.add_post("/in/{consumer}", receive)
        app.router.add_get("/health", lambda r: _ok())
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return int(self.runner.addresses[0][1])

    async def publish(self, poster: http1.Poster, topic: str, body: bytes) -> bytes:
        """POST ``body`` to the publisher sidecar's ``/v1/publish/TOPIC`` until it is taken (202); the 202's body.
        Backpressure (429 full, 503 overloaded) is waited out and tried again, up to 10 times."""
        path = b"/v1/publish/" + topic.encode()
        for wait in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 1.0, 1.0):
            status, answer = await poster.post(path, body)
            if status == 202:
                return answer
            assert status in (429, 503), (status, answer)
            self.refused += 1
            await asyncio.sleep(wait)
        raise AssertionError(f"{body!r} refused 10 times")

    async def start(self) -> None:
        port = await self._serve_apps()
        certs = make_certs(self.tmp / "certs", ["publisher", *self.SERVICES])
        tls = {**certs["sub"], "identities": [{"service": s, "cert": certs[s]["cert"], "key": certs[s]["key"]}
                                              for s in self.SERVICES[1:]]}
        gossip = {"profile": "local"}
        env: dict[str, str] = {}
        if self.timing is not None:
            self.timing.mkdir()
            env["SIDECAR_MESSAGING_TIMING"] = str(self.timing)
        publisher = SidecarProcess(self.tmp, {"node": {"name": "pub"}, "tls": certs["publisher"], "gossip": gossip,
                                              "messaging": {"queue": {"max_pending": 100_000}}}, name="pub", env=env)
        publisher.start()
        self.processes.append(publisher)
        subscriptions = [{"topic": "single", "path": "/in/sub", "service": "sub"},
                         {"topic": "burst", "path": "/in/sub", "service": "sub"},
                         {"topic": "paced", "path": "/in/sub", "service": "sub"},
                         {"topic": "bulk", "path": "/in/bulksub", "service": "bulksub",
                          "bulk": {"enabled": True, "max_messages": BULK}},
                         {"topic": "bulkpub", "path": "/in/bulksub", "service": "bulksub",
                          "bulk": {"enabled": True, "max_messages": BULK}},
                         {"topic": "fanout", "path": "/in/fan-a", "service": "fan-a"},
                         {"topic": "fanout", "path": "/in/fan-b", "service": "fan-b"}]
        subscriber = SidecarProcess(self.tmp, {
            "node": {"name": "sub"}, "tls": tls, "gossip": {**gossip, "join": [publisher.listeners["gossip"]]},
            "services": [{"name": s, "port": port} for s in self.SERVICES], "subscriptions": subscriptions},
            name="sub", env=env)
        subscriber.start()
        self.processes.append(subscriber)
        self.publisher, self.subscriber = publisher, subscriber
        self.sse_ready = asyncio.Event()
        self.sse = asyncio.create_task(self._read_sse())
        self.sdk = asyncio.create_task(self._read_sdk())
        await asyncio.wait_for(self.sse_ready.wait(), 30)
        await asyncio.to_thread(wait_for, lambda: len(
            http("GET", publisher.api + "/v1/subscriptions").json()) >= len(subscriptions) + 2, 120,
            what="the subscriptions known to the publisher")

    async def _read_sse(self) -> None:
        """An SSE reader of topic ``sse`` on the subscriber sidecar, for as long as the bench runs."""
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.subscriber.api}/v1/subscribe/sse", timeout=aiohttp.ClientTimeout(total=None)) as response:
            self.sse_ready.set()
            async for line in response.content:
                if line.startswith(b"data: ") and self.arrivals is not None:
                    self.arrivals.arrive("sse", json.loads(line[6:])["payload"])

    async def _read_sdk(self) -> None:
        """``sidecar.client``'s async iterator over topic ``sdk`` on the subscriber sidecar, for as long as the bench
        runs."""
        async with SidecarClient(self.subscriber.api) as client:
            async for message in client.subscribe("sdk"):
                if self.arrivals is not None:
                    self.arrivals.arrive("sdk", message.payload)

    def _fsyncs(self) -> int:
        """fsyncs so far, both sidecars' (the publisher's outbox, the subscriber's inbox and topic log)."""
        return sum(int(http("GET", p.admin + "/messaging").json()["fsyncs"]) for p in (self.publisher, self.subscriber))

    def _tallies(self) -> list[dict[str, int]]:
        """Each sidecar's writer totals and messaging counters so far (GET /messaging)."""
        tallies = []
        for process in (self.publisher, self.subscriber):
            status = http("GET", process.admin + "/messaging").json()
            tallies.append({"commits": status["commits"], "operations": status["operations"],
                            "fsyncs": status["fsyncs"], **status["counters"]})
        return tallies

    def _print_tallies(self, before: list[dict[str, int]], count: int, posts: int) -> None:
        after = self._tallies()
        print(f"  the apps got {posts} POSTs, {count / posts if posts else 0:.1f} messages a POST", flush=True)
        for name, old, new in zip(("pub", "sub"), before, after, strict=True):
            moved = {k: v - old.get(k, 0) for k, v in new.items() if v != old.get(k, 0)}
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(moved.items())), flush=True)

    async def run(self, workload: str, count: int, concurrency: int, consumers: int = 1,
                  rate: float | None = None, bulk: int = 1) -> Result:
        """``count`` messages to topic ``workload`` from ``concurrency`` publishers, one a POST, or with ``bulk``
        above 1 that many a POST to ``/v1/publish/bulk/TOPIC`` (a 202: the bulk committed)."""
        arrivals = self.arrivals = Arrivals(count * consumers)
        self.workload = workload
        before = await asyncio.to_thread(self._fsyncs)
        tallies = await asyncio.to_thread(self._tallies) if self.counters else []
        posts = self.posts
        cpu_before = self._cpu()
        bench_before = time.process_time()
        poster = http1.connect(self.client, self.publisher.api, concurrency)
        try:
            async def send(n: int) -> None:
                posted = time.time()
                answer = await self.publish(poster, workload, b'{"type":"bench","payload":%d}' % n)
                if self.timing is not None and workload == "paced":
                    self.stamps[n] = (json.loads(answer)["id"], posted, time.time())
            async def send_bulk(numbers: range) -> None:
                await self.publish(poster, "bulk/" + workload, b"[" + b",".join(
                    b'{"type":"bench","payload":%d}' % n for n in numbers) + b"]")
            spies = await asyncio.to_thread(self._spy, workload)
            if bulk > 1:
                started = await publish_bulks(count, concurrency, bulk, arrivals, send_bulk)
            else:
                started = await publish_all(count, concurrency, arrivals, send, rate)
            await asyncio.wait_for(arrivals.done.wait(), 600)
            await asyncio.to_thread(self._spied, spies)
        finally:
            await poster.close()
        cpu = tuple((b - a) / count * 1e6 for a, b in zip(cpu_before, self._cpu(), strict=True))
        bench_us = (time.process_time() - bench_before) / count * 1e6
        fsyncs = (await asyncio.to_thread(self._fsyncs) - before) / count
        if self.counters:
            await asyncio.to_thread(self._print_tallies, tallies, count * consumers, self.posts - posts)
        self.arrivals = None
        return replace(result("sidecar", workload, arrivals.latencies(), started, max(arrivals.arrived.values()),
                              fsyncs, (cpu[0], cpu[1])), bench_us=bench_us)

    def _spy(self, workload: str) -> list[tuple[Path, subprocess.Popen[bytes]]]:
        """py-spy recording both sidecars until :meth:`_spied` stops it (none without ``profile``)."""
        if self.profile is None:
            return []
        tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.profiled += 1
        spies = []
        for name, process in (("pub", self.publisher), ("sub", self.subscriber)):
            assert process.proc is not None
            out = self.profile / f"{workload}-{self.profiled}-{name}.txt"
            spies.append((out, subprocess.Popen(
                [tool, "record", "--pid", str(process.proc.pid), "--rate", "200", "--format", "raw", "--native",
                 "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(0.5)   # attached before the load starts
        return spies

    @staticmethod
    def _spied(spies: list[tuple[Path, subprocess.Popen[bytes]]]) -> None:
        for out, spy in spies:
            spy.send_signal(signal.SIGINT)   # py-spy writes what it sampled, then exits
            spy.wait(60)
            if out.exists():
                print(summarize(out.read_text(), f"{out.stem} (py-spy)", top=25), flush=True)

    def _cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the publisher's and the subscriber's sidecar."""
        assert self.publisher.proc is not None and self.subscriber.proc is not None
        return cpu_seconds(self.publisher.proc.pid), cpu_seconds(self.subscriber.proc.pid)

    def split(self) -> str:
        """The paced run's latency cut by stage (ms, p50 / p99 over its messages): publish → 202, 202 → batch sent
        by the publisher's sidecar, sent → stored by the subscriber's (its commit on disk), stored → posted to the
        app, posted → arrived; and publish → arrived."""
        assert self.timing is not None
        marks: dict[tuple[str, str], float] = {}
        for path in self.timing.glob("*.timing"):
            for line in path.read_text().splitlines():
                stage, message_id, at = line.split()
                marks.setdefault((stage, message_id), float(at) / 1000)
        spans: dict[str, list[float]] = {name: [] for name in (
            "publish → 202", "202 → sent", "sent → stored", "stored → to-app", "to-app → arrived",
            "sent → to-app", "publish → arrived")}
        for n, (message_id, posted, accepted) in self.stamps.items():
            sent, stored, to_app = (marks.get((stage, message_id)) for stage in ("sent", "stored", "to-app"))
            arrived = self.landed.get(n)
            if None in (sent, stored, to_app, arrived):
                continue
            assert sent is not None and stored is not None and to_app is not None and arrived is not None
            for name, value in (("publish → 202", accepted - posted), ("202 → sent", sent - accepted),
                                ("sent → stored", stored - sent), ("stored → to-app", to_app - stored),
                                ("to-app → arrived", arrived - to_app), ("sent → to-app", to_app - sent),
                                ("publish → arrived", arrived - posted)):
                spans[name].append(value * 1000)

        def p(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")
        counted = len(spans["publish → arrived"])
        return "\n".join([f"paced latency by stage ({counted} messages; ms, p50 / p99):"] + [
            f"  {name:<18} {p(values, 0.5):8.2f} / {p(values, 0.99):8.2f}" for name, values in spans.items()])

    async def stop(self) -> None:
        for reader in ("sse", "sdk"):
            if hasattr(self, reader):
                getattr(self, reader).cancel()
        for process in reversed(self.processes):
            process.terminate()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.app_server is not None:
            self.app_server.close()
            await self.app_server.wait_closed()


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

    async def call_many(self, commands: list[tuple[str | bytes, ...]]) -> list[Any]:
        """``commands`` pipelined: written at once, their replies read in order (one round trip)."""
        parts = []
        for args in commands:
            parts.append(b"*%d\r\n" % len(args))
            for a in args:
                data = a.encode() if isinstance(a, str) else a
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.writer.write(b"".join(parts))
        return [await self._reply() for _ in commands]

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


class Redis:
    def __init__(self, tmp: Path, durable: bool) -> None:
        self.name = "redis-aof-always" if durable else "redis"
        self.port = free_port()
        self.data = tmp / self.name
        self.durable = durable
        self.server: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self) -> None:
        self.data.mkdir()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
                "--save", ""]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.server = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.DEVNULL)
        await (await _connect_when_up(self.port)).close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            await asyncio.wait_for(self.server.wait(), 10)

    async def run(self, workload: str, count: int, concurrency: int, consumers: int = 1, batch: int = 1,
                  pipeline: int = 1) -> Result:
        """``batch``: the consumers' COUNT (one XACK for what they read); ``pipeline``: the XADDs a publisher writes a
        round trip."""
        self.runs += 1
        stream = f"{workload}-{self.runs}"
        control = await Resp.connect(self.port)
        groups = [f"g{i}" for i in range(consumers)]
        for group in groups:
            await control.call("XGROUP", "CREATE", stream, group, "$", "MKSTREAM")
        arrivals = Arrivals(count * consumers)

        async def consume(group: str) -> None:
            conn = await Resp.connect(self.port)
            while not arrivals.done.is_set():
                reply = await conn.call("XREADGROUP", "GROUP", group, "c", "COUNT", str(batch), "BLOCK", "200",
                                        "STREAMS", stream, ">")
                if not reply:
                    continue
                entries = reply[0][1]
                for _, fields in entries:
                    arrivals.arrive(group, int(fields[1]))
                await conn.call("XACK", stream, group, *(entry_id for entry_id, _ in entries))
            await conn.close()

        assert self.server is not None
        server_before, bench_before = cpu_seconds(self.server.pid), time.process_time()
        consumer_tasks = [asyncio.create_task(consume(g)) for g in groups]
        connections = [await Resp.connect(self.port) for _ in range(concurrency)]
        free: asyncio.Queue[Resp] = asyncio.Queue()
        for conn in connections:
            free.put_nowait(conn)

        async def send(n: int) -> None:
            conn = await free.get()
            try:
                await conn.call("XADD", stream, "*", "n", str(n), "body", json.dumps({"type": "bench", "payload": n}))
            finally:
                free.put_nowait(conn)

        async def send_many(numbers: range) -> None:
            conn = await free.get()
            try:
                await conn.call_many([("XADD", stream, "*", "n", str(n), "body",
                                       json.dumps({"type": "bench", "payload": n})) for n in numbers])
            finally:
                free.put_nowait(conn)

        if pipeline > 1:
            started = await publish_bulks(count, concurrency, pipeline, arrivals, send_many)
        else:
            started = await publish_all(count, concurrency, arrivals, send)
        await asyncio.wait_for(arrivals.done.wait(), 600)
        await asyncio.gather(*consumer_tasks)
        server_us = (cpu_seconds(self.server.pid) - server_before) / count * 1e6
        bench_us = (time.process_time() - bench_before) / count * 1e6
        for conn in connections:
            await conn.close()
        await control.call("DEL", stream)
        await control.close()
        name = self.name + (f" COUNT {batch}" if batch > 1 else "") + (f" pipelined {pipeline}" if pipeline > 1 else "")
        return replace(result(name, workload, arrivals.latencies(), started, max(arrivals.arrived.values())),
                       bench_us=bench_us, server_us=server_us)


async def _connect_when_up(port: int) -> Resp:
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = await Resp.connect(port)
            if await conn.call("PING") == "PONG":
                return conn
        except (OSError, RuntimeError):   # not listening yet, or a connection closed before its answer
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------ the run


async def bench(tmp: Path, messages: int, concurrency: int, rounds: int, burst: int,
                workloads: set[str] | None = None, timing: bool = False,
                profile: Path | None = None, counters: bool = False, client: str = "raw") -> tuple[list[Result], int]:
    """Every workload (or those in ``workloads``) against the sidecars and both Redis; the results, and how many
    publishes the sidecar answered with backpressure."""
    sidecars = Sidecars(tmp, timing, client=client)
    sidecars.counters = counters
    redis, aof = Redis(tmp, durable=False), Redis(tmp, durable=True)
    results: list[Result] = []
    bulkpub = max(messages, concurrency * BULK * BULKPUB_BULKS)
    try:
        await sidecars.start()
        await redis.start()
        await aof.start()
        # warm up: connections, certificates, the streams' first pages
        await sidecars.run("single", 200, concurrency)
        await sidecars.run("bulk", 200, concurrency)
        sidecars.profile = profile
        for round_ in range(rounds):
            runs: list[Callable[[], Awaitable[Result]]] = [
                lambda: sidecars.run("single", messages, concurrency),
                lambda: redis.run("single", messages, concurrency),
                lambda: aof.run("single", messages, concurrency),
                lambda: sidecars.run("bulk", messages, concurrency),
                lambda: redis.run("bulk", messages, concurrency, batch=BULK),
                lambda: aof.run("bulk", messages, concurrency, batch=BULK),
                lambda: sidecars.run("bulkpub", bulkpub, concurrency, bulk=BULK),
                lambda: redis.run("bulkpub", bulkpub, concurrency, batch=BULK, pipeline=BULK),
                lambda: aof.run("bulkpub", bulkpub, concurrency, batch=BULK, pipeline=BULK),
                lambda: sidecars.run("sse", messages, concurrency),
                lambda: sidecars.run("sdk", messages, concurrency),
                lambda: sidecars.run("fanout", messages, concurrency, consumers=2),
                lambda: redis.run("fanout", messages, concurrency, consumers=2),
                lambda: aof.run("fanout", messages, concurrency, consumers=2),
            ]
            if workloads is not None:
                chosen = [w for w in ("single", "bulk", "bulkpub", "sse", "sdk", "fanout")
                          for _ in range(1 if w in ("sse", "sdk") else 3)]
                runs = [run for run, w in zip(runs, chosen, strict=True) if w in workloads]
            if round_ % 2:  # alternate who goes first, so that neither always gets the warmer machine
                runs.reverse()
            for run in runs:
                results.append(await run())
                print(_line(results[-1]), flush=True)
        for _ in range(rounds if workloads is not None else 1):
            if workloads is not None and "paced" not in workloads:
                break
            single = statistics.median(r.throughput for r in results
                                       if r.system == "sidecar" and r.workload == "single")
            results.append(await sidecars.run("paced", min(messages, 3000), concurrency, rate=single / 2))
            print(_line(results[-1]), flush=True)
        if timing:
            print(sidecars.split(), flush=True)
        for run in (lambda: sidecars.run("burst", burst, BURST_PUBLISHERS),
                    lambda: redis.run("burst", burst, BURST_PUBLISHERS),
                    lambda: aof.run("burst", burst, BURST_PUBLISHERS)):
            if workloads is not None and "burst" not in workloads:
                break
            results.append(await run())
            print(_line(results[-1]), flush=True)
    finally:
        await sidecars.stop()
        await redis.stop()
        await aof.stop()
    return results, sidecars.refused


def _line(r: Result) -> str:
    fsyncs = f"  fsyncs/msg {r.fsyncs_per_message:.3f}" if r.fsyncs_per_message is not None else ""
    cpu = f"  CPU µs/msg pub {r.cpu_us[0]:.0f} sub {r.cpu_us[1]:.0f}" if r.cpu_us is not None else ""
    cpu += f"  server {r.server_us:.0f}" if r.server_us is not None else ""
    cpu += f"  bench {r.bench_us:.0f}" if r.bench_us is not None else ""
    return (f"{r.workload:<7} {r.system:<24} {r.count:>6} msgs {r.throughput:>8.0f} msg/s  p50 {r.p50:>8.2f} ms  "
            f"p99 {r.p99:>8.2f} ms{fsyncs}{cpu}")


def table(results: list[Result]) -> str:
    """Medians per (workload, system), then the sidecar's ratios to each Redis of the same workload."""
    keys: list[tuple[str, str]] = []
    for r in results:
        if (r.workload, r.system) not in keys:
            keys.append((r.workload, r.system))
    medians: dict[tuple[str, str], Result] = {}
    for key in keys:
        runs = [r for r in results if (r.workload, r.system) == key]
        fsyncs = [r.fsyncs_per_message for r in runs if r.fsyncs_per_message is not None]
        cpus = [r.cpu_us for r in runs if r.cpu_us is not None]
        benches = [r.bench_us for r in runs if r.bench_us is not None]
        servers = [r.server_us for r in runs if r.server_us is not None]
        medians[key] = Result(key[1], key[0], runs[0].count, statistics.median(r.throughput for r in runs),
                              statistics.median(r.p50 for r in runs), statistics.median(r.p99 for r in runs),
                              statistics.median(fsyncs) if fsyncs else None,
                              (statistics.median(c[0] for c in cpus), statistics.median(c[1] for c in cpus))
                              if cpus else None,
                              statistics.median(benches) if benches else None,
                              statistics.median(servers) if servers else None)
    rows = ["| workload | system | runs | msg/s | p50 ms | p99 ms | fsyncs/msg | bench CPU µs/msg | "
            "server CPU µs/msg (sidecars: pub / sub) | sidecar ÷ this |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (workload, system), m in medians.items():
        runs = sum(1 for r in results if (r.workload, r.system) == (workload, system))
        ours = medians.get((workload, "sidecar"))
        ratio = f"x{ours.throughput / m.throughput:.2f}" if ours is not None and system != "sidecar" else ""
        if system == "sidecar" and workload in ("bulk", "bulkpub", "sse", "sdk"):
            reference = medians.get(("single", "redis"))
            ratio = f"x{m.throughput / reference.throughput:.2f} of single redis" if reference else ""
        fsyncs = f"{m.fsyncs_per_message:.3f}" if m.fsyncs_per_message is not None else ""
        bench_us = f"{m.bench_us:.0f}" if m.bench_us is not None else ""
        server = (f"{m.cpu_us[0]:.0f} / {m.cpu_us[1]:.0f}" if m.cpu_us is not None
                  else f"{m.server_us:.0f}" if m.server_us is not None else "")
        rows.append(f"| {workload} | {system} | {runs} | {m.throughput:.0f} | {m.p50:.2f} | {m.p99:.2f} | "
                    f"{fsyncs} | {bench_us} | {server} | {ratio} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.messaging")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--workloads", default=None,
                        help="comma-separated subset of single,bulk,bulkpub,sse,sdk,fanout,paced,burst (default: all; "
                             "paced needs single, and then runs once a round)")
    parser.add_argument("--profile", type=Path, default=None, metavar="FOLDER",
                        help="sample both sidecars with py-spy during each sidecar run (install py-spy in the venv): "
                             "raw samples in FOLDER, a summary of each printed")
    parser.add_argument("--counters", action="store_true",
                        help="after each sidecar run, print both sidecars' commits, operations, fsyncs and messaging "
                             "counters over the run, and the messages a POST the apps got")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="the bench's publishers and subscribing apps on the sidecar side: raw (minimal HTTP/1.1 "
                             "on asyncio streams and an asyncio Protocol, as lean as the Redis side's RESP; default) "
                             "or aiohttp (its client session and web server)")
    parser.add_argument("--timing", action="store_true",
                        help="log each message's stages in the sidecars and print the paced run's latency by stage")
    args = parser.parse_args(argv if argv is not None else [])
    workloads = set(args.workloads.split(",")) if args.workloads else None
    if shutil.which("redis-server") is None:
        print("skipped: redis-server is not installed (apt-get install redis-server, or make bench-tools)")
        return 0
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-messaging-") as folder:
        results, refused = asyncio.run(bench(Path(folder), args.messages, args.concurrency, args.rounds, args.burst,
                                             workloads, args.timing, args.profile, args.counters, args.client))
    print(f"\npublish → deliver, {args.messages} messages, {args.concurrency} publishers at once; burst: "
          f"{args.burst} from {BURST_PUBLISHERS}; medians of {args.rounds} alternating rounds")
    print(f"publishes the sidecar answered 429/503 (backpressure) and the bench tried again: {refused}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
