"""A grpcio unary load, one process: ``python -m bench.grpc.client --target HOST:PORT [--authority NAME]
--concurrency C --duration S [--size BYTES]``. C asyncio callers share one grpc.aio channel, each calling
/test.Echo/Unary back to back for S seconds (after one warm-up call); prints one JSON line:
{"calls", "errors", "elapsed", "latencies_us": [...], "first_error"}."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc

from tests.grpcapps.service import MESSAGE_OPTIONS, method

CALL_TIMEOUT = 10.0


async def load(target: str, authority: str | None, concurrency: int, duration: float, size: int) -> dict[str, object]:
    options = list(MESSAGE_OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
    latencies: list[int] = []
    errors = 0
    first_error = ""
    payload = b"p" * size
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        unary = channel.unary_unary(method("Unary"))
        try:
            await unary(payload, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            return {"calls": 0, "errors": 1, "elapsed": 0.0, "latencies_us": [],
                    "first_error": f"{e.code().name}: {e.details()}"}
        started = time.perf_counter()
        stop = started + duration

        async def caller() -> None:
            nonlocal errors, first_error
            while time.perf_counter() < stop:
                begun = time.perf_counter()
                try:
                    await unary(payload, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as e:
                    errors += 1
                    first_error = first_error or f"{e.code().name}: {e.details()}"
                    continue
                latencies.append(int((time.perf_counter() - begun) * 1e6))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"calls": len(latencies), "errors": errors, "elapsed": elapsed, "latencies_us": latencies,
            "first_error": first_error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--authority")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=100, help="request and response message bytes")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(load(args.target, args.authority, args.concurrency, args.duration, args.size))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
