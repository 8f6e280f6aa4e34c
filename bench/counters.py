"""Counters per request and per DNS query: instructions, simulated cache and branch misses, software counters.

    python -m bench.counters [--only SETUP ...] [--requests 2000] [--queries 5000] [--seconds 4] [--ll-mib 4]

Also printed by ``python -m bench.proxy.mesh --counters`` (the proxy setups) and ``python -m bench.dns
--counters`` (the DNS servers).

The VMs this runs on expose no hardware counters (``perf stat -e instructions``: not supported), so each
server process runs under valgrind's callgrind with its cache and branch simulation. Once the setup answers,
counting starts (``--instr-atstart=no``: with the cache simulation on from the start, a process importing
the whole sidecar would take many minutes to start) and a warm-up on the same keep-alive connection (or UDP
socket) fills pools and caches; then ``callgrind_control -z`` zeroes every process of the setup, a fixed
number of requests goes through one at a time (bounded in time too: valgrind slows a process ~50x), and
``callgrind_control -d`` dumps what each process ran. What the processes run while idle (timers, gossip)
is measured over a quiet window first and subtracted pro rata. The simulated caches are fixed, not the
host's: I1 and D1 32 KiB 8-way, LL ``--ll-mib`` MiB 16-way, 64-byte lines, so two machines give the same
figures and a small last-level cache can be tried on a large one. Python processes run with
``PYTHONMALLOC=malloc``, so their allocations go through the C allocator valgrind sees (pymalloc's arenas
would hide them); the cache figures are those of glibc's malloc, not pymalloc's.

Software counters come from a separate run at full speed (no valgrind): CPU time, context switches and page
faults of the same processes from /proc (schedstat and status of every thread, faults from stat) over a
wrk (or dnsperf) run, divided by the requests (queries) answered.

Setups: haproxy-tls2, floor-tls2, engine-tls2, sidecar-pair (as in bench.proxy.mesh), sidecar-dns and dnsmasq
(as in bench.dns); named with ``--only``, the sidecar pair with one telemetry piece of the production profile
on: sidecar-pair-log (JSON access log to a file), sidecar-pair-otlp (OTLP at ratio 1.0 to a local receiver),
sidecar-pair-otlp01 (at 0.1), sidecar-pair-prod (both, at 0.1); each one's cost is its row less sidecar-pair's.
``--keep DIR`` keeps each process's counted dump for ``callgrind_annotate --inclusive=yes``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

PROXY_SETUPS = ("haproxy-tls2", "floor-tls2", "engine-tls2", "sidecar-pair")
# the sidecar pair with one kind of per-request telemetry on (bench.proxy.mesh's production pieces): what each
# costs per request is its row less sidecar-pair's. Counted only when named with --only.
TELEMETRY_SETUPS = {"sidecar-pair-log": (True, None), "sidecar-pair-otlp": (False, 1.0),
                    "sidecar-pair-otlp01": (False, 0.1), "sidecar-pair-prod": (True, 0.1)}
DNS_SETUPS = ("sidecar-dns", "dnsmasq")
# a process under valgrind starts ~50x slower: importing the sidecar alone takes tens of seconds
VALGRIND_START_TIMEOUT = 600.0
CONTROL_TIMEOUT = 120.0
IDLE_WINDOW = 3.0
WARM_UP = 50


# ------------------------------------------------------------------------------------------ counts


@dataclass(frozen=True, slots=True)
class Counts:
    """What callgrind counted, summed over the processes of one setup."""

    instructions: float = 0.0
    i1_misses: float = 0.0
    d1_misses: float = 0.0
    ll_misses: float = 0.0   # instruction and data
    branches: float = 0.0
    mispredicts: float = 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> Counts:
        return Counts(*(getattr(self, f.name) * factor for f in fields(self)))

    def minus(self, other: Counts) -> Counts:
        return Counts(*(max(0.0, getattr(self, f.name) - getattr(other, f.name)) for f in fields(self)))


def parse_dump(text: str) -> Counts:
    """The totals of a callgrind output file made with ``--cache-sim=yes --branch-sim=yes``."""
    events: list[str] = []
    summary: list[int] = []
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            summary = [int(n) for n in line.split()[1:]]
    if not events or not summary:
        raise RuntimeError("callgrind output without events or summary line")
    value = dict(zip(events, summary, strict=False))

    def total(*names: str) -> float:
        return float(sum(value.get(name, 0) for name in names))

    return Counts(total("Ir"), total("I1mr"), total("D1mr", "D1mw"), total("ILmr", "DLmr", "DLmw"),
                  total("Bc", "Bi"), total("Bcm", "Bim"))


def callgrind_prefix(folder: Path, ll_mib: int) -> list[str]:
    """The command line that runs a server under callgrind with the fixed cache model."""
    return ["env", "PYTHONMALLOC=malloc", "valgrind", "--tool=callgrind", "--cache-sim=yes", "--branch-sim=yes",
            "--I1=32768,8,64", "--D1=32768,8,64", f"--LL={ll_mib * 1024 * 1024},16,64", "--vgdb=yes",
            "--instr-atstart=no", f"--callgrind-out-file={folder}/callgrind.%p"]


def instrument(pids: Sequence[int]) -> None:
    """Start counting in processes started with ``--instr-atstart=no`` (they start ~10x faster without)."""
    for pid in pids:
        _control("--instr=on", pid)


def _control(flag: str, pid: int) -> None:
    # vgdb interrupts a process blocked in a system call, so this works on an idle server too
    done = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True,
                          timeout=CONTROL_TIMEOUT, check=False)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control {flag} {pid} failed: {done.stdout.strip()} {done.stderr.strip()}")


def _dump(pid: int, folder: Path) -> Counts:
    before = set(folder.glob(f"callgrind.{pid}.*"))
    _control("-d", pid)
    new = sorted(set(folder.glob(f"callgrind.{pid}.*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"callgrind wrote no dump for {pid}")
    return parse_dump(new[-1].read_text(errors="replace"))


def counted(pids: Sequence[int], folder: Path, load: Callable[[], int]) -> tuple[list[Counts], int, float]:
    """Zero the processes' counters, run ``load`` (returns how many it did), dump: each process's counts (in the
    order of ``pids``), done, seconds."""
    for pid in pids:
        _control("-z", pid)
    started = time.monotonic()
    done = load()
    elapsed = time.monotonic() - started
    return [_dump(pid, folder) for pid in pids], done, elapsed


def per_unit(pids: Sequence[int], folder: Path, load: Callable[[], int]) -> tuple[Counts, int, tuple[Counts, ...]]:
    """Counts per request of ``load``, less what the processes run when idle over the same time: summed over the
    processes, the count done, and each process's own (in the order of ``pids``)."""
    idle, _, idle_seconds = counted(pids, folder, lambda: _sleep(IDLE_WINDOW))
    busy, done, seconds = counted(pids, folder, load)
    parts = tuple(net_per_unit(b, done, seconds, i, idle_seconds) for b, i in zip(busy, idle, strict=True))
    return sum(parts, Counts()), done, parts


