"""Large bodies through the engine in its own process: memory stays flat both ways."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.proxy.conftest import Backend, LoopThread, start_backend

ROOT = Path(__file__).resolve().parents[3]
SIZE = 200 * 1024 * 1024
# flat: the proxy holds at most a few write buffers (256 KiB high water each way) whatever the body size
MAX_GROWTH_KIB = 40 * 1024


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1))


class RssWatch:
    """Samples a process's resident memory every 20 ms while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def proxied(loop_thread: LoopThread) -> Iterator[tuple[int, int, Backend]]:
    backend = loop_thread.run(start_backend())
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.proxy.proxy_process", "--upstream", f"127.0.0.1:{backend.port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.match(r"PORT (\d+)", line)
        assert match, line
        yield int(match.group(1)), process.pid, backend
    finally:
        process.kill()
        process.wait(5)
        if backend.runner is not None:
            loop_thread.run(backend.runner.cleanup())


def _read_response(s: socket.socket, deadline: float) -> tuple[bytes, int, bytes]:
    """Read a Content-Length response: the head, the body size, and the body's first 64 KiB."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        assert time.monotonic() < deadline, "no response head in time"
        chunk = s.recv(65536)
        assert chunk, "closed before the response head"
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    received = len(rest)
    start = rest
    while received < length:
        assert time.monotonic() < deadline, f"body incomplete: {received} of {length}"
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {received} of {length} bytes"
        received += len(chunk)
        if len(start) < 65536:
            start += chunk
    return head, received, start[:65536]


@pytest.mark.slow
def test_200mb_download_keeps_proxy_memory_flat(proxied: tuple[int, int, Backend]) -> None:
    port, pid, _ = proxied
    baseline = rss_kib(pid)
    deadline = time.monotonic() + 60
    with RssWatch(pid) as watch, socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /big?size={SIZE} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
        head, received, start = _read_response(s, deadline)
    assert head.startswith(b"HTTP/1.1 200")
    assert received == SIZE
    assert start == b"z" * 65536
    assert watch.peak - baseline < MAX_GROWTH_KIB, f"RSS grew by {watch.peak - baseline} KiB"


@pytest.mark.slow
def test_200mb_upload_keeps_proxy_memory_flat(proxied: tuple[int, int, Backend]) -> None:
    port, pid, _ = proxied
    baseline = rss_kib(pid)
    deadline = time.monotonic() + 60
    block = b"u" * (1 << 20)
    with RssWatch(pid) as watch, socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /count HTTP/1.1\r\nHost: svc\r\nContent-Length: {SIZE}\r\n\r\n".encode())
        for _ in range(SIZE // len(block)):
            s.sendall(block)
        head, _, body = _read_response(s, deadline)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == str(SIZE).encode()  # the backend counted every byte
    assert watch.peak - baseline < MAX_GROWTH_KIB, f"RSS grew by {watch.peak - baseline} KiB"
