"""h2c clients on a real sidecar's outbound listener, to an HTTP/1.1 service behind another real sidecar
(HTTP/1.1 over mTLS between them): curl --http2-prior-knowledge, h2load, grpcio and a raw HTTP/2 peer.

    client --h2c--> A (node-a, outbound) --HTTP/1.1 + mTLS--> B (node-b, inbound) --HTTP/1.1--> web app
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame

from tests.grpcapps.service import channel
from tests.h2client import RawH2, ended, get
from tests.integration.http2.h2load import h2load_all_2xx
from tests.integration.http2.pair import Pair, run_pair
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import start_app

pytestmark = pytest.mark.skipif(not shutil.which("h2load"), reason="nghttp2-client is missing: make tools")

MB = 1 << 20
DENY_ADMIN = {"default": "allow", "rules": [{"to": "web", "paths": ["/admin/*", "/test.Admin/*"], "action": "deny"}]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    app = start_app()
    try:
        with run_pair(tmp_path_factory.mktemp("h2-outbound"), app.port, DENY_ADMIN) as pair:
            yield pair
    finally:
        app.stop()


def h2(pair: Pair, *args: str) -> Any:
    return curl("--http2-prior-knowledge", "-m", "20", "-H", "Host: web", *args)


@needs_curl
def test_curl_h2_reaches_an_http1_service_with_status_headers_and_body(pair: Pair) -> None:
    reply = h2(pair, "-H", "x-custom: 1", f"http://{pair.outbound}/headers/a?b=1")
    assert reply.status == 200, reply
    body = reply.json()
    assert (body["method"], body["path"]) == ("GET", "/headers/a?b=1")
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["x-custom"] == "1" and seen["host"] == "web" and seen["traceparent"].startswith("00-")
    assert seen["x-sidecar-caller"] == "spiffe://mesh.local/service/checkout"   # it crossed B's mTLS inbound
    assert reply.headers["content-type"].startswith("application/json")


@needs_curl
def test_an_upstreams_port_takes_h2c_too(pair: Pair) -> None:
    reply = curl("--http2-prior-knowledge", "-m", "20", f"http://127.0.0.1:{pair.upstream_port}/headers/via-port")
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/headers/via-port"


@needs_curl
def test_large_bodies_both_ways(pair: Pair, tmp_path: Path) -> None:
    (tmp_path / "up").write_bytes(b"u" * (8 * MB))
    up = h2(pair, "--data-binary", f"@{tmp_path / 'up'}", f"http://{pair.outbound}/count")
    assert (up.status, up.body) == (200, b"%d" % (8 * MB))
    down = curl("--http2-prior-knowledge", "-m", "20", "-H", "Host: web", f"http://{pair.outbound}/big?size={8 * MB}",
                keep_body=False)
    assert (down.status, down.size) == (200, 8 * MB)


def test_h2load_thousands_of_requests_with_no_error(pair: Pair, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(b"x" * 100)
    h2load_all_2xx(f"http://{pair.outbound}/count", tmp_path / "body", "web")


@needs_curl
def test_http1_clients_on_the_same_listener_are_unaffected(pair: Pair) -> None:
    for i, version in enumerate(["--http1.1", "--http2-prior-knowledge", "--http1.1", "--http2-prior-knowledge"]):
        out = subprocess.run(["curl", "-sS", "-m", "10", "-H", "Host: web", "-o", "/dev/null", "-w", "%{http_version}",
                              version, f"http://{pair.outbound}/headers/{i}"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == ("1.1" if version == "--http1.1" else "2"), out.stdout


@needs_curl
def test_unknown_service_is_404_json_over_h2(pair: Pair) -> None:
    reply = curl("--http2-prior-knowledge", "-m", "10", "-H", "Host: no-such-service", f"http://{pair.outbound}/x")
    assert reply.status == 404, reply
    assert reply.headers["x-sidecar-error"] == "NOT_FOUND"
    assert reply.json()["error"]["code"] == "NOT_FOUND"


def call_error(pair: Pair, authority: str, path: str) -> Any:
    with channel(pair.outbound, authority) as ch, pytest.raises(grpc.RpcError) as failure:
        ch.unary_unary(path)(b"x", timeout=10)
    return failure.value


def test_unknown_service_is_grpc_not_found_with_a_message(pair: Pair) -> None:
    e = call_error(pair, "no-such-service", "/test.Echo/Unary")
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert "no-such-service" in e.details(), e.details()
    assert dict(e.trailing_metadata())["x-sidecar-error"] == "NOT_FOUND"


def test_a_denied_grpc_method_is_permission_denied_with_a_message(pair: Pair) -> None:
    e = call_error(pair, "web", "/test.Admin/Reset")
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
    assert e.details() and "Received http2 header" not in e.details(), e.details()   # B's message, not curl's
    assert dict(e.trailing_metadata())["x-sidecar-error"] == "PERMISSION_DENIED"


@needs_curl
def test_a_denied_path_is_403_for_plain_h2(pair: Pair) -> None:
    reply = h2(pair, f"http://{pair.outbound}/admin/users")
    assert reply.status == 403, reply
    assert reply.headers["x-sidecar-error"] == "PERMISSION_DENIED"


@needs_curl
def test_rapid_reset_at_the_outbound_is_cut_off_while_another_client_is_served(pair: Pair) -> None:
    attacker = RawH2(pair.port)
    victim = RawH2(pair.port)
    try:
        hello = attacker.peer.block(get(b"/headers/flood", b"web"))
        attacker.send(b"".join(attacker.peer.headers(s, block=hello, end_stream=True) + attacker.peer.rst(s)
                               for s in range(1, 2 * 1500, 2)))
        got = attacker.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got), timeout=30)
        assert [f.error_code for f in got if isinstance(f, GoAwayFrame)] == [0xB]   # ENHANCE_YOUR_CALM
        # an h2 connection opened before the attack is still served, and so is a new client
        victim.send(victim.peer.headers(1, get(b"/headers/victim", b"web"), end_stream=True))
        frames = victim.read_until(ended(1))
        assert b"/headers/victim" in b"".join(f.data for f in frames if isinstance(f, DataFrame))
    finally:
        attacker.close()
        victim.close()
    assert h2(pair, f"http://{pair.outbound}/headers/after").status == 200


def test_a_bad_preface_at_the_outbound_is_refused_while_another_client_is_served(pair: Pair) -> None:
    with socket.create_connection(("127.0.0.1", pair.port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    bad_frame = RawH2(pair.port)
    try:
        bad_frame.send(b"\x00\x00\x01" b"\x00" b"\x00" b"\x00\x00\x00\x00" b"x")   # DATA on stream 0
        got = bad_frame.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got))
    finally:
        bad_frame.close()
    assert {f.error_code for f in got if isinstance(f, GoAwayFrame)} == {0x1}   # PROTOCOL_ERROR
    assert h2(pair, f"http://{pair.outbound}/headers/after").status == 200
