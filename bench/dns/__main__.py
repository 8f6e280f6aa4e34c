"""dnsperf against the sidecar's DNS responder and against dnsmasq serving the same names.

    python -m bench.dns [--runs 5] [--duration 4] [--clients 4] [--latency-qps 20000] [--counters]

Both servers run in their own process on loopback: the sidecar's DnsServer on uvloop with a fixed
snapshot of 50 services x 3 instances (bench/dns/fixture.py), and dnsmasq with the same names as
--host-record / --srv-host, no upstreams, no system configuration read or touched. Runs alternate
between the two so drift of the machine hits both alike. For each run: queries/s, average latency,
lost queries, and the CPU each server and dnsperf used, which shows what bounds the rate (a process
near 100% of a core is the bottleneck; CPU µs per query compares the servers even on a busy machine).
Then a run at a fixed rate with dnsperf's per-query output, for p50/p99. ``--counters`` then prints
instructions, simulated cache and branch misses and software counters per query of both servers
(bench.counters).

Exit status: 0 when done (or skipped for lack of dnsperf/dnsmasq), 1 when a server failed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from bench.common import stop
from bench.dns import fixture

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 10.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class Run:
    server: str
    qps: float
    sent: int
    lost: int
    avg_latency: float
    server_cpu: float  # fraction of one core
    client_cpu: float


class BenchFailed(Exception):
    """A server did not start or did not answer as expected."""


# ------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    """A port free for both UDP and TCP right now (dnsmasq needs one given to it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise BenchFailed("no free port for dnsmasq")


def answers(port: int, name: str, rdtype: str, deadline: float) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    while True:
        try:
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def sidecar(logs: Path, prefix: Sequence[str] = (), timeout: float = START_TIMEOUT) -> Iterator[Server]:
    """The sidecar's DNS server in a process; ``prefix`` runs it under another program (valgrind)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = logs / "sidecar.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "bench.dns.serve", "127.0.0.1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env, text=True,
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise BenchFailed(f"the sidecar's DNS server did not start: {line!r} {log.read_text()[-2000:]}")
        yield Server("sidecar", int(line), process.pid)
    finally:
        stop(process)


@contextmanager
def dnsmasq(logs: Path, prefix: Sequence[str] = (), timeout: float = START_TIMEOUT) -> Iterator[Server]:
    binary = shutil.which("dnsmasq")
    assert binary is not None
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [
                *prefix, binary, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--no-poll", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--local=/{fixture.DOMAIN}/", "--pid-file=", "--user=" + _user(), "--log-facility=/dev/null",
                "--cache-size=10000", *fixture.dnsmasq_records(),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(logs / "dnsmasq.log").open("w"), text=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                with suppress(dns.exception.Timeout, OSError):
                    answers(port, f"{fixture.service_name(0)}.service.{fixture.DOMAIN}", "A", time.monotonic())
                    break
                if time.monotonic() > deadline:
                    raise BenchFailed(f"dnsmasq did not answer: {(logs / 'dnsmasq.log').read_text()[-2000:]}")
            else:
                continue  # lost the port to someone else: another one
            yield Server("dnsmasq", port, process.pid)
            return
        finally:
            stop(process)
    raise BenchFailed("dnsmasq did not start")


def _user() -> str:
    # dnsmasq drops root for "nobody" by default; as another user it cannot change user at all
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")


def check_same_answers(a: Server, b: Server) -> None:
    """Both servers hold the same records for every name of the query list."""
    deadline = time.monotonic() + START_TIMEOUT
    for line in fixture.queries():
        name, rdtype = line.split()
        sets = []
        for server in (a, b):
            response = answers(server.port, name, rdtype, deadline)
            if response.rcode() != dns.rcode.NOERROR:
                raise BenchFailed(f"{server.name}: {name} {rdtype} → {dns.rcode.to_text(response.rcode())}")
            sets.append(sorted(rd.to_text().lower() for rrset in response.answer for rd in rrset))
        if sets[0] != sets[1]:
            raise BenchFailed(f"{name} {rdtype}: {a.name} says {sets[0]}, {b.name} says {sets[1]}")


# ------------------------------------------------------------------------------------------ dnsperf


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dnsperf(server: Server, queries: Path, duration: float, outstanding: int, extra: list[str],
            clients: int = 1) -> str:
    args = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(queries), "-l", str(duration),
            "-q", str(outstanding), "-c", str(clients), *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 30, check=False)
    if done.returncode != 0:
        raise BenchFailed(f"dnsperf failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def measure(server: Server, queries: Path, duration: float, outstanding: int, clients: int = 1) -> Run:
    server_before, client_before, started = cpu_seconds(server.pid), children_cpu(), time.monotonic()
    out = dnsperf(server, queries, duration, outstanding, [], clients)
    elapsed = time.monotonic() - started

    def number(label: str) -> float:
        found = re.search(rf"{label}:\s+([\d.]+)", out)
        if found is None:
            raise BenchFailed(f"no '{label}' in dnsperf's output:\n{out}")
        return float(found.group(1))

    return Run(
        server=server.name,
        qps=number("Queries per second"),
        sent=int(number("Queries sent")),
        lost=int(number("Queries lost")),
        avg_latency=number(r"Average Latency \(s\)"),
        server_cpu=(cpu_seconds(server.pid) - server_before) / elapsed,
        client_cpu=(children_cpu() - client_before) / elapsed,
    )


def latencies(server: Server, queries: Path, qps: int, duration: float) -> tuple[float, float, int]:
    """p50 and p99 in seconds at a fixed rate, and how many answers were measured."""
    out = dnsperf(server, queries, duration, 100, ["-Q", str(qps), "-v"])
    samples = sorted(float(line.split()[-1]) for line in out.splitlines() if line.startswith("> "))
    if not samples:
        raise BenchFailed("dnsperf -v printed no per-query lines")
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))], len(samples)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dns", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per server (default 5)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (default 4)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c: client sockets (default 4)")
    parser.add_argument("--counters", action="store_true", help="then counters per query (bench.counters)")
    parser.add_argument("--latency-qps", type=int, default=20000, help="rate of the latency run (default 20000)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("dnsperf", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        print(f"bench.dns: skipped, {' and '.join(missing)} not installed (Debian: dnsperf, dnsmasq-base)")
        return 0
    try:
        status = _bench(args)
        if args.counters:
            from bench.counters import dns_report

            print()
            print(dns_report(seconds=args.duration))
        return status
    except (BenchFailed, RuntimeError) as exc:
        print(f"bench.dns: {exc}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        queries = Path(tmp, "queries.txt")
        queries.write_text("\n".join(fixture.queries()) + "\n")
        with sidecar(Path(tmp)) as ours, dnsmasq(Path(tmp)) as theirs:
            check_same_answers(ours, theirs)
            print(f"DNS: {fixture.SERVICES} services x {fixture.INSTANCES} instances, {len(fixture.queries())} "
                  f"names (A, SRV, node A); dnsperf -q {args.outstanding} -c {args.clients}, {args.duration:g}s runs, "
                  f"{os.cpu_count()} CPUs; answers checked equal")
            for server in (ours, theirs):  # warm-up: caches filled, CPU frequency up
                dnsperf(server, queries, 1, args.outstanding, [], args.clients)
            runs: list[Run] = []
            for i in range(args.runs):
                order = (ours, theirs) if i % 2 == 0 else (theirs, ours)
                for server in order:
                    run = measure(server, queries, args.duration, args.outstanding, args.clients)
                    runs.append(run)
                    print(f"  run {i + 1} {run.server:8s} {run.qps:10,.0f} q/s  avg {run.avg_latency * 1e6:6.0f} µs  "
                          f"lost {run.lost:>5}/{run.sent:<8} server cpu {run.server_cpu:4.0%}  "
                          f"dnsperf cpu {run.client_cpu:4.0%}")
            tails = {server.name: latencies(server, queries, args.latency_qps, 2.0) for server in (ours, theirs)}
    print()
    rates: dict[str, float] = {}
    for name in ("sidecar", "dnsmasq"):
        mine = [r for r in runs if r.server == name]
        rates[name] = statistics.median(r.qps for r in mine)
        p50, p99, count = tails[name]
        print(f"  {name:8s} median {rates[name]:10,.0f} q/s  avg latency "
              f"{statistics.median(r.avg_latency for r in mine) * 1e6:5.0f} µs  lost {sum(r.lost for r in mine)}  "
              f"server cpu {statistics.median(r.server_cpu for r in mine):4.0%} "
              f"({statistics.median(r.server_cpu / r.qps for r in mine) * 1e6:.1f} µs/query)  "
              f"at {args.latency_qps:,} q/s: p50 {p50 * 1e6:.0f} µs p99 {p99 * 1e6:.0f} µs ({count} answers)")
    # each round ran both servers back to back, so a round's ratio sees the same machine load on both sides
    paired = [a.qps / b.qps for a, b in zip(
        [r for r in runs if r.server == "sidecar"], [r for r in runs if r.server == "dnsmasq"], strict=True)]
    ratio = statistics.median(paired)
    lost = sum(r.lost for r in runs if r.server == "sidecar")
    verdict = "goal met" if ratio >= 0.9 and lost == 0 else "goal NOT met"
    print(f"  ratio sidecar/dnsmasq: {ratio:.2f} median of rounds (range {min(paired):.2f}-{max(paired):.2f}; "
          f"of medians {rates['sidecar'] / rates['dnsmasq']:.2f}); goal >= 0.90 with no lost queries: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
