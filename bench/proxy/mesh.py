"""wrk through real `sidecar run` processes, next to HAProxy and the bare engine, on the same nginx backend.

    python -m bench.proxy.mesh [--runs 3] [--duration 5] [--warmup 6] [--concurrency 1 50] [--gc-freeze] [--profile 5]
                               [--cpu-split 3] [--counters]

Setups (loopback, free ports, certificates from `sidecar certs init/issue` in a temporary folder):
  direct         wrk -> nginx
  haproxy-tls2   wrk -> HAProxy -> mTLS -> HAProxy -> nginx (the reference, from bench.proxy)
  engine-tls2    wrk -> engine -> mTLS -> engine -> nginx (the bare engine, from bench.proxy)
  floor-tls2     wrk -> floor -> mTLS -> floor -> nginx (bench.proxy.floor: bytes passed through on uvloop, no
                 HTTP at all; the least any Python proxy can cost, not a proxy anyone could run)
  sidecar-pair   wrk -> sidecar A outbound -> mTLS -> sidecar B inbound -> nginx: two `sidecar run` processes,
                 gossip joined (profile local), B registers the service "bench-backend" whose port is nginx's,
                 wrk sends `Host: bench-backend` to A's outbound listener. Every feature of the path is on:
                 routing by Host from the gossiped catalog, policies (timeouts, retries), authorization,
                 the caller's identity, x-request-id and traceparent, metrics.
  sidecar-self   wrk -> sidecar outbound -> mTLS -> the same sidecar's inbound -> nginx: one process that
                 hosts the service itself (an instance on the local node is reached through our own inbound,
                 so identity and authorization are the same). There is no "one sidecar hop": the outbound
                 alone cannot reach an app without a peer's inbound.
  sidecar-pair-gcfreeze  (with --gc-freeze) the pair, each process calling gc.freeze() once started, through
                 bench.proxy.gcfreeze (the sidecar has no switch for it).
The production profile, as deployed (observers from bench.proxy.observers, in this process):
  sidecar-pair-prod   the pair with a JSON access log to a file on each sidecar, OTLP tracing at 10% to a local
                 OTLP/HTTP receiver that decodes and counts the spans, and both admin ports' /metrics scraped
                 every second
  haproxy-tls2-prod   the HAProxy pair with `option httplog` logging every request to a local UDP syslog
                 receiver that counts the lines, and its Prometheus exporter scraped every second
  sidecar-pair-otlp   the pair with OTLP tracing at ratio 1.0 (no access log): the cost of a span per hop
  sidecar-pair-log    the pair with the JSON access log to a file (no tracing): the cost of a line per hop
  The report then gives the production pair's share of the production HAProxy pair, and the marginal CPU µs of
  OTLP at 1.0 per request and of one access-log line (two per request, one per sidecar) over sidecar-pair.
``--sidecar-root DIR`` runs the sidecars from another checkout (a before/after comparison; its access log then
goes to the sidecar's stderr file, as a checkout without ``telemetry.access_log.path`` writes it).
Runs alternate between setups. For each: median requests/s, p50/p99 latency and CPU µs per request summed over
the setup's proxy processes (utime+stime from /proc). Ratios compare to HAProxy's mTLS pair.
``--profile N`` then samples sidecar A and B with py-spy (pip install py-spy) for N seconds under c=50 and
prints the top functions by own time and by total time. ``--cpu-split N`` records both with ``perf`` (cycles
by shared object: the interpreter, the kernel, libcrypto, llhttp, uvloop). ``--counters`` then prints
instructions, simulated cache and branch misses and software counters per request of the HAProxy, floor,
engine and sidecar pairs (bench.counters, under valgrind: minutes).

Exit status: 0 when done (or skipped for lack of wrk/haproxy/nginx), 1 when a server failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.common import stop
from bench.proxy.__main__ import (
    ROOT,
    Result,
    engine,
    free_port,
    haproxy,
    make_certs,
    measure,
    nginx,
    wait_port,
    wrk,
)
from bench.proxy.__main__ import report as engine_report
from bench.proxy.observers import OtlpReceiver, Scraper, SyslogReceiver

SERVICE = "bench-backend"
TRUST_DOMAIN = "mesh.local"
READY_TIMEOUT = 30.0
NATIVE: list[str] = ["--native"] if os.environ.get("BENCH_PYSPY_NATIVE") else []
REFERENCE = {"sidecar-pair": "haproxy-tls2", "sidecar-self": "haproxy-tls2", "sidecar-pair-gcfreeze": "haproxy-tls2",
             "engine-tls2": "haproxy-tls2", "floor-tls2": "haproxy-tls2", "sidecar-pair-prod": "haproxy-tls2-prod",
             "sidecar-pair-otlp": "haproxy-tls2", "sidecar-pair-log": "haproxy-tls2"}
PRODUCTION = ("sidecar-pair-prod", "haproxy-tls2-prod", "sidecar-pair-otlp", "sidecar-pair-log")
SIDECAR_ROOT = ROOT     # --sidecar-root


# ------------------------------------------------------------------------------------------ sidecars


def sidecar_certs(folder: Path, *services: str) -> dict[str, dict[str, str]]:
    """A CA and one certificate per service, made by the CLI a user would run."""
    run = [sys.executable, "-m", "sidecar", "certs"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*run, "init", "--dir", str(folder), "--trust-domain", TRUST_DOMAIN], check=True,
                   capture_output=True, env=env, timeout=60)
    out = {}
    for service in services:
        subprocess.run([*run, "issue", service, "--dir", str(folder), "--ttl", "24h"], check=True,
                       capture_output=True, env=env, timeout=60)
        out[service] = {"trust_domain": TRUST_DOMAIN, "ca": str(folder / "ca.pem"),
                        "cert": str(folder / f"{service}.pem"), "key": str(folder / f"{service}-key.pem")}
    return out


def sidecar_config(folder: Path, name: str, tls: dict[str, Any], services: list[dict[str, Any]],
                   join: list[str], telemetry: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "node": {"name": name, "cluster": "bench", "data_dir": str(folder / f"data-{name}")},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "outbound": {"listen": f"127.0.0.1:{free_port()}"},
        "inbound": {"listen": f"127.0.0.1:{free_port()}"},
        "dns": {"listen": f"127.0.0.1:{free_port()}"},
        "gossip": {"listen": f"127.0.0.1:{free_port()}", "profile": "local", "join": join},
        "tls": tls,
        "services": services,
        "logging": {"level": "warning"},
        **({"telemetry": telemetry} if telemetry else {}),
    }


def telemetry_config(folder: Path, name: str, *, access_log: bool, otlp: str | None,
                     ratio: float) -> dict[str, Any]:
    """``telemetry:`` of a production sidecar: the JSON access log to a file, OTLP tracing to ``otlp``."""
    out: dict[str, Any] = {}
    if access_log:
        out["access_log"] = {"enabled": True, "format": "json"}
        if SIDECAR_ROOT == ROOT:
            out["access_log"]["path"] = str(folder / f"{name}-access.log")
    if otlp is not None:
        out["tracing"] = {"exporter": "otlp", "endpoint": otlp, "sample_ratio": ratio}
    return out


@contextmanager
def sidecar(folder: Path, config: dict[str, Any], gc_freeze: bool = False, prefix: Sequence[str] = (),
            timeout: float = READY_TIMEOUT) -> Iterator[subprocess.Popen[bytes]]:
    """A `sidecar run` process; ``prefix`` runs it under another program (valgrind, for bench.counters)."""
    name = config["node"]["name"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    module = "bench.proxy.gcfreeze" if gc_freeze else "sidecar"
    log = (folder / f"{name}.log").open("wb")
    root = ROOT if gc_freeze else SIDECAR_ROOT
    pythonpath = str(root) if root == ROOT else f"{root}{os.pathsep}{ROOT}"
    proc = subprocess.Popen([*prefix, sys.executable, "-m", module, "run", "-c", str(path)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            env={**os.environ, "PYTHONPATH": pythonpath})
    try:
        port = int(config["admin"]["listen"].rsplit(":", 1)[1])
        wait_port(port, proc, f"sidecar {name}", timeout)
        yield proc
    finally:
        stop(proc, 15)
        log.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def wait_catalog(config: dict[str, Any], proc: subprocess.Popen[bytes], folder: Path,
                 service: str = SERVICE, timeout: float = READY_TIMEOUT) -> None:
    """Until the source's app API shows ``service`` healthy (gossip joined, catalog spread)."""
    url = f"http://{config['api']['listen']}/v1/catalog"
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}: "
                               f"{(folder / (config['node']['name'] + '.log')).read_text()[-2000:]}")
        try:
            last = get_json(url)
            if any(i.get("status") == "healthy" for i in last.get(service, [])):
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{service} not in the catalog of {url} within {timeout}s (last: {last!r})")


