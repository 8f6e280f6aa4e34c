"""What a sidecar costs in memory, read from /proc as the kernel reports it (VmRSS), in real processes on loopback.

    python -m bench.memory [--runs 3] [--duration 4] [--settle 20] [--connections 10000] [--parts 1000]

Setup: the pair of ``bench.proxy.mesh`` (wrk -> sidecar A outbound -> mTLS -> sidecar B inbound -> nginx; B hosts
the service, both run with mTLS, certificates from ``sidecar certs``). Printed:

  idle            RSS of A and B once ready and quiet (B: one service, mTLS on, everything else default)
  after load      RSS of A and B right after the proxy bench's load (wrk c=1 and c=50, ``--runs`` x ``--duration``
                  seconds each), and again ``--settle`` seconds later (the sidecar gives freed memory back once
                  the load has passed)
  per connection  ``--connections`` idle mTLS connections held open to B's inbound (a peer sidecar's
                  handshake: client certificate, SNI naming the service), RSS growth divided by their number

  where it goes   (``--parts N``, 0 to skip) N idle mTLS connections to a bare server that takes connections the
                  way the inbound does (bench/memory/tlsserver.py), on uvloop and on asyncio's loop; and what
                  OpenSSL itself keeps per server-side session, with and without a verified client certificate
                  (bench/memory/openssl.py, bytes malloc'd)

Goals (issue 21): idle at most 45 MB, after the c=50 bench at most 60 MB, an idle mTLS connection at most 16 KiB.
Exit status: 0 when done (or skipped for lack of wrk/nginx), 1 when a server failed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from bench.common import stop
from bench.memory.openssl import per_session
from bench.proxy.__main__ import ROOT, nginx, wrk
from bench.proxy.mesh import SERVICE, sidecar, sidecar_certs, sidecar_config, wait_catalog

MiB = 1 << 20
GOALS = {"idle": 45e6, "after load": 60e6, "per connection": 16 * 1024}


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def quiet_rss(pid: int, seconds: float) -> int:
    """The largest RSS seen over ``seconds`` (sampled every 0.25 s): idle, with health checks and gossip ticking."""
    deadline, largest = time.monotonic() + seconds, rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        largest = max(largest, rss(pid))
    return largest


def hold_connections(address: tuple[str, int], tls: ssl.SSLContext, count: int,
                     deadline: float) -> list[ssl.SSLSocket]:
    """``count`` completed mTLS handshakes to ``address``, held open and idle; closed with a reset later."""
    def one(_: int) -> ssl.SSLSocket:
        if time.monotonic() > deadline:
            raise TimeoutError("out of time opening connections")
        raw = socket.create_connection(address, timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT left behind
        return tls.wrap_socket(raw, server_hostname=SERVICE)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def bare_server_cost(loop: str, certs: dict[str, str], client: ssl.SSLContext, count: int) -> float:
    """Bytes of RSS per idle mTLS connection held by bench/memory/tlsserver.py on ``loop``."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.memory.tlsserver", loop, certs["ca"], certs["cert"],
                             certs["key"]], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    held: list[ssl.SSLSocket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        before = quiet_rss(proc.pid, 1.0)
        held = hold_connections(("127.0.0.1", port), client, count, time.monotonic() + 300)
        at = quiet_rss(proc.pid, 2.0)
        return (at - before) / count
    finally:
        for sock in held:
            sock.close()
        stop(proc)


def verdict(what: str, value: float) -> str:
    return "goal met" if value <= GOALS[what] else "goal NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=1000)
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (Debian packages wrk, nginx-light)")
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 1024
    if soft < wanted and hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    elif hard < wanted:
        print(f"note: the open-file limit ({hard}) allows {hard - 1024} connections", file=sys.stderr)
        args.connections = max(0, hard - 1024)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        try:
            backend = nginx(stack, folder)
            certs = sidecar_certs(folder / "mesh", SERVICE, "checkout")
            b_config = sidecar_config(folder, "memory-b", certs[SERVICE], [{"name": SERVICE, "port": backend}], [])
            b_pid = stack.enter_context(sidecar(folder, b_config)).pid
            a_config = sidecar_config(folder, "memory-a", certs["checkout"], [], [b_config["gossip"]["listen"]])
            a_proc = stack.enter_context(sidecar(folder, a_config))
            a_pid = a_proc.pid
            wait_catalog(a_config, a_proc, folder)
            port = int(a_config["outbound"]["listen"].rsplit(":", 1)[1])
        except (RuntimeError, subprocess.CalledProcessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        wrk(port, 1, 1.0, SERVICE)          # one request through, then quiet
        idle_a, idle_b = quiet_rss(a_pid, 3.0), quiet_rss(b_pid, 3.0)
        for _ in range(args.runs):
            for concurrency in (1, 50):
                wrk(port, concurrency, args.duration, SERVICE)
        loaded_a, loaded_b = rss(a_pid), rss(b_pid)
        time.sleep(args.settle)             # a sampling period: what is resident once the load has passed
        settled_a, settled_b = rss(a_pid), rss(b_pid)

        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs["checkout"]["ca"])
        client.check_hostname = False       # peers are named by SPIFFE URI, checked by the sidecar itself
        client.load_cert_chain(certs["checkout"]["cert"], certs["checkout"]["key"])
        host, _, inbound = b_config["inbound"]["listen"].rpartition(":")
        before = quiet_rss(b_pid, 1.0)
        started = time.monotonic()
        held = hold_connections((host, int(inbound)), client, args.connections, started + 600)
        opened = time.monotonic() - started
        at = quiet_rss(b_pid, 2.0)
        for sock in held:
            sock.close()
        per = (at - before) / max(len(held), 1)
        parts: list[str] = []
        if args.parts:
            for loop in ("uvloop", "asyncio"):
                cost = bare_server_cost(loop, certs[SERVICE], client, args.parts)
                parts.append(f"| {args.parts:,} idle mTLS connections to a bare server on {loop} "
                             f"(bench/memory/tlsserver.py) | {cost / 1024:.1f} KiB each (RSS) |")
            tls = certs[SERVICE]
            peer = certs["checkout"]
            for verify, what in ((True, "with the client's certificate verified"), (False, "no client certificate")):
                cost = per_session(args.parts, tls["ca"], tls["cert"], tls["key"], peer["cert"], peer["key"], verify)
                parts.append(f"| OpenSSL's own state per server-side session, {what} | {cost / 1024:.1f} KiB "
                             f"each (malloc'd) |")

    print("| what | sidecar A (outbound side) | sidecar B (one service, inbound) | goal |")
    print("|---|---:|---:|---|")
    print(f"| idle RSS | {idle_a / MiB:.1f} MiB | {idle_b / MiB:.1f} MiB | <= 45 MB: "
          f"{verdict('idle', max(idle_a, idle_b))} |")
    print(f"| right after the c=1/c=50 load ({args.runs} x {args.duration:g} s each) | {loaded_a / MiB:.1f} MiB | "
          f"{loaded_b / MiB:.1f} MiB | |")
    print(f"| {args.settle:g} s after the load | {settled_a / MiB:.1f} MiB | {settled_b / MiB:.1f} MiB | <= 60 MB: "
          f"{verdict('after load', max(settled_a, settled_b))} |")
    print(f"| {len(held):,} idle mTLS connections on B's inbound (opened in {opened:.0f} s) | | "
          f"+{(at - before) / MiB:.1f} MiB, {per / 1024:.1f} KiB each | <= 16 KiB: {verdict('per connection', per)} |")
    if parts:
        print("\n| where an idle mTLS connection's memory goes | |\n|---|---:|")
        print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
