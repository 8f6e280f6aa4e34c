"""The aiohttp listeners under test run in a uvloop thread (as in the process); clients block in the test thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.proxy.conftest import LoopThread


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()
