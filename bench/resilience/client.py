"""The load and the incident of bench/resilience, on one clock, in a process of its own.

    python -m bench.resilience.client --url http://127.0.0.1:P/work --host echo --rate 200 --duration 12 \
        --control http://127.0.0.1:B0 --script 2:fail,5:reset,8:ok

Sends GETs at a fixed rate (open loop: a slow answer does not slow the load) and, at the script's times,
sets the failing instance's mode through its control URL. Prints one JSON object: the requests as
``[t, status, instance port or 0, latency]`` and the script's times as run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


async def run(args: argparse.Namespace) -> dict[str, Any]:
    records: list[list[float]] = []
    script = [(float(at), mode) for at, mode in (step.split(":", 1) for step in args.script.split(","))]
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    ran: list[tuple[float, str]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()

        async def one() -> None:
            sent = time.monotonic()
            status, instance = 0, 0
            try:
                async with session.get(args.url, headers={"Host": args.host}) as answer:
                    body = await answer.read()
                    status = answer.status
                    if status == 200:
                        instance = int(json.loads(body).get("instance", 0))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                status = 0
            records.append([sent - start, status, instance, time.monotonic() - sent])

        async def incident() -> None:
            for at, mode in script:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                async with session.get(f"{args.control}/_control?mode={mode}") as answer:
                    await answer.read()
                ran.append((time.monotonic() - start, mode))

        tasks = {asyncio.ensure_future(incident())}
        interval = 1.0 / args.rate
        n = 0
        while True:
            due = start + n * interval
            if due - start >= args.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.wait_for(asyncio.gather(*tasks), args.timeout + 5)
    return {"requests": sorted(records), "script": ran}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
