"""Every sidecar a test here started is gone when the test ends, whatever its outcome."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.overload.common import STARTED


@pytest.fixture(autouse=True)
def stop_started_sidecars() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().kill()
