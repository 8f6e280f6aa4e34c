"""wrk through the proxy engine and through HAProxy, on the same nginx backend.

    python -m bench.proxy [--runs 3] [--duration 5] [--concurrency 1 50] [--no-tls]

Setups, all on loopback with free ports, config files in a temporary folder, every server in the
foreground and stopped at the end (no system file read or touched):
  direct         wrk -> nginx (a 100-byte static file)
  haproxy        wrk -> HAProxy -> nginx (one hop; nbthread 1, http-reuse always, x-request-id added)
  engine         wrk -> engine -> nginx (one hop; uvloop, one process, x-request-id + traceparent added)
  haproxy-tls2   wrk -> HAProxy -> mTLS -> HAProxy -> nginx
  engine-tls2    wrk -> engine -> mTLS -> engine -> nginx
  floor, floor-tls2  the same through bench.proxy.floor: bytes passed through on uvloop, no HTTP (the least any
                 Python proxy can cost; not a proxy anyone could run)
Runs alternate between setups so drift of the machine hits all alike. For each: median requests/s,
p50/p99 latency (of the runs' values), and CPU microseconds per request of the proxy processes
(utime+stime from /proc/PID/stat over the run). Ratios compare the engine to HAProxy at the same
concurrency and hop count. nginx runs one worker; HAProxy one thread, like the single-threaded engine.

Exit status: 0 when done (or skipped for lack of wrk/haproxy/nginx), 1 when a server failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import stop

ROOT = Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 10.0
BODY = b"x" * 99 + b"\n"


@dataclass(frozen=True, slots=True)
class Result:
    setup: str
    concurrency: int
    rps: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float | None
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read() if process.stderr else b""
            raise RuntimeError(f"{name} exited with {process.returncode}: {error!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s")


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """Seconds of CPU ``pid`` used so far in user space and in the kernel (utime, stime: fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


# ------------------------------------------------------------------------------------------ certs


def make_certs(folder: Path) -> dict[str, Path]:
    """A throwaway CA and one certificate for localhost/127.0.0.1 usable as server and client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.UniformResourceIdentifier("spiffe://bench.local/service/bench")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
             "bundle": folder / "bundle.pem"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths["key"].write_bytes(key_pem)
    paths["bundle"].write_bytes(cert.public_bytes(pem) + key_pem)
    return paths


# ------------------------------------------------------------------------------------------ servers


@contextmanager
def process(args: list[str], name: str, port: int | None = None, env: dict[str, str] | None = None,
            timeout: float = START_TIMEOUT) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        if port is not None:
            wait_port(port, proc, name, timeout)
        yield proc
    finally:
        stop(proc)


def nginx(stack: ExitStack, folder: Path) -> int:
    port = free_port()
    (folder / "www").mkdir()
    (folder / "www" / "index.html").write_bytes(BODY)
    for sub in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / f"tmp-{sub}").mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {folder}/tmp-client;
    proxy_temp_path {folder}/tmp-proxy;
    fastcgi_temp_path {folder}/tmp-fastcgi;
    uwsgi_temp_path {folder}/tmp-uwsgi;
    scgi_temp_path {folder}/tmp-scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
    }}
}}
""")
    stack.enter_context(process(["nginx", "-p", str(folder), "-c", str(conf), "-e", f"{folder}/nginx-error.log"],
                                "nginx", port))
    return port


def haproxy_head(log_port: int | None = None) -> str:
    """HAProxy's global and defaults: one thread (like the single-threaded engine), connections to the server kept
    and shared between clients; with ``log_port``, `option httplog` lines to UDP syslog on that port."""
    log_global = f"    log 127.0.0.1:{log_port} len 4096 local0 info\n" if log_port else ""
    log_defaults = "    log global\n    option httplog\n" if log_port else ""
    return f"""
global
    nbthread 1
    maxconn 8192
{log_global}defaults
    mode http
{log_defaults}    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always"""


HAPROXY_HEAD = haproxy_head()


