"""What an idle ``sidecar run`` costs in memory, read from outside as the kernel reports it, and which modules it
loads (every import the real process makes, printed by Python's ``-X importtime``): a sidecar with tracing off
never imports the OpenTelemetry SDK or ``rich``; one with ``exporter: otlp`` imports the SDK and that exporter
only, and its spans still reach the collector."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FakeApp, SidecarProcess, http, make_certs, wait_for
from tests.integration.telemetry.conftest import OtlpReceiver

# One service, mTLS, tracing off, everything else default: about 68 MiB when every module was imported up front,
# about 66.5 MiB since (the SDK left out, start-up garbage returned to the kernel). The bound is a guard against
# regressions with room for allocator noise; what it cannot see (a module imported and barely used) the module
# assertions do.
IDLE_RSS_BOUND = 70 * 1024 * 1024
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$")


def rss(process: SidecarProcess) -> int:
    """Resident memory of the sidecar process, as the kernel reports it (not as the sidecar does)."""
    assert process.proc is not None
    with open(f"/proc/{process.proc.pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def imported(process: SidecarProcess) -> set[str]:
    """Every module the process imported so far (PYTHONPROFILEIMPORTTIME prints one line per import)."""
    return {match.group(1) for line in list(process.lines) if (match := IMPORT_LINE.match(line))}


def start(tmp: Path, app: FakeApp, overrides: dict[str, Any] | None = None) -> SidecarProcess:
    pki = make_certs(tmp / "certs", ["web"])
    config: dict[str, Any] = {"tls": pki["web"], "services": [{"name": "web", "port": app.port}], **(overrides or {})}
    return SidecarProcess(tmp, config, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()


@pytest.fixture
def app() -> Iterator[FakeApp]:
    with FakeApp("web") as fake:
        yield fake


def outbound(process: SidecarProcess, path: str) -> int:
    """One request from the app's side: outbound listener -> our inbound over mTLS -> the app."""
    return http("GET", f"http://{process.listeners['outbound']}{path}", headers={"Host": "web"}).status


def test_idle_sidecar_without_tracing_stays_small_and_never_imports_the_sdk(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app)
    try:
        assert imported(process) >= {"sidecar.app", "aiohttp", "ssl"}      # the lines are there to be read
        wait_for(lambda: outbound(process, "/warm") == 200, 10, what="a request through the mesh")
        # idle: the largest resident size seen over three seconds of health checks, gossip and admin reads
        samples = [rss(process)]
        for _ in range(6):
            assert http("GET", process.admin + "/ready").status == 200
            time.sleep(0.5)     # a sampling period, not a wait for a condition
            samples.append(rss(process))
        modules = imported(process)
        assert not {m for m in modules if m == "opentelemetry.sdk" or m.startswith("opentelemetry.sdk.")}
        assert not {m for m in modules if m.startswith("opentelemetry.exporter")}
        assert "sidecar.telemetry.tracing" not in modules
        assert not {m for m in modules if m == "rich" or m.startswith("rich.")}
        assert not {m for m in modules if m == "sidecar.demo" or m.startswith("sidecar.demo.")}
        assert "sidecar.cli.views" not in modules
        assert max(samples) < IDLE_RSS_BOUND, f"idle RSS {max(samples) / 2**20:.1f} MiB (samples {samples})"
    finally:
        process.terminate()


def test_otlp_tracing_reaches_the_collector_without_loading_the_sdk(tmp_path: Path, app: FakeApp) -> None:
    collector = OtlpReceiver()
    process = start(tmp_path, app, {"telemetry": {"tracing": {"exporter": "otlp", "endpoint": collector.url}}})
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        reply = http("GET", f"http://{process.listeners['outbound']}/traced", headers={
            "Host": "web", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert reply.status == 200, reply
        spans = wait_for(lambda: len(collector.trace(trace_id)) >= 2 and collector.trace(trace_id), 15,
                         what="the client and server spans at the OTLP collector")
        assert {span.kind for span in spans} == {2, 3}          # SERVER and CLIENT
        modules = imported(process)
        assert {"sidecar.telemetry.tracing", "sidecar.telemetry.otlp"} <= modules
        assert not {m for m in modules if m == "opentelemetry.sdk" or m.startswith("opentelemetry.sdk.")}
        assert not {m for m in modules if m.startswith("opentelemetry.exporter")}
    finally:
        process.terminate()
        collector.close()


def test_console_tracing_imports_only_the_console_exporter(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app, {"telemetry": {"tracing": {"exporter": "console"}}})
    try:
        trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
        reply = http("GET", f"http://{process.listeners['outbound']}/traced", headers={
            "Host": "web", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert reply.status == 200, reply
        process.wait_log(f"0x{trace_id}", 15)                   # ConsoleSpanExporter's JSON on stdout
        modules = imported(process)
        assert "opentelemetry.sdk.trace" in modules
        assert not {m for m in modules if m.startswith("opentelemetry.exporter")}
    finally:
        process.terminate()