def sidecar_pair(stack: ExitStack, folder: Path, backend: int, certs: dict[str, dict[str, str]],
                 gc_freeze: bool = False, suffix: str = "", access_log: bool = False, otlp: str | None = None,
                 ratio: float = 1.0) -> tuple[int, list[int], list[str]]:
    """(A's outbound port, both pids, both admin /metrics URLs)."""
    suffix = suffix or ("-frozen" if gc_freeze else "")
    names = f"bench-b{suffix}", f"bench-a{suffix}"
    b = sidecar_config(folder, names[0], certs[SERVICE], [{"name": SERVICE, "port": backend}], [],
                       telemetry_config(folder, names[0], access_log=access_log, otlp=otlp, ratio=ratio))
    b_proc = stack.enter_context(sidecar(folder, b, gc_freeze))
    a = sidecar_config(folder, names[1], certs["checkout"], [], [b["gossip"]["listen"]],
                       telemetry_config(folder, names[1], access_log=access_log, otlp=otlp, ratio=ratio))
    a_proc = stack.enter_context(sidecar(folder, a, gc_freeze))
    wait_catalog(a, a_proc, folder)
    return (int(a["outbound"]["listen"].rsplit(":", 1)[1]), [a_proc.pid, b_proc.pid],
            [f"http://{c['admin']['listen']}/metrics" for c in (a, b)])


