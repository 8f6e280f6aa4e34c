"""The two loads of the gRPC benchmark, each returning a bench.proxy ``Result`` with the CPU the setup's
processes used per request (utime+stime from /proc over the run).

  h2load  h2c with prior knowledge, CLIENTS connections x STREAMS concurrent streams, small POSTs; latency
          percentiles from its per-request log
  grpc    the grpcio unary load of bench.grpc.client, in one or more processes at a fixed total concurrency
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.grpc.setups import Target
from bench.proxy.__main__ import ROOT, Result, cpu_seconds

POST_BODY = b"x" * 99 + b"\n"


def percentile(sorted_values: list[int], share: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))])


def h2load(port: int, authority: str | None, clients: int, streams: int,
           duration: float) -> tuple[int, float, list[int], int, str]:
    """2xx answers, elapsed seconds, their latencies in µs, errors (failed, errored, timed out or not 2xx), and
    what went wrong ("" if nothing)."""
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        body.write_bytes(POST_BODY)
        header = ["-H", f":authority: {authority}"] if authority else []
        out = subprocess.run(["h2load", "-c", str(clients), "-m", str(streams), "-D", str(max(1, round(duration))),
                              "-d", str(body), "-H", "content-type: text/plain", *header, "--log-file", str(log),
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=duration + 60)
        text = out.stdout
        lines = log.read_text().splitlines() if log.exists() else []
    latencies = sorted(int(f[2]) for f in (line.split("\t") for line in lines)
                       if len(f) == 3 and f[1].startswith("2"))
    finished = re.search(r"finished in ([\d.]+)(m?s)", text)
    elapsed = (float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)) if finished else duration
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    problems = []
    errors = 0
    if out.returncode != 0 or done is None:
        problems.append(f"h2load exited {out.returncode}: {(out.stderr or text)[-300:]}")
        errors = 1
    else:
        failed, errored, timeout = (int(done.group(i)) for i in (5, 6, 7))
        if failed or errored or timeout:
            problems.append(f"{failed} failed, {errored} errored, {timeout} timed out")
        not_2xx = sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else 0
        if not_2xx:
            problems.append(codes.group(0) if codes else "")
        # h2load counts a 4xx/5xx answer as failed and in its status codes: each request once
        errors = max(failed, not_2xx) + errored + timeout
    return len(latencies), elapsed, latencies, errors, "; ".join(problems)


def grpc_load(port: int, authority: str | None, concurrency: int, duration: float,
              processes: int) -> tuple[int, float, list[int], int, str]:
    """calls, elapsed (the longest process's), latencies in µs, errors, first error; ``concurrency`` callers
    spread over ``processes`` client processes."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "bench.grpc.client", "--target", f"127.0.0.1:{port}",
            "--duration", str(duration), *(["--authority", authority] if authority else [])]
    procs = [subprocess.Popen([*args, "--concurrency", str(share)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=ROOT, env=env) for share in shares]
    calls = errors = 0
    elapsed = 0.0
    latencies: list[int] = []
    first_error = ""
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 60)
        if proc.returncode != 0:
            first_error = first_error or f"client exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"
            errors += 1
            continue
        result = json.loads(out.decode().strip().splitlines()[-1])
        calls += result["calls"]
        errors += result["errors"]
        elapsed = max(elapsed, result["elapsed"])
        latencies += result["latencies_us"]
        first_error = first_error or result["first_error"]
    return calls, elapsed, sorted(latencies), errors, first_error


def measure_h2load(setup: str, target: Target, clients: int, streams: int, duration: float) -> tuple[Result, str]:
    before = sum(cpu_seconds(pid) for pid in target.pids)
    done, elapsed, latencies, errors, problem = h2load(target.h2_port, target.h2_authority, clients, streams,
                                                       duration)
    used = sum(cpu_seconds(pid) for pid in target.pids) - before
    return _result(setup, clients * streams, done, elapsed, latencies, used if target.pids else None,
                   errors), problem


def measure_grpc(setup: str, target: Target, concurrency: int, duration: float,
                 processes: int) -> tuple[Result, str]:
    before = sum(cpu_seconds(pid) for pid in target.pids)
    calls, elapsed, latencies, errors, first_error = grpc_load(target.grpc_port, target.grpc_authority, concurrency,
                                                               duration, processes)
    used = sum(cpu_seconds(pid) for pid in target.pids) - before
    return _result(setup, concurrency, calls, elapsed, latencies, used if target.pids else None, errors), first_error


def _result(setup: str, concurrency: int, done: int, elapsed: float, latencies: list[int], cpu_used: float | None,
            errors: int) -> Result:
    cpu = cpu_used / done * 1e6 if cpu_used is not None and done else None
    return Result(setup, concurrency, done / elapsed if elapsed else 0.0, percentile(latencies, 0.5),
                  percentile(latencies, 0.99), cpu, errors)
