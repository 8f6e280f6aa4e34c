"""What telemetry costs on the proxy path: wrk through a `sidecar run` pair (A outbound -> mTLS -> B inbound ->
nginx, as bench.proxy.mesh's sidecar-pair) with each telemetry setting, runs alternating.

    python -m tests.integration.telemetry.bench_cost [--runs 3] [--duration 5] [--concurrency 50]

Variants: ``records`` (the default config: performance records and Prometheus counters, tracing none, no access
log), ``otlp`` (spans for every request, sample_ratio 1.0, exported over OTLP/HTTP to a sink in this process that
answers 200), ``otlp-10%`` (sample_ratio 0.1), ``access-log`` (JSON access log to the sidecar's log file);
with ``--baseline-root DIR`` also ``baseline``: the same pair run from another checkout (one without telemetry).
Prints median requests/s, p50/p99 and CPU µs per request summed over both sidecars (utime+stime from /proc).
"""

from __future__ import annotations

import argparse
import http.server as http_server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.common import stop
from bench.proxy.__main__ import ROOT, Result, nginx, wait_port
from bench.proxy.mesh import SERVICE, measure, sidecar_certs, sidecar_config, wait_catalog

VARIANTS: dict[str, dict[str, Any]] = {
    "records": {},
    "otlp": {"tracing": {"exporter": "otlp", "sample_ratio": 1.0}},
    "otlp-10%": {"tracing": {"exporter": "otlp", "sample_ratio": 0.1}},
    "access-log": {"access_log": {"enabled": True, "format": "json"}},
}


class Sink:
    """An OTLP/HTTP endpoint that accepts and drops every export."""

    def __init__(self) -> None:
        sink = self
        self.exports = 0

        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@contextmanager
def sidecar(folder: Path, config: dict[str, Any], root: Path) -> Iterator[subprocess.Popen[bytes]]:
    name = config["node"]["name"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    with (folder / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "-c", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "PYTHONPATH": str(root)})
        try:
            wait_port(int(config["admin"]["listen"].rsplit(":", 1)[1]), proc, f"sidecar {name}")
            yield proc
        finally:
            stop(proc, 15)


def pair(stack: ExitStack, folder: Path, backend: int, certs: dict[str, dict[str, str]], name: str,
         telemetry: dict[str, Any], root: Path = ROOT) -> tuple[int, list[int]]:
    b = sidecar_config(folder, f"{name}-b", certs[SERVICE], [{"name": SERVICE, "port": backend}], [])
    a = sidecar_config(folder, f"{name}-a", certs["checkout"], [], [b["gossip"]["listen"]])
    for config in (a, b):
        config["telemetry"] = telemetry
    b_proc = stack.enter_context(sidecar(folder, b, root))
    a_proc = stack.enter_context(sidecar(folder, a, root))
    wait_catalog(a, a_proc, folder)
    return int(a["outbound"]["listen"].rsplit(":", 1)[1]), [a_proc.pid, b_proc.pid]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--baseline-root", type=Path, help="a checkout without telemetry, run as 'baseline'")
    args = parser.parse_args()
    sink = Sink()
    names = (["baseline"] if args.baseline_root else []) + (args.only or list(VARIANTS))
    results: dict[str, list[Result]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        folder.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        backend = nginx(stack, folder)
        certs = sidecar_certs(folder / "certs", SERVICE, "checkout")
        ports = {}
        for name in names:
            if name == "baseline":
                ports[name] = pair(stack, folder, backend, certs, name, {}, args.baseline_root)
                continue
            telemetry = dict(VARIANTS[name])
            if "tracing" in telemetry:
                telemetry["tracing"] = {**telemetry["tracing"], "endpoint": sink.url}
            ports[name] = pair(stack, folder, backend, certs, name.replace("%", ""), telemetry)
        for name in names:   # warm up
            measure(name, *ports[name], args.concurrency, 1, SERVICE)
        for _ in range(args.runs):
            for name in names:
                results[name].append(measure(name, *ports[name], args.concurrency, args.duration, SERVICE))
    print(f"| telemetry | conc | req/s | p50 µs | p99 µs | CPU µs/req (A+B) | errors |  (OTLP exports: {sink.exports})")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rs = results[name]
        cpu = [r.cpu_us_per_request for r in rs if r.cpu_us_per_request is not None]
        print(f"| {name} | {args.concurrency} | {statistics.median(r.rps for r in rs):.0f} | "
              f"{statistics.median(r.p50_us for r in rs):.0f} | {statistics.median(r.p99_us for r in rs):.0f} | "
              f"{statistics.median(cpu):.1f} | {sum(r.errors for r in rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