def haproxy(stack: ExitStack, folder: Path, name: str, upstream: int, certs: dict[str, Path] | None = None,
            tls_in: bool = False, tls_out: bool = False, log_port: int | None = None,
            metrics_port: int | None = None, prefix: Sequence[str] = (),
            timeout: float = START_TIMEOUT) -> tuple[int, int]:
    """``log_port``: `option httplog` lines to UDP syslog on that port; ``metrics_port``: HAProxy's Prometheus
    exporter on /metrics there (the production profile); ``prefix`` runs it under another program (valgrind,
    for bench.counters)."""
    port = free_port()
    metrics = (f"frontend metrics\n    bind 127.0.0.1:{metrics_port}\n"
               "    http-request use-service prometheus-exporter if { path /metrics }\n") if metrics_port else ""
    bind_tls = f" ssl crt {certs['bundle']} ca-file {certs['ca']} verify required" if tls_in and certs else ""
    server_tls = (f" ssl crt {certs['bundle']} ca-file {certs['ca']} verify required sni str(localhost)"
                  if tls_out and certs else "")
    conf = folder / f"{name}.cfg"
    conf.write_text(f"""{haproxy_head(log_port)}
frontend f
    bind 127.0.0.1:{port}{bind_tls}
    http-request set-header x-request-id %[uuid] if !{{ req.hdr(x-request-id) -m found }}
    default_backend b
backend b
    server s1 127.0.0.1:{upstream}{server_tls}
{metrics}""")
    proc = stack.enter_context(process([*prefix, "haproxy", "-db", "-f", str(conf)], name, port, timeout=timeout))
    return port, proc.pid


