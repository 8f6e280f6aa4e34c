"""Hundreds of idle plain TCP connections on the inbound mTLS listener of a real process (bounded: 600), from one
source and from several: a real peer's mTLS request is still answered promptly, the idle connections are closed
within the ClientHello timeout, and the evictions are counted and logged (a few lines, not one per connection)."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

from tests.harness import http, raise_fd_limit, wait_for
from tests.integration.abuse.conftest import ADMIN_TOKEN, NORMAL_LATENCY, Target

IDLE = 600
HELLO_TIMEOUT = 3.0   # sidecar.tls.handshake.DEFAULT_HELLO_TIMEOUT


def open_idle(address: tuple[str, int], sources: list[str], count: int) -> list[socket.socket]:
    """``count`` plain TCP connections that send nothing, spread over the loopback ``sources``."""
    sockets = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.bind((sources[i % len(sources)], 0))
        sock.connect(address)
        sockets.append(sock)
    return sockets


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:   # reset
        return True


def open_fds(target: Target) -> int:
    assert target.process.proc is not None
    return len(os.listdir(f"/proc/{target.process.proc.pid}/fd"))


def counter(target: Target, series: str) -> int:
    """A counter's value on /metrics (open to Prometheus without the admin token); 0 before its first sample."""
    text = http("GET", target.process.admin + "/metrics").body.decode()
    match = re.search(rf"^{re.escape(series)} (\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


SHED = "sidecar_inbound_connections_shed_total"
SILENT = 'sidecar_tls_handshake_failures_total{reason="no-client-hello"}'


@pytest.mark.parametrize("sources", [["127.0.0.2"], [f"127.0.0.{i}" for i in range(10, 18)]],
                         ids=["one-source", "eight-sources"])
def test_idle_connections_do_not_starve_a_real_peer(target: Target, sources: list[str]) -> None:
    assert raise_fd_limit(IDLE + 1024) >= IDLE + 512
    target.check_inbound()
    shed_before, silent_before = counter(target, SHED), counter(target, SILENT)
    fds_before = open_fds(target)
    start = time.monotonic()
    idle = open_idle(target.address("inbound"), sources, IDLE)
    try:
        opened = time.monotonic() - start
        took = []
        for _ in range(5):   # a real peer (the test's client certificate), over new connections each time
            begin = time.monotonic()
            target.check_inbound()
            took.append(time.monotonic() - begin)
        assert max(took) < NORMAL_LATENCY, (took, opened)
        # room was made by closing pending handshakes of the flood, and counted
        shed = counter(target, SHED) - shed_before
        assert shed >= IDLE - 512, shed
        # the rest are closed once the ClientHello timeout passes (bounded wait)
        deadline = time.monotonic() + HELLO_TIMEOUT + 7
        while time.monotonic() < deadline and not all(closed_by_peer(s) for s in idle):
            time.sleep(0.1)
        still_open = sum(1 for s in idle if not closed_by_peer(s))
        assert still_open == 0, still_open
        assert counter(target, SILENT) - silent_before + shed >= IDLE   # each one evicted or timed out, counted
    finally:
        for sock in idle:
            sock.close()
    target.check_all()
    # every evicted or timed-out handshake let go of its socket (no descriptor kept)
    wait_for(lambda: open_fds(target) <= fds_before + 8, 10, what=f"descriptors back to about {fds_before}")
    # logged through the refusal log: one line per source and kind for a while, not one per connection
    lines = [line for line in target.process.lines if "refused inbound mTLS" in line
             and any(f"{s}:" in line for s in sources)]
    assert any("no TLS ClientHello" in line or "to make room" in line for line in lines), lines[-5:]
    assert len(lines) <= 4 * len(sources), len(lines)
    assert ADMIN_TOKEN not in "\n".join(target.process.lines)
