"""Instructions a publish in the publishing sidecar, counted by callgrind: a number that does not move with the
machine's load, unlike CPU time on a shared machine.

    python -m bench.messaging.instructions [--messages 1000] [--out FOLDER]

The publishing sidecar runs under ``valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes`` (the
overload guard off: under valgrind its loop lags by design); the subscriber's sidecar and a small aiohttp app run as
:mod:`bench.messaging` runs them with ``--client aiohttp`` (topic ``single``, one message a POST). After a warm-up
of 300 publishes, instrumentation is switched on (``callgrind_control -i on``) for ``messages`` publishes by 16
publishers, through their delivery and the last acks, then off and dumped. Prints the instructions a publish of all
threads and of the event loop's thread (the rest is the writer's thread: SQLite and the fsync call).
``callgrind_annotate`` reads the dumps kept in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import SidecarProcess, http, make_certs, wait_for  # noqa: E402

PUBLISHERS = 16
WARM_UP = 300


def totals(out: Path, pid: int) -> dict[str, int]:
    """Each dump's ``totals:`` (one file per thread and dump), by file name."""
    found: dict[str, int] = {}
    for path in out.glob(f"callgrind.{pid}*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                found[path.name] = int(line.split()[1])
    return found


async def measure(tmp: Path, out: Path, messages: int) -> None:
    arrived: set[int] = set()
    done = asyncio.Event()
    expected = 0

    async def receive(request: web.Request) -> web.Response:
        arrived.add(json.loads(await request.read())["payload"])
        if len(arrived) >= expected:
            done.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/in", receive)
    app.router.add_get("/health", lambda r: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    certs = make_certs(tmp / "certs", ["publisher", "sub"])
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={out}/callgrind.%p", sys.executable, "-m", "sidecar"]
    pub = SidecarProcess(tmp, {"node": {"name": "pub"}, "tls": certs["publisher"], "gossip": {"profile": "local"},
                               "overload": {"enabled": False},
                               "messaging": {"queue": {"max_pending": 100_000}, "delivery_timeout": "60s"}},
                         name="pub", command=valgrind)
    sub: SidecarProcess | None = None
    try:
        await asyncio.to_thread(pub.start, True, 900)   # slow under valgrind
        sub = SidecarProcess(tmp, {"node": {"name": "sub"}, "tls": certs["sub"],
                                   "gossip": {"profile": "local", "join": [pub.listeners["gossip"]]},
                                   "services": [{"name": "sub", "port": port}],
                                   "subscriptions": [{"topic": "single", "path": "/in", "service": "sub"}]}, name="sub")
        await asyncio.to_thread(sub.start)
        await asyncio.to_thread(wait_for, lambda: len(http("GET", pub.api + "/v1/subscriptions", timeout=30).json())
                                >= 1, 600, what="the subscription known to the publisher")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PUBLISHERS)) as session:
            async def publish(first: int, count: int) -> None:
                nonlocal expected
                expected = first + count
                done.clear()
                numbers = iter(range(first, first + count))

                async def publisher() -> None:
                    for n in numbers:
                        async with session.post(pub.api + "/v1/publish/single", json={"type": "bench", "payload": n},
                                                timeout=aiohttp.ClientTimeout(total=600)) as response:
                            assert response.status == 202, await response.text()
                await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
                await asyncio.wait_for(done.wait(), 900)

            await publish(0, WARM_UP)
            assert pub.proc is not None
            control = ["callgrind_control"]
            await asyncio.to_thread(subprocess.run, [*control, "-i", "on", str(pub.proc.pid)], check=True,
                                    capture_output=True)
            await publish(WARM_UP, messages)
            await asyncio.sleep(1.0)   # the last batches' acks
            for step in (["-i", "off"], ["-d"]):
                await asyncio.to_thread(subprocess.run, [*control, *step, str(pub.proc.pid)], check=True,
                                        capture_output=True)
    finally:
        if sub is not None:
            sub.terminate()
        pub.terminate()
        await runner.cleanup()
    assert pub.proc is not None
    counted = totals(out, pub.proc.pid)
    main_thread = sum(v for name, v in counted.items() if name.endswith("-01"))
    print(f"{messages} publishes; instructions a publish: all threads {sum(counted.values()) / messages:,.0f}, "
          f"the event loop's thread {main_thread / messages:,.0f} (dumps in {out})")


async def _ok() -> web.Response:
    return web.json_response({})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.messaging.instructions")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="where callgrind's dumps go (default: a new folder)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("skipped: valgrind is not installed (apt-get install valgrind)")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="callgrind-publish-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as folder:
        asyncio.run(measure(Path(folder), out.resolve(), args.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
