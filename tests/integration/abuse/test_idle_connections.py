"""Thousands of idle connections on the outbound listener of a real process (bounded: 2,000), while normal
requests keep being served within normal latency."""

from __future__ import annotations

import socket
import time

from tests.harness import raise_fd_limit
from tests.integration.abuse.conftest import NORMAL_LATENCY, Target

IDLE = 2000


def open_idle(address: tuple[str, int], count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(address)
        sockets.append(sock)
    return sockets


def test_two_thousand_idle_connections_do_not_starve_normal_requests(target: Target) -> None:
    assert raise_fd_limit(IDLE + 1024) >= IDLE + 512
    baseline = [target.check_all()["outbound"] for _ in range(3)]
    idle = open_idle(target.address("outbound"), IDLE)
    try:
        took = []
        for _ in range(20):
            start = time.monotonic()
            target.check_outbound()
            took.append(time.monotonic() - start)
        others = target.check_all()
    finally:
        for sock in idle:
            sock.close()
    assert max(took) < NORMAL_LATENCY, (took, baseline)
    assert max(others.values()) < NORMAL_LATENCY, others
