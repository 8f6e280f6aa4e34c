"""The request-smuggling corpus (the fuzz corpus's ``smuggle-*`` files) and oversized heads at the three
HTTP listeners of a real process: 400 INVALID_ARGUMENT or 431 HEADERS_TOO_LARGE in SPEC's JSON shape, then
the connection closed, nothing of a smuggled second request answered; the process serves on."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest

from tests.fuzz.targets import corpus_files
from tests.integration.abuse.conftest import NORMAL_LATENCY, Target, read_until_close

SMUGGLING = [p for p in corpus_files("http_request") if p.name.startswith("smuggle-")]
HTTP_LISTENERS = ["outbound", "api", "admin"]
OVERSIZED = {
    "long-header": b"GET / HTTP/1.1\r\nHost: web\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    "many-headers": b"GET / HTTP/1.1\r\nHost: web\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(300)) + b"\r\n",
    "long-head": b"GET / HTTP/1.1\r\nHost: web\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000)
                                                              for i in range(80)) + b"\r\n",
}


def exchange(target: Target, listener: str, data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send ``data``; returns the status, headers and body of the first response and what followed it,
    having checked that the listener closed the connection."""
    with socket.create_connection(target.address(listener), timeout=NORMAL_LATENCY) as sock:
        # refused before all of it was read: the answer is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        reply = read_until_close(sock, 5.0)
    head, _, rest = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return status, headers, rest[:length], rest[length:]


def assert_refused(target: Target, listener: str, data: bytes, status: int, code: str) -> None:
    got, headers, body, after = exchange(target, listener, data)
    assert got == status, (got, body)
    assert headers.get("x-sidecar-error") == code, headers
    error = json.loads(body)["error"]
    assert error["code"] == code and isinstance(error["grpcCode"], int) and error["message"], error
    assert after == b"", f"more than one response: {after[:200]!r}"  # a smuggled request was not answered
    assert "close" in headers.get("connection", "close").lower()


@pytest.mark.parametrize("listener", HTTP_LISTENERS)
@pytest.mark.parametrize("path", SMUGGLING, ids=[p.name for p in SMUGGLING])
def test_smuggling_shapes_are_refused_with_400_and_closed(target: Target, listener: str, path: Path) -> None:
    assert_refused(target, listener, path.read_bytes(), 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("listener", HTTP_LISTENERS)
@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_oversized_heads_are_refused_with_431_and_closed(target: Target, listener: str, name: str) -> None:
    assert_refused(target, listener, OVERSIZED[name], 431, "HEADERS_TOO_LARGE")


def test_the_corpus_is_the_one_the_issue_names() -> None:
    names = {p.name for p in SMUGGLING}
    for shape in ("cl-te", "duplicate-cl", "te-xchunked", "obs-fold", "bare-lf", "chunk-size-hex-overflow"):
        assert f"smuggle-{shape}.http" in names


def test_every_listener_still_serves_after_the_corpus(target: Target) -> None:
    target.check_all()
