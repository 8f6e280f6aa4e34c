"""The gRPC and HTTP/2 test apps called directly (grpcio channels, curl --http2-prior-knowledge): each knob
does what the sidecar tests will rely on."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.grpcapps.launch import Spawned, spawn
from tests.grpcapps.service import CLOCK_SLACK, INSTANCE_KEY, Knobs, Running, channel, method, serve
from tests.h2client import RawH2, body_of, get, grpc_frame, slow_call
from tests.harness import wait_for
from tests.integration.mesh.clients import curl, needs_curl

MB = 1 << 20


@pytest.fixture
def echo() -> Iterator[Running]:
    running = serve(Knobs("in-process", unavailable_every=3))
    yield running
    running.stop()


@pytest.fixture
def echo_channel(echo: Running) -> Iterator[grpc.Channel]:
    with channel(f"127.0.0.1:{echo.port}") as ch:
        yield ch


def instance_of(call: grpc.Call) -> str:
    return dict(call.trailing_metadata() or ())[INSTANCE_KEY]


def observed(ch: grpc.Channel) -> dict:  # type: ignore[type-arg]
    return json.loads(ch.unary_unary(method("Observed"))(b"", timeout=5))  # type: ignore[no-any-return]


def test_unary_echoes_and_every_third_call_is_unavailable(echo_channel: grpc.Channel) -> None:
    unary = echo_channel.unary_unary(method("Unary"))
    codes: Counter[grpc.StatusCode] = Counter()
    for i in range(30):
        try:
            reply, call = unary.with_call(f"hello {i}".encode(), timeout=5)
        except grpc.RpcError as e:
            codes[e.code()] += 1
            assert "refuses call" in (e.details() or ""), e
            assert instance_of(e) == "in-process"  # type: ignore[arg-type]
            assert (i + 1) % 3 == 0
            continue
        codes[call.code()] += 1
        assert reply == f"hello {i}".encode()
        assert dict(call.initial_metadata())[INSTANCE_KEY] == "in-process"
        assert instance_of(call) == "in-process"
    assert codes == {grpc.StatusCode.OK: 20, grpc.StatusCode.UNAVAILABLE: 10}
    unary(b"traced", metadata=(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    seen = observed(echo_channel)["metadata"]["Unary"]
    assert seen["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_every_call_shape_carries_16_mib_messages(echo_channel: grpc.Channel) -> None:
    big = b"m" * (16 * MB + 1)
    stream = echo_channel.unary_stream(method("ServerStream"))
    sizes = [len(m) for m in stream(json.dumps({"count": 2, "size": len(big)}).encode(), timeout=30)]
    assert sizes == [len(big), len(big)]
    client = echo_channel.stream_unary(method("ClientStream"))
    assert json.loads(client(iter([big, b"x", big]), timeout=30)) == {"count": 3, "bytes": 2 * len(big) + 1}
    bidi = echo_channel.stream_stream(method("Bidi"))
    assert [len(m) for m in bidi(iter([big, b"yy"]), timeout=30)] == [len(big), 2]
    seen = observed(echo_channel)
    assert seen["received_bytes"]["ClientStream"] == 2 * len(big) + 1
    assert seen["sent_bytes"]["Bidi"] == len(big) + 2
    assert seen["cancelled"] == {}


def test_the_slow_handler_sees_the_deadline_and_the_end_of_a_call_past_it(echo_channel: grpc.Channel) -> None:
    slow = echo_channel.unary_unary(method("Slow"))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        slow(json.dumps({"seconds": 2}).encode(), timeout=0.2)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1.0
    record = wait_for(lambda: observed(echo_channel)["slow"], 5, what="the slow call recorded")[0]
    assert 0.05 < record["time_remaining"] <= 0.2 + CLOCK_SLACK
    assert record["ended_early"] is True
    # without a deadline the handler runs to its end and says so
    assert slow(json.dumps({"seconds": 0.05}).encode()) == b"slept"
    last = wait_for(lambda: observed(echo_channel)["slow"][1:], 5, what="the second slow call")[0]
    assert last == {"time_remaining": None, "ended_early": False}


def test_a_client_cancellation_reaches_the_server(echo_channel: grpc.Channel) -> None:
    stream = echo_channel.unary_stream(method("ServerStream"))(json.dumps({"count": 10**6, "size": 1024}).encode())
    next(stream)  # the stream is running
    stream.cancel()
    wait_for(lambda: observed(echo_channel)["cancelled"].get("ServerStream") == 1, 5, what="server saw the cancel")
    slow = echo_channel.unary_unary(method("Slow")).future(json.dumps({"seconds": 5}).encode())
    wait_for(lambda: observed(echo_channel)["calls"].get("Slow") == 1, 5, what="the slow call started")
    slow.cancel()
    record = wait_for(lambda: observed(echo_channel)["slow"], 5, what="the slow call ended")[0]
    assert record["ended_early"] is True


def test_the_standard_health_service_answers_and_follows_set_health(echo_channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(echo_channel)
    for name in ("", "test.Echo"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    echo_channel.unary_unary(method("SetHealth"))(b"NOT_SERVING", timeout=5)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="test.Echo"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    app = spawn("tests.grpcapps.server", "--port", "0", "--instance", "sub-1")
    yield app
    app.stop()


def test_the_service_runs_as_a_subprocess_and_stops_on_sigterm(spawned: Spawned) -> None:
    with channel(spawned.target) as ch:
        reply, call = ch.unary_unary(method("Unary")).with_call(b"ping", timeout=5)
        assert reply == b"ping" and instance_of(call) == "sub-1"
    spawned.process.terminate()
    assert spawned.process.wait(10) == 0


@pytest.fixture
def h2app() -> Iterator[Spawned]:
    app = spawn("tests.grpcapps.h2app", "--port", "0", "--instance", "h2-a")
    yield app
    app.stop()


@needs_curl
def test_the_h2c_app_answers_http2_prior_knowledge_and_refuses_http1(h2app: Spawned) -> None:
    url = f"http://{h2app.target}/echo?q=1"
    reply = curl("--http2-prior-knowledge", "-X", "POST", "--data-binary", "hello", "-H", "Host: app.example", url)
    assert reply.status == 200, reply
    body = reply.json()
    assert body | {"headers": None} == {"protocol": "HTTP/2", "instance": "h2-a", "method": "POST",
                                        "path": "/echo?q=1", "authority": "app.example", "received": 5,
                                        "headers": None}
    assert reply.headers["x-instance"] == "h2-a"
    big = curl("--http2-prior-knowledge", f"http://{h2app.target}/bytes/{3 * MB}", keep_body=False)
    assert (big.status, big.size) == (200, 3 * MB)  # more than the initial window: flow control works
    refused = subprocess.run(["curl", "-sS", "--http1.1", "-m", "5", url], capture_output=True)
    assert refused.returncode != 0  # an HTTP/1.1 request gets no HTTP answer from an h2c-only app


def test_the_raw_h2_client_makes_a_grpc_call_and_reads_its_trailers(echo: Running) -> None:
    client = RawH2.connect("127.0.0.1", echo.port)
    try:
        stream = client.request(*slow_call("echo", 0.05))
        frames = [r for r in client.read_until_end(stream, 5) if r.stream == stream]
    finally:
        client.close()
    head, *data, trailers = frames
    assert dict(head.headers)[":status"] == "200"
    assert dict(head.headers)[INSTANCE_KEY] == "in-process"
    assert b"".join(d.data for d in data) == grpc_frame(b"slept")
    assert trailers.kind == "HEADERS" and trailers.end_stream and dict(trailers.headers)["grpc-status"] == "0"


def test_the_h2c_app_skips_a_request_reset_in_the_same_read_as_a_later_request(h2app: Spawned) -> None:
    """What a sidecar sends an app it stopped (SIGSTOP) then resumed: a request, its RST_STREAM at the timeout,
    and the next request, read at once. h2 has forgotten the reset stream by the time it would be answered; the
    app answers the later request on the same connection."""
    host, port = h2app.target.rsplit(":", 1)
    client = RawH2.connect(host, int(port))
    try:
        peer = client.peer
        client.send(peer.headers(1, get(b"/reset"), end_stream=True) + peer.rst(1)
                    + peer.headers(3, get(b"/later"), end_stream=True))
        client.read_until_end(3, 5)
        assert client.statuses == {3: 200}
        assert json.loads(body_of(client.received, 3))["path"] == "/later"
        status, body = client.exchange(5, get(b"/again"))
        assert (status, json.loads(body)["path"]) == (200, "/again")
    finally:
        client.close()