def sidecar_self(stack: ExitStack, folder: Path, backend: int,
                 certs: dict[str, dict[str, str]]) -> tuple[int, list[int]]:
    s = sidecar_config(folder, "bench-self", certs[SERVICE], [{"name": SERVICE, "port": backend}], [])
    proc = stack.enter_context(sidecar(folder, s))
    wait_catalog(s, proc, folder)
    return int(s["outbound"]["listen"].rsplit(":", 1)[1]), [proc.pid]


# ------------------------------------------------------------------------------------------- report


def report(results: list[Result]) -> str:
    return engine_report(results, REFERENCE, "HAProxy mTLS pair (prod: its prod profile)")


def marginal_costs(results: list[Result]) -> str:
    """CPU µs per request of OTLP at 1.0 and per access-log line over the default pair: the median of each run's
    difference (a run measures the setups one after the other, so the pairs share the machine's state of those
    seconds; the machine drifts over minutes), with each run's."""
    def cpu(setup: str, concurrency: int) -> list[float]:
        return [r.cpu_us_per_request for r in results if (r.setup, r.concurrency) == (setup, concurrency)
                and r.cpu_us_per_request is not None]

    def paired(setup: str, base: list[float], concurrency: int, per: int) -> str | None:
        diffs = [(value - b) / per for value, b in zip(cpu(setup, concurrency), base, strict=False)]
        if not diffs:
            return None
        return f"{statistics.median(diffs):+.1f} µs ({', '.join(f'{d:+.1f}' for d in diffs)})"

    lines = []
    for concurrency in sorted({r.concurrency for r in results}):
        base = cpu("sidecar-pair", concurrency)
        if not base:
            continue
        otlp, log = paired("sidecar-pair-otlp", base, concurrency, 1), paired("sidecar-pair-log", base, concurrency, 2)
        if otlp is not None:
            lines.append(f"c={concurrency}: OTLP at ratio 1.0 (a span per hop, two per request): {otlp} CPU per "
                         "request over sidecar-pair, the median of the runs' differences (each run's)")
        if log is not None:
            lines.append(f"c={concurrency}: JSON access log (a line per hop, two per request): {log} CPU per line "
                         "over sidecar-pair, the median of the runs' differences (each run's)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ profile


def profile(port: int, pids: list[int], seconds: float, folder: Path) -> str:
    """py-spy samples of each pid under a c=50 load; the top functions by own and by total samples."""
    raws = spy(pids, seconds, folder, lambda: wrk(port, 50, seconds, SERVICE))
    return "\n\n".join(summarize(raw, f"pid {pid}") if ok else raw for pid, (ok, raw) in zip(pids, raws, strict=True))


def spy(pids: list[int], seconds: float, folder: Path, load: Callable[[], object], native: bool = bool(NATIVE),
        settle: float = 0.5, rate: int = 500) -> list[tuple[bool, str]]:
    """py-spy's raw samples of each pid while ``load()`` runs (started ``settle`` seconds after py-spy, which
    stops the process while it attaches): (True, the samples) or (False, why py-spy failed), one per pid.
    ``native`` adds C frames (the compiled request path is invisible without them) but stops the process
    for each sample."""
    tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(tool).exists():
        return [(False, "profile skipped: py-spy is not installed (pip install py-spy)")] * len(pids)
    outputs = [folder / f"profile-{pid}-{time.monotonic_ns()}.txt" for pid in pids]
    spies = [subprocess.Popen([tool, "record", "--pid", str(pid), "--duration", str(int(seconds + settle + 0.5)),
                               "--rate", str(rate), "--format", "raw", "--native" if native else "--nonblocking",
                               "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for pid, out in zip(pids, outputs, strict=True)]
    time.sleep(settle)
    load()
    results = []
    for pid, out, spy_proc in zip(pids, outputs, spies, strict=True):
        _, err = spy_proc.communicate(timeout=seconds + settle + 60)
        if spy_proc.returncode != 0 or not out.exists():
            results.append((False, f"py-spy failed on {pid}: {err.decode(errors='replace')[-500:]}"))
        else:
            results.append((True, out.read_text()))
    return results


def cpu_split(port: int, pids: list[int], seconds: float, folder: Path) -> str:
    """Where each pid's CPU cycles go under a c=50 load, by shared object (`perf record`, kernel included).

    py-spy samples wall time: a process that is runnable but waiting for a core is charged to the frame it
    stopped in (often a write), so on a busy machine it overstates system calls; cycles say what costs CPU.
    """
    perf = shutil.which("perf")
    if perf is None:
        return "cpu split skipped: perf is not installed (Debian package linux-perf)"
    outputs = [folder / f"perf-{pid}.data" for pid in pids]
    procs = [subprocess.Popen([perf, "record", "-F", "999", "-o", str(out), "-p", str(pid), "--", "sleep",
                               str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for pid, out in zip(pids, outputs, strict=True)]
    time.sleep(0.3)
    wrk(port, 50, seconds, SERVICE)
    text = []
    for pid, out, proc in zip(pids, outputs, procs, strict=True):
        _, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0 or not out.exists():
            text.append(f"perf failed on {pid}: {err.decode(errors='replace')[-300:]}")
            continue
        report = subprocess.run([perf, "report", "-i", str(out), "--sort", "dso", "--stdio"], capture_output=True,
                                text=True, timeout=60).stdout
        rows = [line.strip() for line in report.splitlines() if line.strip() and not line.startswith("#")][:8]
        text.append(f"pid {pid}, CPU cycles by shared object:\n" + "\n".join(f"   {row}" for row in rows))
    return "\n\n".join(text)


def stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output ("frame;frame;... COUNT" a line) as (frames, outermost first; samples)."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def summarize(raw: str, title: str, top: int = 15) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for stack, count in stacks(raw):
        frames = [_frame(f) for f in stack]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return f"{title}: no samples"
    where: Counter[str] = Counter()
    for name, n in own.items():
        where[_place(name)] += n
    lines = [f"{title}: {samples} samples", "own time by place:"]
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in where.most_common(8)]
    lines.append("own time:")
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("total time (inclusive):")
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def _place(frame: str) -> str:
    """Where a frame's time goes: a syscall, the event loop, TLS, the parser, or Python code by package."""
    match = re.search(r"\((.*)\)$", frame)
    where = match.group(1) if match else frame
    function = frame.split(" (")[0]
    if where.startswith("libc"):
        return "kernel: epoll wait" if function.startswith("epoll") else f"kernel: {function} (syscall)"
    if "libssl" in where or "libcrypto" in where:
        return "OpenSSL"
    if where.endswith((".c", ".h")) or "python3" in where:
        return "C (uvloop, CPython, llhttp)"
    package = where.split("/")[0]
    return f"Python: {package}/"


def _frame(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:LINE)"; drop the line so a function is one row
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    short = "/".join(Path(path).parts[-2:])
    return f"{function} ({short})"


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=6.0,
                        help="seconds of load at the highest concurrency for each setup before the runs (default 6)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--only", nargs="+", help="run only these setups (direct is always run)")
    parser.add_argument("--sidecar-root", type=Path, help="run the sidecars from this checkout (before/after)")
    parser.add_argument("--gc-freeze", action="store_true", help="add the pair with gc.freeze() after start")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="then profile sidecar A and B with py-spy under c=50 for SECONDS")
    parser.add_argument("--cpu-split", type=float, default=0.0, metavar="SECONDS",
                        help="then record sidecar A and B with perf under c=50: CPU cycles by shared object")
    parser.add_argument("--counters", action="store_true",
                        help="then counters per request under valgrind (bench.counters)")
    args = parser.parse_args()
    global SIDECAR_ROOT
    SIDECAR_ROOT = args.sidecar_root.resolve() if args.sidecar_root else ROOT
    missing = [tool for tool in ("wrk", "haproxy", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (Debian packages wrk, haproxy, nginx-light)")
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        wanted = set(args.only or []) | {"direct"}

        def want(name: str) -> bool:
            return not args.only or name in wanted

        setups: dict[str, tuple[int, list[int], str | None]] = {}
        observed: dict[str, Callable[[], int]] = {}
        scrape_urls: list[str] = []
        try:
            backend = nginx(stack, folder)
            setups["direct"] = (backend, [], None)
            plain_certs = make_certs(folder)
            if want("haproxy-tls2"):
                inner, inner_pid = haproxy(stack, folder, "haproxy-inner", backend, plain_certs, tls_in=True)
                outer, outer_pid = haproxy(stack, folder, "haproxy-outer", inner, plain_certs, tls_out=True)
                setups["haproxy-tls2"] = (outer, [outer_pid, inner_pid], None)
            if want("engine-tls2"):
                inner, inner_pid = engine(stack, backend, plain_certs, tls_in=True)
                outer, outer_pid = engine(stack, inner, plain_certs, tls_out=True)
                setups["engine-tls2"] = (outer, [outer_pid, inner_pid], None)
            if want("floor-tls2"):
                floor = "bench.proxy.floor"
                inner, inner_pid = engine(stack, backend, plain_certs, tls_in=True, module=floor)
                outer, outer_pid = engine(stack, inner, plain_certs, tls_out=True, module=floor)
                setups["floor-tls2"] = (outer, [outer_pid, inner_pid], None)
            mesh_certs = sidecar_certs(folder / "mesh", SERVICE, "checkout")
            if want("sidecar-pair"):
                port, pids, _ = sidecar_pair(stack, folder, backend, mesh_certs)
                setups["sidecar-pair"] = (port, pids, SERVICE)
            if want("haproxy-tls2-prod"):
                syslog = stack.enter_context(closing(SyslogReceiver()))
                observed["haproxy log lines"] = lambda: syslog.lines
                metrics = [free_port(), free_port()]
                inner, inner_pid = haproxy(stack, folder, "haproxy-inner-prod", backend, plain_certs, tls_in=True,
                                           log_port=syslog.port, metrics_port=metrics[0])
                outer, outer_pid = haproxy(stack, folder, "haproxy-outer-prod", inner, plain_certs, tls_out=True,
                                           log_port=syslog.port, metrics_port=metrics[1])
                setups["haproxy-tls2-prod"] = (outer, [outer_pid, inner_pid], None)
                scrape_urls += [f"http://127.0.0.1:{port}/metrics" for port in metrics]
            if any(want(name) for name in ("sidecar-pair-prod", "sidecar-pair-otlp")):
                receiver = stack.enter_context(closing(OtlpReceiver()))
                observed["spans received"] = lambda: receiver.span_count
            if want("sidecar-pair-prod"):
                port, pids, urls = sidecar_pair(stack, folder, backend, mesh_certs, suffix="-prod", access_log=True,
                                                otlp=receiver.url, ratio=0.1)
                setups["sidecar-pair-prod"] = (port, pids, SERVICE)
                scrape_urls += urls
            if want("sidecar-pair-otlp"):
                port, pids, _ = sidecar_pair(stack, folder, backend, mesh_certs, suffix="-otlp", otlp=receiver.url,
                                             ratio=1.0)
                setups["sidecar-pair-otlp"] = (port, pids, SERVICE)
            if want("sidecar-pair-log"):
                port, pids, _ = sidecar_pair(stack, folder, backend, mesh_certs, suffix="-log", access_log=True)
                setups["sidecar-pair-log"] = (port, pids, SERVICE)
            if scrape_urls:
                scraper = stack.enter_context(closing(Scraper(scrape_urls, 1.0)))
                observed["scrapes"] = lambda: scraper.scrapes
                observed["failed scrapes"] = lambda: scraper.failures
            if want("sidecar-self"):
                port, pids = sidecar_self(stack, folder, backend, mesh_certs)
                setups["sidecar-self"] = (port, pids, SERVICE)
            if args.gc_freeze:
                port, pids, _ = sidecar_pair(stack, folder, backend, mesh_certs, gc_freeze=True)
                setups["sidecar-pair-gcfreeze"] = (port, pids, SERVICE)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for port, _, host in setups.values():
            # warm up to the steady state a running proxy is in: connections, pools and TLS sessions, and for a
            # sidecar its performance records' ring filled (100,000 records) and its heap grown to its working size
            wrk(port, max(args.concurrency), args.warmup, host)
        for run in range(args.runs):
            for concurrency in args.concurrency:
                for name, (port, pids, host) in setups.items():
                    result = measure(name, port, pids, concurrency, args.duration, host)
                    results.append(result)
                    print(f"run {run + 1} c={concurrency:<3} {name:<22} {result.rps:>9.0f} req/s  "
                          f"p50 {result.p50_us:>7.0f}us  p99 {result.p99_us:>7.0f}us  "
                          f"cpu {result.cpu_us_per_request or 0:>5.1f}us/req  errors {result.errors}",
                          file=sys.stderr, flush=True)
        print(report(results))
        costs = marginal_costs(results)
        if costs:
            print("\n" + costs)
        if observed:
            print("\nobserved: " + ", ".join(f"{name} {count()}" for name, count in observed.items()))
        if args.profile and "sidecar-pair" in setups:
            port, pids, _ = setups["sidecar-pair"]
            print("\n## profile of the sidecar pair under c=50 (A = outbound side, B = inbound side)\n")
            print(profile(port, pids, args.profile, folder))
        if args.cpu_split and "sidecar-pair" in setups:
            port, pids, _ = setups["sidecar-pair"]
            print("\n## CPU cycles of the sidecar pair under c=50 (A, then B)\n")
            print(cpu_split(port, pids, args.cpu_split, folder))
    if args.counters:
        from bench.counters import proxy_report

        print("\n## counters per request\n")
        print(proxy_report(seconds=args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
