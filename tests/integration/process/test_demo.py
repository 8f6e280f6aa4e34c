"""`sidecar demo --duration N` runs without a terminal, shows health turning, and cleans up after itself."""

from __future__ import annotations

import glob
import tempfile

from tests.harness import run_cli


def test_demo_runs_and_cleans_up() -> None:
    before = set(glob.glob(tempfile.gettempdir() + "/sidecar-demo-*"))
    result = run_cli("demo", "--duration", "10", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "service-registered: payment-service" in result.stdout
    assert "payment-service: unhealthy → healthy" in result.stdout
    assert "payment-service: healthy → degraded" in result.stdout
    assert set(glob.glob(tempfile.gettempdir() + "/sidecar-demo-*")) == before
