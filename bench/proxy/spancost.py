"""CPU a request of OTLP tracing at ratio 1.0 in one process, where other jobs on the machine matter little.

    python -m bench.proxy.spancost [--requests 20000] [--rounds 7]

Each request is the pair's two hops (the caller's outbound, the callee's inbound with its caller's identity) handed
to the telemetry hub as the engine hands them: once with records and counters only, once with the OTLP exporter at
ratio 1.0, whose batches are encoded as for a collector and answered 200 without a network. CPU is the process's
(every thread: the event loop's queueing and the exporter's encoding), medians of alternating rounds; the
difference is what a span costs a request over the pair. ``bench.counters`` gives the same in instructions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import Config, NodeConfig, ServiceConfig, TelemetryConfig, TracingConfig
from sidecar.proxy.target import RequestStats
from sidecar.proxy.tracecontext import IdSource
from sidecar.telemetry.export import OtlpHttpExporter
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.tracing import Tracer
from tests.unit.telemetry.stats import caller_conn, local_app, stats

CONFIG = Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)],
                telemetry=TelemetryConfig(tracing=TracingConfig("otlp", "http://127.0.0.1:9", 1.0)))


def hops(requests: int) -> list[tuple[str, RequestStats]]:
    ids = IdSource(random.Random(5))
    conn = caller_conn()
    out = []
    for _ in range(requests):
        request_id, trace_id, span_id, _ = ids.fresh()
        out.append(("outbound", stats(trace_id=trace_id, span_id=span_id, parent=None, request_id=request_id)))
        out.append(("inbound", stats(trace_id=trace_id, span_id=ids.span_id(), parent=span_id, request_id=request_id,
                                     tag=local_app(), conn=conn)))
    return out


def cpu_per_request(requests: list[tuple[str, RequestStats]], otlp: bool) -> float:
    tracer = None
    if otlp:
        exporter = OtlpHttpExporter("http://127.0.0.1:9/v1/traces", {"service.name": "checkout"})
        exporter._post = lambda body, timeout: 200  # type: ignore[method-assign]
        tracer = Tracer(CONFIG.telemetry.tracing, exporter, max_queue_size=len(requests), max_batch=512)
    telemetry = Telemetry(CONFIG, SYSTEM_CLOCK, tracer=tracer or False, access_log=False)
    began = time.process_time()
    for listener, hop in requests:
        telemetry.on_request(listener, hop)
    exported = tracer is None or (tracer.flush(60_000) and not tracer.batcher.failed
                                  and tracer.spans == len(requests))
    if not exported:
        raise RuntimeError(f"spans were not all exported: {tracer.status() if tracer else None}")
    spent = time.process_time() - began
    if tracer is not None:
        tracer.shutdown()
    return spent / (len(requests) / 2) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy.spancost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    requests = hops(args.requests)
    without, with_otlp = [], []
    for _ in range(args.rounds):
        without.append(cpu_per_request(requests, False))
        with_otlp.append(cpu_per_request(requests, True))
    base, traced = statistics.median(without), statistics.median(with_otlp)
    print(f"records and counters {base:.1f} µs a request; with OTLP at 1.0 {traced:.1f} µs; "
          f"a span on each hop: +{traced - base:.1f} µs a request (goal: at most +20)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
