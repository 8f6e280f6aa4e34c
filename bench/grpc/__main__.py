"""HTTP/2 and gRPC through proxies: h2load and a grpcio unary load, direct, through an HAProxy pair speaking
h2 over mTLS, and through the sidecar pair.

    python -m bench.grpc [--runs 3] [--duration 5] [--only haproxy-h2-pair sidecar-pair] [--loads h2load grpc]
                         [--grpc-concurrency 50] [--grpc-processes 2] [--profile SECONDS]

Loads (each at one stream, for the latency a proxy adds, and under concurrency, for its throughput):
  h2load  h2c with prior knowledge, 100-byte POSTs, 1 client x 1 stream and 50 clients x 10 streams (c=500),
          to an h2c app that reads each request whole and answers 200 "ok" (HAProxy answering by itself)
  grpc    /test.Echo/Unary with 100-byte messages from grpc.aio clients (bench.grpc.client), at 1 and at
          --grpc-concurrency calls in flight spread over --grpc-processes processes, to the gRPC test service
          (tests.grpcapps.server: grpcio's threaded server, one process)
Setups (loopback, free ports, certificates made in a temporary folder):
  direct           the load -> the backend
  haproxy-h2-pair  the load -h2c-> HAProxy -h2 over mTLS (ALPN h2)-> HAProxy -h2c-> the backend; one thread
                   each, backend chosen by :authority (`proto h2` on the plaintext bind, `alpn h2` on the mTLS
                   bind, `alpn h2 proto h2` to the inner HAProxy, `proto h2` to the backends). Before measuring,
                   the bench checks that the inner HAProxy picks ALPN h2 for a client offering h2 and http/1.1,
                   and that each hop saw HTTP/2.
  sidecar-pair     the load -> sidecar A's outbound (h2c, :authority = the service) -> mTLS -> sidecar B's
                   inbound -> the backend: two `sidecar run` processes as bench.proxy.mesh starts them, B hosting
                   both backends as services (`protocol: grpc` and `protocol: http2`: h2c to the app). The
                   sidecars inherit this process's environment, so a switch of the sidecar's (SIDECAR_H2_CORE=...)
                   set on the bench's command line reaches both. When the sidecar cannot start so or cannot carry
                   a probe request, the table says "not available" and why, and the rest runs.
Runs alternate between setups. For each: median requests/s, p50/p99 latency (of the runs' values), CPU µs per
request summed over the setup's proxy processes (utime+stime from /proc), errors; ratios compare to the HAProxy
pair. The HTTP/1.1 pair's figures are bench.proxy.mesh's.
``--profile SECONDS`` then samples both sidecars with py-spy under each load and shape (bench.grpc.profile:
install py-spy in the venv) and prints µs of CPU per call by layer, A's and B's: where to cut next.

Exit status: 0 when done (or skipped for lack of h2load/haproxy/curl), 1 when a server failed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import grpc

from bench.grpc.loads import grpc_load, h2load, measure_grpc, measure_h2load
from bench.grpc.profile import profile_load
from bench.grpc.setups import (
    CALLER,
    GRPC_SERVICE,
    H2_SERVICE,
    Backends,
    Target,
    grpc_app,
    h2c_app,
    haproxy_h2_pair,
    negotiated_alpn,
    sidecar_pair,
)
from bench.proxy.__main__ import Result, make_certs
from bench.proxy.__main__ import report as engine_report
from bench.proxy.mesh import sidecar_certs
from tests.grpcapps.service import channel, method

HAPROXY = "haproxy-h2-pair"
SIDECAR = "sidecar-pair"
REFERENCE = {SIDECAR: HAPROXY}
H2LOAD_SHAPES = [(1, 1), (50, 10)]  # clients x streams
PROBE_TIMEOUT = 5.0
WARM_UP = 1.0


# ------------------------------------------------------------------------------------------ probes


def probe_grpc(target: Target) -> str:
    """"" when one unary call passes, else why not."""
    with channel(f"127.0.0.1:{target.grpc_port}", target.grpc_authority) as ch:
        try:
            reply = ch.unary_unary(method("Unary"))(b"probe", timeout=PROBE_TIMEOUT)
        except grpc.RpcError as e:
            return f"a gRPC call fails: {e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    return "" if reply == b"probe" else f"a gRPC call answers {reply[:100]!r}"


def probe_h2(target: Target) -> str:
    done, _, _, errors, problem = h2load(target.h2_port, target.h2_authority, 1, 1, 1.0)
    return "" if done and not errors else f"h2load through it fails: {problem or 'no 2xx answer'}"


def hop_versions(port: int) -> dict[str, str]:
    """The HTTP version each HAProxy hop received (x-outer-http, x-inner-http) for an h2c request."""
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-", "-H",
                          f"Host: {H2_SERVICE}", "-d", "x", f"http://127.0.0.1:{port}/"], capture_output=True,
                         text=True, timeout=10)
    headers = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return {hop: headers.get(f"x-{hop}-http", "?") for hop in ("outer", "inner")}


# ------------------------------------------------------------------------------------------ report


def report(results: list[Result], unavailable: dict[str, str], title: str) -> str:
    """bench.proxy's table (medians, req/s against the HAProxy pair), a row per setup that could not run, and
    the sidecar's added p50 at one stream against HAProxy's (issue 19's goal: at most 2x)."""
    table, _, notes = engine_report(results, REFERENCE, "HAProxy h2 mTLS pair").partition("\n\n")
    lines = [f"## {title}", "", table.rstrip("\n")]
    lines += [f"| {setup} | - | not available ({why.replace('|', '/')}) | | | | | |"
              for setup, why in unavailable.items()]
    lines += ["", *notes.strip().splitlines()]
    added = {setup: statistics.median(r.p50_us for r in results if r.setup == setup and r.concurrency == 1)
             for setup in ("direct", HAPROXY, SIDECAR) if any(r.setup == setup for r in results)}
    if len(added) == 3 and added[HAPROXY] > added["direct"]:
        ratio = (added[SIDECAR] - added["direct"]) / (added[HAPROXY] - added["direct"])
        lines.append(f"{SIDECAR}: added p50 at one stream is {ratio:.1f}x the HAProxy pair's (goal: at most 2x)")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--only", nargs="+", choices=[HAPROXY, SIDECAR],
                        help="run only these setups (direct is always run)")
    parser.add_argument("--loads", nargs="+", choices=["h2load", "grpc"], default=["h2load", "grpc"])
    parser.add_argument("--grpc-concurrency", type=int, default=50)
    parser.add_argument("--grpc-processes", type=int, default=2, help="client processes of the grpc load")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="then profile the sidecar pair with py-spy under each load and shape for SECONDS: "
                             "µs per call by layer (bench.grpc.profile)")
    args = parser.parse_args()
    missing = [tool for tool in ("h2load", "haproxy", "curl") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (Debian packages nghttp2-client, haproxy, curl: "
              "make tools bench-tools)")
        return 0
    wanted = set(args.only or [HAPROXY, SIDECAR])
    results: dict[str, list[Result]] = {load: [] for load in args.loads}
    unavailable: dict[str, dict[str, str]] = {load: {} for load in args.loads}
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        targets: dict[str, Target] = {}
        try:
            h2_port, _ = h2c_app(stack, folder)
            backends = Backends(grpc_app(stack, workers=max(64, 2 * args.grpc_concurrency)), h2_port)
            targets["direct"] = Target(backends.grpc, backends.h2, [])
            if HAPROXY in wanted:
                certs = make_certs(folder)
                targets[HAPROXY], inner = haproxy_h2_pair(stack, folder, backends, certs)
                alpn = negotiated_alpn(inner, certs)
                hops = hop_versions(targets[HAPROXY].h2_port)
                print(f"{HAPROXY}: the inner HAProxy picks ALPN {alpn!r} over mTLS; HTTP major version seen by the "
                      f"outer hop {hops['outer']}, by the inner hop {hops['inner']}", file=sys.stderr)
                if alpn != "h2" or set(hops.values()) != {"2"}:
                    raise RuntimeError(f"the HAProxy pair does not speak h2 on every leg: {alpn!r} {hops}")
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if SIDECAR in wanted:
            try:
                mesh_certs = sidecar_certs(folder / "mesh", GRPC_SERVICE, H2_SERVICE, CALLER)
                targets[SIDECAR] = sidecar_pair(stack, folder, backends, mesh_certs)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                for load in args.loads:
                    unavailable[load][SIDECAR] = str(e).split(" | ")[0][:300]
        probes: dict[str, Callable[[Target], str]] = {"h2load": probe_h2, "grpc": probe_grpc}
        runnable: dict[str, dict[str, Target]] = {}
        for load in args.loads:
            runnable[load] = {}
            for name, target in targets.items():
                why = probes[load](target)
                if why:
                    unavailable[load][name] = why[:400]
                else:
                    runnable[load][name] = target
        for load, setups in unavailable.items():
            for name, why in setups.items():
                print(f"{load} {name}: not available ({why})", file=sys.stderr)
        for load in args.loads:  # warm up: connections, pools, TLS sessions (HAProxy opens many h2 connections)
            for target in runnable[load].values():
                if load == "h2load":
                    h2load(target.h2_port, target.h2_authority, *H2LOAD_SHAPES[-1], WARM_UP)
                else:
                    grpc_load(target.grpc_port, target.grpc_authority, args.grpc_concurrency, WARM_UP,
                              args.grpc_processes)
        for run in range(args.runs):
            for load in args.loads:
                for name, target in runnable[load].items():
                    for result, problem in _measure(load, name, target, args):
                        results[load].append(result)
                        print(f"run {run + 1} {load:<6} c={result.concurrency:<3} {name:<16} {result.rps:>9.0f} req/s"
                              f"  p50 {result.p50_us:>7.0f}us  p99 {result.p99_us:>7.0f}us  "
                              f"cpu {result.cpu_us_per_request or 0:>6.1f}us/req  errors {result.errors}"
                              f"{'  (' + problem + ')' if problem else ''}", file=sys.stderr, flush=True)
        titles = {"h2load": "h2load, h2c POSTs (c = clients x streams)",
                  "grpc": "grpcio unary calls (c = calls in flight)"}
        for load in args.loads:
            print(report(results[load], unavailable[load], titles[load]), flush=True)
        if args.profile:
            print("## Where a call's time goes in the sidecar pair (py-spy, µs per call by layer)\n")
            for load in args.loads:
                if SIDECAR in runnable[load]:
                    for text in _profile(load, runnable[load][SIDECAR], args, folder):
                        print(text + "\n", flush=True)
    return 0


def _measure(load: str, name: str, target: Target, args: argparse.Namespace) -> list[tuple[Result, str]]:
    if load == "h2load":
        return [measure_h2load(name, target, clients, streams, args.duration) for clients, streams in H2LOAD_SHAPES]
    return [measure_grpc(name, target, concurrency, args.duration, args.grpc_processes)
            for concurrency in (1, args.grpc_concurrency)]


def _profile(load: str, target: Target, args: argparse.Namespace, folder: Path) -> list[str]:
    """The layer split of the sidecar pair (A the caller's, B the callee's) under each shape of ``load``."""
    pids = dict(zip(("A", "B"), target.pids, strict=True))
    seconds = args.profile
    shapes: list[tuple[str, Callable[[], int]]]
    if load == "h2load":
        shapes = [(f"h2load {clients}x{streams}",
                   partial(_calls, h2load, target.h2_port, target.h2_authority, clients, streams, seconds))
                  for clients, streams in H2LOAD_SHAPES]
    else:
        shapes = [(f"grpcio unary, {concurrency} in flight",
                   partial(_calls, grpc_load, target.grpc_port, target.grpc_authority, concurrency, seconds,
                           args.grpc_processes))
                  for concurrency in (1, args.grpc_concurrency)]
    return [profile_load(title, pids, seconds, folder, run) for title, run in shapes]


def _calls(load: Callable[..., tuple[int, float, list[int], int, str]], *args: object) -> int:
    return load(*args)[0]


if __name__ == "__main__":
    sys.exit(main())
