"""Slowloris (slow headers) and slow bodies from ``slowhttptest`` at the HTTP listeners of a real process,
bounded to a few seconds, while normal requests keep being served fast."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.integration.abuse.conftest import NORMAL_LATENCY, Target

SLOWHTTPTEST = shutil.which("slowhttptest")
pytestmark = pytest.mark.skipif(SLOWHTTPTEST is None, reason="slowhttptest is not installed (Debian: slowhttptest)")

SECONDS = 4
CONNECTIONS = 300


def attack(mode: str, url: str) -> subprocess.Popen[str]:
    assert SLOWHTTPTEST is not None
    # -H slow headers / -B slow body; -c connections opened at -r per second, a byte every -i seconds,
    # for -l seconds; -p: its own probe's timeout
    args = [SLOWHTTPTEST, mode, "-c", str(CONNECTIONS), "-r", "200", "-i", "1", "-l", str(SECONDS), "-p", "2",
            "-s", "100000", "-t", "POST" if mode == "-B" else "GET", "-u", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# 2 x 300 slow clients are more than the admin port's and the app API's cap (WebLimits.max_connections = 256): at the
# cap, the connection that has waited longest for its head or body is closed to make room (found by this
# test: before, normal clients got 429 until the header timeout closed the slow ones).


@pytest.mark.slow
@pytest.mark.parametrize("listener", ["outbound", "api", "admin"])
def test_slow_headers_and_slow_bodies_while_normal_requests_are_served(target: Target, listener: str) -> None:
    host, port = target.address(listener)
    path = {"outbound": "/slow", "api": "/v1/publish/slow", "admin": "/drain"}[listener]
    attackers = [attack(mode, f"http://{host}:{port}{path}") for mode in ("-H", "-B")]
    check = {"outbound": target.check_outbound, "api": target.check_api, "admin": target.check_admin}[listener]
    took = []
    try:
        deadline = time.monotonic() + SECONDS
        for _ in range(1000):
            if time.monotonic() > deadline:
                break
            start = time.monotonic()
            check()
            took.append(time.monotonic() - start)
            time.sleep(0.05)
    finally:
        outputs = []
        for process in attackers:
            try:
                outputs.append(process.communicate(timeout=SECONDS + 15)[0])
            except subprocess.TimeoutExpired:
                process.kill()
                outputs.append(process.communicate()[0])
    assert all("connected:" in out or "connected" in out for out in outputs), outputs[0][-2000:]
    assert len(took) >= 10
    assert max(took) < NORMAL_LATENCY, took
    target.check_all()
