"""The HTTP/2 core's echo server on loopback, for the tests with real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.http2.echo_server import EchoServer
from tests.loops import LoopThread


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    loop = LoopThread()
    server = loop.run(EchoServer().start())
    yield server
    loop.run(server.stop())
    loop.close()