def engine(stack: ExitStack, upstream: int, certs: dict[str, Path] | None = None, tls_in: bool = False,
           tls_out: bool = False, module: str = "bench.proxy.engine", prefix: Sequence[str] = ()) -> tuple[int, int]:
    """A hop of the engine, or of another module with its command line (bench.proxy.floor); ``prefix`` as in
    haproxy()."""
    args = [*prefix, sys.executable, "-m", module, "--upstream", f"127.0.0.1:{upstream}"]
    if tls_in and certs:
        args += ["--listen-tls", str(certs["cert"]), str(certs["key"]), str(certs["ca"])]
    if tls_out and certs:
        args += ["--upstream-tls", str(certs["cert"]), str(certs["key"]), str(certs["ca"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = stack.enter_context(process(args, "engine", None, env))
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.match(r"PORT (\d+)", line)
    if not match:
        raise RuntimeError(f"engine did not start: {line!r} {proc.stderr.read() if proc.stderr else b''!r}")
    port = int(match.group(1))
    wait_port(port, proc, "engine")
    return port, proc.pid


# ------------------------------------------------------------------------------------------ wrk

_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _duration_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(port: int, concurrency: int, duration: float, host: str | None = None) -> tuple[float, float, float, int]:
    """requests/s, p50 and p99 in µs, errors; ``host``: the Host header to send (a sidecar routes by it)."""
    header = ["-H", f"Host: {host}"] if host else []
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", *header,
                          f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True, check=True,
                         timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _duration_us(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _duration_us(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for match in re.finditer(r"(?:Non-2xx or 3xx responses|Socket errors):\s*(.*)", out):
        errors += sum(int(n) for n in re.findall(r"\d+", match.group(1)))
    return rps, p50, p99, errors


def measure(setup: str, port: int, pids: list[int], concurrency: int, duration: float,
            host: str | None = None) -> Result:
    before = sum(cpu_seconds(pid) for pid in pids)
    rps, p50, p99, errors = wrk(port, concurrency, duration, host)
    used = sum(cpu_seconds(pid) for pid in pids) - before
    requests = rps * duration
    cpu = used / requests * 1e6 if pids and requests else None
    return Result(setup, concurrency, rps, p50, p99, cpu, errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--no-tls", action="store_true", help="skip the two-hop mTLS setups")
    parser.add_argument("--only", nargs="+", help="run only these setups (direct is always run)")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "haproxy", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (Debian packages wrk, haproxy, nginx-light)")
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        try:
            backend = nginx(stack, folder)
            setups: dict[str, tuple[int, list[int]]] = {"direct": (backend, [])}
            port, pid = haproxy(stack, folder, "haproxy", backend)
            setups["haproxy"] = (port, [pid])
            port, pid = engine(stack, backend)
            setups["engine"] = (port, [pid])
            port, pid = engine(stack, backend, module="bench.proxy.floor")
            setups["floor"] = (port, [pid])
            if not args.no_tls:
                certs = make_certs(folder)
                inner, inner_pid = haproxy(stack, folder, "haproxy-inner", backend, certs, tls_in=True)
                outer, outer_pid = haproxy(stack, folder, "haproxy-outer", inner, certs, tls_out=True)
                setups["haproxy-tls2"] = (outer, [outer_pid, inner_pid])
                inner, inner_pid = engine(stack, backend, certs, tls_in=True)
                outer, outer_pid = engine(stack, inner, certs, tls_out=True)
                setups["engine-tls2"] = (outer, [outer_pid, inner_pid])
                inner, inner_pid = engine(stack, backend, certs, tls_in=True, module="bench.proxy.floor")
                outer, outer_pid = engine(stack, inner, certs, tls_out=True, module="bench.proxy.floor")
                setups["floor-tls2"] = (outer, [outer_pid, inner_pid])
        except (RuntimeError, subprocess.CalledProcessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.only:
            setups = {name: value for name, value in setups.items() if name in args.only or name == "direct"}
        for port, _ in setups.values():  # warm up: connections, pools, TLS sessions
            wrk(port, max(args.concurrency), 1.0)
        for run in range(args.runs):
            for concurrency in args.concurrency:
                for name, (port, pids) in setups.items():
                    result = measure(name, port, pids, concurrency, args.duration)
                    results.append(result)
                    print(f"run {run + 1} c={concurrency:<3} {name:<13} {result.rps:>9.0f} req/s  "
                          f"p50 {result.p50_us:>7.0f}us  p99 {result.p99_us:>7.0f}us  "
                          f"cpu {result.cpu_us_per_request or 0:>5.1f}us/req  errors {result.errors}",
                          file=sys.stderr, flush=True)
    print(report(results))
    return 0


REFERENCE = {"engine": "haproxy", "floor": "haproxy", "engine-tls2": "haproxy-tls2", "floor-tls2": "haproxy-tls2"}


def report(results: list[Result], reference: dict[str, str] = REFERENCE, versus: str = "HAProxy") -> str:
    """Medians per (setup, concurrency) as a markdown table, each setup's req/s as a share of its reference's."""
    lines = [f"| setup | conc | req/s | p50 | p99 | CPU µs/req | req/s vs {versus} | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    medians: dict[tuple[str, int], Result] = {}
    for key in dict.fromkeys((r.setup, r.concurrency) for r in results):
        runs = [r for r in results if (r.setup, r.concurrency) == key]
        cpus = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        medians[key] = Result(key[0], key[1], statistics.median(r.rps for r in runs),
                              statistics.median(r.p50_us for r in runs), statistics.median(r.p99_us for r in runs),
                              statistics.median(cpus) if cpus else None, sum(r.errors for r in runs))
    for (setup, concurrency), m in sorted(medians.items(), key=lambda kv: (kv[0][1], list(reference).count(kv[0][0]))):
        ref = medians.get((reference.get(setup, ""), concurrency))
        ratio = f"{m.rps / ref.rps:.0%}" if ref else ""
        cpu = f"{m.cpu_us_per_request:.1f}" if m.cpu_us_per_request is not None else "-"
        lines.append(f"| {setup} | {concurrency} | {m.rps:,.0f} | {m.p50_us:.0f} µs | {m.p99_us:.0f} µs | {cpu} | "
                     f"{ratio} | {m.errors} |")
    notes = []
    direct = medians.get(("direct", 1))
    if direct is not None:
        for (setup, concurrency), m in medians.items():
            if setup != "direct" and concurrency == 1:
                notes.append(f"{setup}: p50 added at c=1: {m.p50_us - direct.p50_us:.0f} µs")
    return "\n".join([*lines, "", *notes])


if __name__ == "__main__":
    sys.exit(main())
