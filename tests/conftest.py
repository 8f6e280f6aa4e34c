from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import native
from tests.harness import SidecarProcess


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a compiled module older than its source: the edit would not be what runs."""
    stale = native.stale_modules()
    if stale:
        pytest.exit(f"compiled modules are older than their source ({', '.join(stale)}): run `make native`", 2)


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    """Processes started through this list are killed at the end of the test, whatever happens."""
    started: list[SidecarProcess] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def start_sidecar(tmp_path: Path, sidecars: list[SidecarProcess]):  # type: ignore[no-untyped-def]
    def start(config: dict | None = None, name: str = "node-a", wait_ready: bool = True,  # type: ignore[type-arg]
              extra_args: list[str] | None = None) -> SidecarProcess:
        process = SidecarProcess(tmp_path, config or {}, name=name, extra_args=extra_args)
        sidecars.append(process)
        return process.start(wait_ready=wait_ready)
    return start