def net_per_unit(busy: Counts, done: int, seconds: float, idle: Counts, idle_seconds: float) -> Counts:
    """``busy`` less the idle rate over the same ``seconds``, per unit done (never below zero)."""
    if done <= 0:
        raise RuntimeError("no request completed under valgrind")
    return busy.minus(idle.scaled(seconds / idle_seconds)).scaled(1 / done)


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return 0


# ------------------------------------------------------------------------------------------ /proc


@dataclass(frozen=True, slots=True)
class Software:
    """Software counters of a set of processes (all their threads), from /proc."""

    cpu_ns: float = 0.0
    context_switches: float = 0.0
    page_faults: float = 0.0
    user_ticks: float = 0.0     # utime and stime, in clock ticks: their ratio says where the CPU time goes
    system_ticks: float = 0.0

    @property
    def user_share(self) -> float:
        ticks = self.user_ticks + self.system_ticks
        return self.user_ticks / ticks if ticks else 0.0

    def __sub__(self, other: Software) -> Software:
        return Software(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> Software:
        return Software(*(getattr(self, f.name) * factor for f in fields(self)))


def read_software(pids: Sequence[int]) -> Software:
    cpu = switches = faults = user = system = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                cpu += float((task / "schedstat").read_text().split()[0])
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += float(line.split()[1])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        faults += float(stat[7]) + float(stat[9])  # minflt, majflt (fields 10 and 12)
        user += float(stat[11])  # utime, stime (fields 14 and 15)
        system += float(stat[12])
    return Software(cpu, switches, faults, user, system)


def software_per_unit(pids: Sequence[int], load: Callable[[], int]) -> Software:
    before = read_software(pids)
    done = load()
    if done <= 0:
        raise RuntimeError("no request completed at full speed")
    return (read_software(pids) - before).scaled(1 / done)


# ------------------------------------------------------------------------------------------ loads


class HttpLoad:
    """Requests one at a time on one keep-alive connection (c=1), each checked to be a 200."""

    def __init__(self, port: int, host: str | None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Host": host} if host else {}

    def run(self, count: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        for done in range(count):
            if time.monotonic() > deadline:
                return done
            status = self.get()
            if status != 200:
                raise RuntimeError(f"request {done} answered {status}")
        return count

    def warm_up(self, count: int, seconds: float) -> None:
        """Until ``count`` requests in a row answered 200 (the first ones open pools and TLS sessions)."""
        deadline = time.monotonic() + seconds
        good = 0
        last: object = None
        while good < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up: {good} requests answered 200 in {seconds:g}s (last: {last!r})")
            try:
                last = self.get()
            except (OSError, http.client.HTTPException) as e:
                last = e
                self.connection.close()
            good = good + 1 if last == 200 else 0

    def get(self) -> int:
        self.connection.request("GET", "/index.html", headers=self.headers)
        response = self.connection.getresponse()
        response.read()
        return response.status


class DnsLoad:
    """The benchmark's queries over UDP one at a time, each waited for."""

    def __init__(self, port: int) -> None:
        import dns.message

        from bench.dns import fixture

        self.queries = []
        for i, line in enumerate(fixture.queries()):
            query = dns.message.make_query(*line.split())
            query.id = i
            self.queries.append(query.to_wire())
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.connect(("127.0.0.1", port))
        self.socket.settimeout(30)

    def run(self, count: int, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        queries = self.queries
        for done in range(count):
            if time.monotonic() > deadline:
                return done
            self.socket.send(queries[done % len(queries)])
            self.socket.recv(4096)
        return count


# ------------------------------------------------------------------------------------------ setups


@dataclass(frozen=True, slots=True)
class Row:
    setup: str
    unit: str
    counts: Counts
    measured: int
    software: Software
    parts: tuple[Counts, ...] = ()   # each process's counts, when the setup has several (the caller's side first)


@contextmanager
def proxy_setup(name: str, folder: Path, backend: int, certs: dict[str, Path], mesh_certs: dict[str, dict[str, str]],
                prefix: Sequence[str]) -> Iterator[tuple[int, list[int], str | None]]:
    """Start one proxy setup of bench.proxy.mesh: its port, the pids of its proxy processes, the Host to send."""
    from bench.proxy.__main__ import START_TIMEOUT, engine, haproxy
    from bench.proxy.mesh import SERVICE, sidecar_pair

    slow = bool(prefix)
    with ExitStack() as stack:
        if name == "haproxy-tls2":
            timeout = VALGRIND_START_TIMEOUT if slow else START_TIMEOUT
            inner, inner_pid = haproxy(stack, folder, "haproxy-inner", backend, certs, tls_in=True, prefix=prefix,
                                       timeout=timeout)
            outer, outer_pid = haproxy(stack, folder, "haproxy-outer", inner, certs, tls_out=True, prefix=prefix,
                                       timeout=timeout)
            yield outer, [outer_pid, inner_pid], None
        elif name in ("floor-tls2", "engine-tls2"):
            module = "bench.proxy.floor" if name == "floor-tls2" else "bench.proxy.engine"
            inner, inner_pid = engine(stack, backend, certs, tls_in=True, module=module, prefix=prefix)
            outer, outer_pid = engine(stack, inner, certs, tls_out=True, module=module, prefix=prefix)
            yield outer, [outer_pid, inner_pid], None
        elif name == "sidecar-pair" or name in TELEMETRY_SETUPS:
            access_log, ratio = TELEMETRY_SETUPS.get(name, (False, None))
            otlp = None
            if ratio is not None:
                from bench.proxy.observers import OtlpReceiver
                otlp = stack.enter_context(closing(OtlpReceiver())).url
            if slow:
                yield *slow_sidecar_pair(stack, folder, backend, mesh_certs, prefix, name, access_log=access_log,
                                         otlp=otlp, ratio=ratio or 1.0), SERVICE
            else:
                port, pids, _ = sidecar_pair(stack, folder, backend, mesh_certs, suffix=name[len("sidecar-pair"):],
                                             access_log=access_log, otlp=otlp, ratio=ratio or 1.0)
                yield port, pids, SERVICE
        else:
            raise ValueError(f"unknown proxy setup {name!r}")


# under valgrind a process runs ~50x slower: the local profile's 200 ms probe timeout would have each
# sidecar declare the other dead, so the pair gossips with timings far above that slowdown
SLOW_GOSSIP = {"profile": "wan", "probe_interval": "120s", "probe_timeout": "60s", "tcp_timeout": "60s"}
# and its event loop lags by seconds now and then: the overload guard would shed the counted requests with 503
SLOW_OVERLOAD = {"max_loop_lag": 0}


def slow_sidecar_pair(stack: ExitStack, folder: Path, backend: int, certs: dict[str, dict[str, str]],
                      prefix: Sequence[str], name: str = "sidecar-pair", *, access_log: bool = False,
                      otlp: str | None = None, ratio: float = 1.0) -> tuple[int, list[int]]:
    """bench.proxy.mesh's sidecar pair, under ``prefix``, with gossip timings that survive valgrind; the access
    log and OTLP tracing as bench.proxy.mesh's production pair has them."""
    from bench.proxy.mesh import SERVICE, sidecar, sidecar_config, telemetry_config, wait_catalog

    suffix = name[len("sidecar-pair"):]
    names = f"slow-b{suffix}", f"slow-a{suffix}"
    b = sidecar_config(folder, names[0], certs[SERVICE], [{"name": SERVICE, "port": backend}], [],
                       telemetry_config(folder, names[0], access_log=access_log, otlp=otlp, ratio=ratio))
    b["gossip"].update(SLOW_GOSSIP)
    b["overload"] = SLOW_OVERLOAD
    b_proc = stack.enter_context(sidecar(folder, b, prefix=prefix, timeout=VALGRIND_START_TIMEOUT))
    a = sidecar_config(folder, names[1], certs["checkout"], [], [b["gossip"]["listen"]],
                       telemetry_config(folder, names[1], access_log=access_log, otlp=otlp, ratio=ratio))
    a["gossip"].update(SLOW_GOSSIP)
    a["overload"] = SLOW_OVERLOAD
    a_proc = stack.enter_context(sidecar(folder, a, prefix=prefix, timeout=VALGRIND_START_TIMEOUT))
    wait_catalog(a, a_proc, folder, timeout=VALGRIND_START_TIMEOUT)
    return int(a["outbound"]["listen"].rsplit(":", 1)[1]), [a_proc.pid, b_proc.pid]


def keep_dumps(pids: Sequence[int], folder: Path, keep: Path, name: str, done: int) -> None:
    """Copies each process's last dump (the counted requests) to ``keep`` as ``NAME-N-REQUESTS.callgrind`` (N: the
    process's place in ``pids``, the caller's side first), for ``callgrind_annotate --inclusive=yes``."""
    keep.mkdir(parents=True, exist_ok=True)
    for place, pid in enumerate(pids):
        dumps = sorted(folder.glob(f"callgrind.{pid}.*"), key=lambda p: p.stat().st_mtime)
        if dumps:
            shutil.copyfile(dumps[-1], keep / f"{name}-{place}-{done}.callgrind")


def proxy_rows(setups: Sequence[str], requests: int, seconds: float, concurrency: int, ll_mib: int,
               keep: Path | None = None) -> list[Row]:
    from bench.proxy.__main__ import make_certs, nginx
    from bench.proxy.mesh import SERVICE, sidecar_certs

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-counters-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        backend = nginx(stack, folder)
        certs = make_certs(folder)
        mesh_certs = sidecar_certs(folder / "mesh", SERVICE, "checkout")
        for name in setups:
            try:
                rows.append(proxy_row(name, folder, backend, certs, mesh_certs, requests, seconds, concurrency,
                                      ll_mib, keep))
            except (RuntimeError, OSError, http.client.HTTPException) as e:  # the other setups still count
                print(f"counters: {name} failed: {e}", file=sys.stderr, flush=True)
    return rows


def proxy_row(name: str, folder: Path, backend: int, certs: dict[str, Path], mesh_certs: dict[str, dict[str, str]],
              requests: int, seconds: float, concurrency: int, ll_mib: int, keep: Path | None = None) -> Row:
    """Software counters at full speed, then callgrind's per request, of one proxy setup (started twice)."""
    from bench.proxy.__main__ import wrk

    with proxy_setup(name, folder, backend, certs, mesh_certs, ()) as (port, pids, host):
        wrk(port, concurrency, 1.0, host)  # warm-up

        def full_speed() -> int:
            rps = wrk(port, concurrency, seconds, host)[0]
            return round(rps * max(1, round(seconds)))

        software = software_per_unit(pids, full_speed)
    with proxy_setup(name, folder, backend, certs, mesh_certs, callgrind_prefix(folder, ll_mib)) as (port, pids, host):
        instrument(pids)
        load = HttpLoad(port, host)
        load.warm_up(WARM_UP, VALGRIND_START_TIMEOUT)
        counts, done, parts = per_unit(pids, folder, partial(load.run, requests, 30 * seconds))
        load.connection.close()
        if keep is not None:
            keep_dumps(pids, folder, keep, name, done)
    print(f"counters: {name} done ({done} requests under valgrind)", file=sys.stderr, flush=True)
    return Row(name, "request", counts, done, software, parts)


def dns_rows(setups: Sequence[str], queries: int, seconds: float, ll_mib: int,
             keep: Path | None = None) -> list[Row]:
    from bench.dns.__main__ import Server, dnsmasq, measure
    from bench.dns.__main__ import sidecar as dns_sidecar
    from bench.dns.fixture import queries as query_lines

    rows = []
    starters = {"sidecar-dns": dns_sidecar, "dnsmasq": dnsmasq}
    with tempfile.TemporaryDirectory(prefix="bench-counters-dns-") as tmp:
        folder = Path(tmp)
        query_file = folder / "queries.txt"
        query_file.write_text("\n".join(query_lines()) + "\n")
        for name in setups:
            with starters[name](folder) as server:
                measure(server, query_file, 1.0, 100)  # warm-up

                def full_speed(server: Server = server) -> int:
                    run = measure(server, query_file, seconds, 100)
                    return run.sent - run.lost

                software = software_per_unit([server.pid], full_speed)
            with starters[name](folder, callgrind_prefix(folder, ll_mib), VALGRIND_START_TIMEOUT) as server:
                instrument([server.pid])
                dns_load = DnsLoad(server.port)
                dns_load.run(WARM_UP * 4, VALGRIND_START_TIMEOUT)
                counts, done, _ = per_unit([server.pid], folder, partial(dns_load.run, queries, 30 * seconds))
                dns_load.socket.close()
                if keep is not None:
                    keep_dumps([server.pid], folder, keep, name, done)
            rows.append(Row(name, "query", counts, done, software))
            print(f"counters: {name} done ({done} queries under valgrind)", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------ report


def report(rows: Sequence[Row], reference: str, ll_mib: int) -> str:
    """A markdown table of the rows, then each row's instructions and LL misses as a multiple of ``reference``'s."""
    unit = rows[0].unit if rows else "request"
    lines = [
        f"Counters per {unit} (callgrind, simulated I1/D1 32 KiB, LL {ll_mib} MiB 16-way; Python under "
        "PYTHONMALLOC=malloc; software counters at full speed from /proc):",
        "",
        "| setup | instructions | I1 misses | D1 misses | LL misses | branches | mispredicts | CPU µs | user | "
        "ctx switches | page faults | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        c, s = row.counts, row.software
        lines.append(f"| {row.setup} | {c.instructions:,.0f} | {c.i1_misses:,.1f} | {c.d1_misses:,.1f} | "
                     f"{c.ll_misses:,.2f} | {c.branches:,.0f} | {c.mispredicts:,.1f} | {s.cpu_ns / 1000:.1f} | "
                     f"{s.user_share:.0%} | "
                     f"{s.context_switches:.2f} | {s.page_faults:.3f} | {row.measured} |")
    split = [row for row in rows if len(row.parts) > 1]
    if split:
        lines.append("")
        for row in split:
            each = " + ".join(f"{part.instructions:,.0f}" for part in row.parts)
            lines.append(f"{row.setup}: instructions per process, the caller's side first: {each}")
    base = next((row for row in rows if row.setup == reference), None)
    if base is not None:
        lines.append("")
        for row in rows:
            if row is base:
                continue
            times = _times(row.counts.instructions, base.counts.instructions)
            lines.append(f"{row.setup} / {reference}: instructions {times}, "
                         f"D1 misses {_times(row.counts.d1_misses, base.counts.d1_misses)}, "
                         f"LL misses {_times(row.counts.ll_misses, base.counts.ll_misses)}, "
                         f"mispredicts {_times(row.counts.mispredicts, base.counts.mispredicts)}, "
                         f"CPU {_times(row.software.cpu_ns, base.software.cpu_ns)}")
    return "\n".join(lines)


def _times(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def missing_tools(names: Sequence[str]) -> list[str]:
    return [tool for tool in names if shutil.which(tool) is None]


def proxy_report(setups: Sequence[str] = PROXY_SETUPS, requests: int = 2000, seconds: float = 4.0,
                 concurrency: int = 50, ll_mib: int = 4, keep: Path | None = None) -> str:
    missing = missing_tools(("valgrind", "callgrind_control", "wrk", "haproxy", "nginx"))
    if missing:
        return f"counters skipped: {', '.join(missing)} not installed"
    rows = proxy_rows(setups, requests, seconds, concurrency, ll_mib, keep)
    return report(rows, "haproxy-tls2", ll_mib) + f"\n(software counters over wrk -c{concurrency} runs of {seconds:g}s)"


def dns_report(setups: Sequence[str] = DNS_SETUPS, queries: int = 5000, seconds: float = 4.0, ll_mib: int = 4,
               keep: Path | None = None) -> str:
    missing = missing_tools(("valgrind", "callgrind_control", "dnsperf", "dnsmasq"))
    if missing:
        return f"counters skipped: {', '.join(missing)} not installed"
    rows = dns_rows(setups, queries, seconds, ll_mib, keep)
    return report(rows, "dnsmasq", ll_mib) + f"\n(software counters over dnsperf -q 100 runs of {seconds:g}s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.counters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[*PROXY_SETUPS, *TELEMETRY_SETUPS, *DNS_SETUPS],
                        help="these setups only")
    parser.add_argument("--requests", type=int, default=2000, help="requests per proxy setup under valgrind")
    parser.add_argument("--queries", type=int, default=5000, help="queries per DNS server under valgrind")
    parser.add_argument("--seconds", type=float, default=4.0, help="full-speed run length (valgrind gets 30x)")
    parser.add_argument("--concurrency", type=int, default=50, help="wrk -c of the full-speed run")
    parser.add_argument("--ll-mib", type=int, default=4, help="simulated last-level cache in MiB (default 4)")
    parser.add_argument("--keep", type=Path, help="copy each process's counted callgrind dump to this folder")
    args = parser.parse_args(argv)
    wanted = args.only or [*PROXY_SETUPS, *DNS_SETUPS]
    proxies = [s for s in (*PROXY_SETUPS, *TELEMETRY_SETUPS) if s in wanted]
    servers = [s for s in DNS_SETUPS if s in wanted]
    try:
        if proxies:
            print(proxy_report(proxies, args.requests, args.seconds, args.concurrency, args.ll_mib, args.keep),
                  flush=True)
        if servers:
            print(("\n" if proxies else "") + dns_report(servers, args.queries, args.seconds, args.ll_mib, args.keep))
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        print(f"bench.counters: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
