"""`sidecar demo --duration N` runs without a terminal, shows health turning, and cleans up after itself."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import run_cli


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    result = run_cli("demo", "--duration", "10", timeout=60, env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "service-registered: payment-service" in result.stdout
    assert "payment-service: unhealthy → healthy" in result.stdout
    assert "payment-service: healthy → degraded" in result.stdout
    assert os.listdir(tmp_path) == []  # the demo's temporary folder is gone
