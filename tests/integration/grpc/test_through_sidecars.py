"""Issue 19's "Done when", through real `sidecar run` processes: grpcio channels, curl
--http2-prior-knowledge and a raw h2c client against the caller's outbound listener, the apps of
tests.grpcapps behind sidecars: h2c at both ends, HTTP/2 between the sidecars over mTLS (ALPN h2;
tests/integration/grpc/test_h2_between_sidecars.py tests that hop's connections, keepalive, drain and fallback).

The points not done yet are strict xfails, each with what is missing: they run and fail today (seconds, not
timeouts) and fail the suite the moment they pass, to be un-marked then."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sidecar.proxy.tracecontext import parse
from tests.grpcapps.launch import spawn
from tests.grpcapps.service import CLOCK_SLACK, INSTANCE_KEY, channel, method
from tests.h2client import RawH2, grpc_frame, slow_call
from tests.harness import http, wait_for
from tests.integration.grpc.mesh import DENIED, HASTY_TIMEOUT, GrpcMesh, grpc_service, h2_counts, start_mesh, tls_for
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.proxy.test_streams import MAX_GROWTH_KIB, RssWatch, rss_kib

MB = 1 << 20
CALL_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcMesh]:
    yield from start_mesh(tmp_path_factory.mktemp("grpc-mesh"))


def metadata(error: grpc.RpcError) -> dict[str, str]:
    """Initial and trailing metadata of a failed call (a trailers-only answer puts everything in one)."""
    call: Any = error
    return {**dict(call.initial_metadata() or ()), **dict(call.trailing_metadata() or ())}


def observed(mesh: GrpcMesh, instance: str) -> dict[str, Any]:
    """What an app saw, asked directly (not through the sidecars)."""
    with channel(mesh.apps[instance].target) as ch:
        return json.loads(ch.unary_unary(method("Observed"))(b"", timeout=CALL_TIMEOUT))  # type: ignore[no-any-return]


ECHO_APPS = ["echo-1", "echo-2", "echo-3"]


def unary_instances(ch: grpc.Channel, calls: int) -> tuple[Counter[str], Counter[str]]:
    """Answers by instance and failures by status code, over ``calls`` unary calls on one channel."""
    unary = ch.unary_unary(method("Unary"))
    answered: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for i in range(calls):
        try:
            _, call = unary.with_call(b"%d" % i, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            failed[e.code().name] += 1  # type: ignore[attr-defined]
            if i == 0:
                raise  # the first call refused: the feature is absent, fail now
            continue
        answered[dict(call.trailing_metadata())[INSTANCE_KEY]] += 1
    return answered, failed


# ------------------------------------------------------------------------------------------ balancing, retries


def test_one_channel_spreads_1000_unary_calls_over_three_instances(mesh: GrpcMesh) -> None:
    with mesh.channel("echo") as ch:
        answered, failed = unary_instances(ch, 1000)
    assert not failed, failed
    assert set(answered) == {"echo-1", "echo-2", "echo-3"}, answered
    assert all(n >= 250 for n in answered.values()), answered


def test_an_instance_refusing_a_third_of_calls_still_leaves_99_percent_succeeding(mesh: GrpcMesh) -> None:
    before = observed(mesh, "flaky-1")["calls"].get("Unary", 0)
    with mesh.channel("flaky") as ch:
        answered, failed = unary_instances(ch, 300)
    assert sum(failed.values()) <= 3, failed
    assert answered == {"flaky-1": 300 - sum(failed.values())}
    # the app did refuse a third of what it got: the sidecar retried those
    tries = observed(mesh, "flaky-1")["calls"]["Unary"] - before
    assert tries >= 300 + 90, tries


def test_a_killed_instance_costs_at_most_5_failed_calls(mesh: GrpcMesh) -> None:
    with mesh.channel("victim") as ch:
        answered, failed = unary_instances(ch, 40)
        assert not failed and set(answered) == {"victim-1", "victim-2"}, (answered, failed)
        mesh.apps["victim-2"].kill()
        answered, failed = unary_instances(ch, 300)
    assert sum(failed.values()) <= 5, failed
    assert answered["victim-1"] >= 295 and answered["victim-2"] == 0, answered


def test_a_trailers_only_answer_of_the_app_crosses_the_sidecars_whole(mesh: GrpcMesh) -> None:
    # grpcio answers an unknown method with HEADERS + END_STREAM (grpc-status 12): no message, no trailers after
    with mesh.channel("echo") as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            ch.unary_unary(method("NoSuchMethod"))(b"", timeout=CALL_TIMEOUT)
    e: Any = failure.value
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
    assert time.monotonic() - started < 2, "the answer waited for something after its end"
    assert "x-sidecar-error" not in metadata(e), metadata(e)   # the app's answer, not a sidecar's


# ------------------------------------------------------------------------------------------ streaming


def test_100_mb_each_way_in_1_mb_messages_keeps_the_sidecars_rss_flat(mesh: GrpcMesh) -> None:
    block = b"m" * MB
    watches = [RssWatch(pid) for pid in mesh.pids()]
    baselines = [rss_kib(pid) for pid in mesh.pids()]
    with mesh.channel("echo") as ch:
        for watch in watches:
            watch.__enter__()
        try:
            sent = json.loads(ch.stream_unary(method("ClientStream"))((block for _ in range(100)), timeout=60))
            assert sent == {"count": 100, "bytes": 100 * MB}
            received = sum(len(m) for m in ch.unary_stream(method("ServerStream"))(
                json.dumps({"count": 100, "size": MB}).encode(), timeout=60))
            assert received == 100 * MB
            echoed = sum(len(m) for m in ch.stream_stream(method("Bidi"))((block for _ in range(100)), timeout=60))
            assert echoed == 100 * MB
        finally:
            for watch in watches:
                watch.__exit__()
    growth = [watch.peak - base for watch, base in zip(watches, baselines, strict=True)]
    assert all(g < MAX_GROWTH_KIB for g in growth), f"RSS growth KiB per sidecar (A, B1..B3): {growth}"
    # the 300 MB crossed between the sidecars over HTTP/2
    assert sum(peer["connections_opened_total"] for peer in h2_counts(mesh.caller, "echo").values()) >= 1


# ------------------------------------------------------------------------------------------ cancel, deadline


def test_a_client_cancellation_reaches_the_server(mesh: GrpcMesh) -> None:
    def cancelled() -> int:
        return sum(observed(mesh, i)["cancelled"].get("ServerStream", 0) for i in ECHO_APPS)

    before = cancelled()
    with mesh.channel("echo") as ch:
        stream = ch.unary_stream(method("ServerStream"))(json.dumps({"count": 10**6, "size": 1024}).encode(),
                                                         timeout=30)
        assert len(next(stream)) == 1024
        stream.cancel()
    wait_for(lambda: cancelled() == before + 1, 5, what="the app saw the stream cancelled")


def test_a_200ms_deadline_against_a_2s_handler_ends_in_about_200ms_and_the_server_saw_it(mesh: GrpcMesh) -> None:
    def slow_records() -> list[dict[str, Any]]:
        return [r for i in ECHO_APPS for r in observed(mesh, i)["slow"]]

    before = len(slow_records())
    with mesh.channel("echo") as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            ch.unary_unary(method("Slow"))(json.dumps({"seconds": 2}).encode(), timeout=0.2)
        took = time.monotonic() - started
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failure.value  # type: ignore[attr-defined]
    assert 0.15 < took < 0.6, took
    record = wait_for(lambda: slow_records()[before:], 5, what="the slow call recorded")[0]
    assert 0 < record["time_remaining"] <= 0.2 + CLOCK_SLACK, record   # grpc-timeout reached the app
    assert record["ended_early"] is True, record           # and the call ended there too (RST_STREAM)


def slow_records(mesh: GrpcMesh, instances: list[str]) -> list[dict[str, Any]]:
    return [r for i in instances for r in observed(mesh, i)["slow"]]


def test_with_no_client_deadline_the_policy_timeout_ends_the_call_with_deadline_exceeded(mesh: GrpcMesh) -> None:
    # hasty's policy at the caller: 300 ms; Slow sends its response head at once, then sleeps 2 s
    before = len(slow_records(mesh, ["echo-1"]))
    with mesh.channel("hasty") as ch:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            ch.unary_unary(method("Slow"))(json.dumps({"seconds": 2}).encode())   # no client deadline
        took = time.monotonic() - started
    e: Any = failure.value
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    assert metadata(e).get("x-sidecar-error") == "DEADLINE_EXCEEDED", metadata(e)   # the sidecar's, not grpcio's
    assert HASTY_TIMEOUT * 0.8 < took < HASTY_TIMEOUT + 0.7, took
    record = wait_for(lambda: slow_records(mesh, ["echo-1"])[before:], 5, what="the slow call recorded")[0]
    remaining = record["time_remaining"]
    assert remaining is not None and 0 < remaining <= HASTY_TIMEOUT + CLOCK_SLACK, record
    assert record["ended_early"] is True, record           # the upstream stream was reset: the app was cancelled


def test_the_server_sees_the_deadline_the_sidecars_hold_not_the_larger_one_the_client_sent(mesh: GrpcMesh) -> None:
    # the client allows 5 s; the caller's policy for hasty 300 ms: grpc-timeout is rewritten on the way
    before = len(slow_records(mesh, ["echo-1"]))
    with mesh.channel("hasty") as ch:
        assert ch.unary_unary(method("Slow"))(json.dumps({"seconds": 0}).encode(), timeout=5) == b"slept"
    record = wait_for(lambda: slow_records(mesh, ["echo-1"])[before:], 5, what="the slow call recorded")[0]
    remaining = record["time_remaining"]
    assert remaining is not None and 0 < remaining <= HASTY_TIMEOUT + CLOCK_SLACK, record


# ------------------------------------------------------------------------------------------ the sidecar's own errors


@pytest.mark.parametrize(("authority", "rpc", "code", "error"), [
    ("no-such-service", "Unary", grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    ("sleepy", "Unary", grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    ("echo", DENIED.rsplit("/", 1)[1], grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
])
def test_the_sidecar_answers_its_own_errors_as_grpc_statuses(mesh: GrpcMesh, authority: str, rpc: str,
                                                              code: grpc.StatusCode, error: str) -> None:
    with mesh.channel(authority) as ch, pytest.raises(grpc.RpcError) as failure:
        ch.unary_unary(method(rpc))(b"SERVING", timeout=CALL_TIMEOUT)
    e: Any = failure.value
    assert e.code() == code, e
    assert e.details(), "a status without a message"
    assert metadata(e).get("x-sidecar-error") == error, metadata(e)


# ------------------------------------------------------------------------------------------ drain


def test_draining_the_callers_sidecar_sends_goaway_and_the_in_flight_call_completes(mesh: GrpcMesh) -> None:
    caller = mesh.start_sidecar("node-a2", {"tls": mesh.certs["checkout"],
                                            "gossip": {"profile": "local", "join": mesh.seed}})
    wait_for(lambda: mesh.healthy(caller, "echo") == 3, 20, what="node-a2 sees echo")
    with mesh.channel("echo", via=caller) as ch:
        ch.unary_unary(method("Unary"))(b"probe", timeout=CALL_TIMEOUT)  # the path works before it drains
    host, port = caller.listeners["outbound"].rsplit(":", 1)
    before = sum(observed(mesh, i)["calls"].get("Slow", 0) for i in ECHO_APPS)
    client = RawH2.connect(host, int(port))
    try:
        stream = client.request(*slow_call("echo", 1.0))
        wait_for(lambda: sum(observed(mesh, i)["calls"].get("Slow", 0) for i in ECHO_APPS) == before + 1, 5,
                 what="the slow call reached an app")
        assert caller.proc is not None
        caller.proc.send_signal(signal.SIGTERM)
        frames = client.read_until_end(stream, 10)
    finally:
        client.close()
    kinds = [(f.kind, f.stream) for f in frames]
    goaway = next((i for i, f in enumerate(frames) if f.kind == "GOAWAY"), None)
    assert goaway is not None, kinds
    assert frames[goaway].code == 0 and frames[goaway].stream >= stream, frames[goaway]
    mine = [f for f in frames[goaway:] if f.stream == stream and f.kind != "GOAWAY"]
    assert mine and mine[-1].kind == "HEADERS" and mine[-1].end_stream, kinds   # the call ended after the GOAWAY
    assert dict(mine[-1].headers).get("grpc-status") == "0", mine[-1]
    assert grpc_frame(b"slept") in b"".join(f.data for f in frames if f.stream == stream)
    assert caller.proc.wait(15) == 0


def test_draining_a_destinations_sidecar_completes_its_call_and_new_calls_go_elsewhere(mesh: GrpcMesh) -> None:
    mesh.apps["drainer-2"] = spawn("tests.grpcapps.server", "--instance", "drainer-2")
    d = mesh.start_sidecar("node-d", {"tls": tls_for(mesh.certs, "drainer"),
                                      "services": [grpc_service("drainer", mesh.apps["drainer-2"])],
                                      "gossip": {"profile": "local", "join": mesh.seed}})
    wait_for(lambda: mesh.healthy(mesh.caller, "drainer") == 2, 20, what="the caller sees both drainers")
    with mesh.channel("drainer") as ch:
        unary_instances(ch, 2)  # the path works before it drains
        slow = ch.unary_unary(method("Slow"))
        # round robin: two calls at once land one on each instance
        calls = [slow.future(json.dumps({"seconds": 1.0}).encode(), timeout=10) for _ in range(2)]
        wait_for(lambda: observed(mesh, "drainer-2")["calls"].get("Slow") == 1, 5, what="a call on node-d's app")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert [c.result() for c in calls] == [b"slept", b"slept"]
        answered, failed = unary_instances(ch, 20)
    assert not failed and answered == {"drainer-1": 20}, (answered, failed)
    assert d.proc.wait(15) == 0


# ------------------------------------------------------------------------------------------ HTTP/2 that is not gRPC


@needs_curl
def test_curl_http2_prior_knowledge_reaches_an_http2_app(mesh: GrpcMesh) -> None:
    reply = curl("--http2-prior-knowledge", "-m", "5", "-H", "Host: h2app", "--data-binary", "hello",
                 f"http://{mesh.outbound}/h2/echo?q=1")
    assert reply.status == 200, reply
    body = reply.json()
    assert (body["protocol"], body["method"], body["path"], body["received"]) == ("HTTP/2", "POST", "/h2/echo?q=1", 5)
    assert reply.headers.get("x-instance") == "h2app"


@needs_curl
def test_an_http1_client_reaches_an_http2_app(mesh: GrpcMesh) -> None:
    reply = curl("--http1.1", "-m", "5", "-H", "Host: h2app", f"http://{mesh.outbound}/from/http1")
    assert reply.status == 200, reply
    body = reply.json()
    assert (body["protocol"], body["method"], body["path"]) == ("HTTP/2", "GET", "/from/http1")
    big = curl("--http1.1", "-m", "10", "-H", "Host: h2app", f"http://{mesh.outbound}/bytes/{3 * MB}",
               keep_body=False)
    assert (big.status, big.size) == (200, 3 * MB)


@needs_curl
def test_an_http2_client_reaches_an_http1_app(mesh: GrpcMesh) -> None:
    before = len(mesh.web.requests)
    out = subprocess.run(["curl", "-sS", "-m", "5", "--http2-prior-knowledge", "-H", "Host: web", "-o", "-",
                          "-w", "\n%{http_version} %{http_code}", f"http://{mesh.outbound}/from/http2"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    body, _, versions = out.stdout.rpartition("\n")
    assert versions == "2 200", out.stdout                       # the client spoke HTTP/2 all along
    assert json.loads(body)["app"] == "web"
    assert mesh.web.requests[before:] == [("GET", "/from/http2")]   # the app got HTTP/1.1


# ------------------------------------------------------------------------------------------ the rest of L7


def test_a_grpc_health_check_follows_the_apps_health_service(mesh: GrpcMesh) -> None:
    mesh.apps["checked-1"] = spawn("tests.grpcapps.server", "--instance", "checked-1")
    mesh.start_sidecar("node-h", {
        "tls": tls_for(mesh.certs, "checked"),
        "services": [grpc_service("checked", mesh.apps["checked-1"],
                                  check={"grpc": "test.Echo", "interval": "250ms", "timeout": "250ms"})],
        "gossip": {"profile": "local", "join": mesh.seed}})

    def status() -> list[str]:
        return [i["status"] for i in http("GET", f"{mesh.caller.api}/v1/catalog/checked").json()]

    wait_for(lambda: status() == ["healthy"], 15, what="checked healthy by its gRPC check")
    with channel(mesh.apps["checked-1"].target) as ch:
        set_health = ch.unary_unary(method("SetHealth"))
        set_health(b"NOT_SERVING", timeout=CALL_TIMEOUT)
        wait_for(lambda: status() == ["unhealthy"], 10, what="NOT_SERVING seen as unhealthy")
        set_health(b"SERVING", timeout=CALL_TIMEOUT)
        wait_for(lambda: status() == ["healthy"], 10, what="SERVING seen as healthy again")


def test_records_and_metrics_name_the_grpc_method_and_status(mesh: GrpcMesh) -> None:
    with mesh.channel("echo") as ch:
        unary_instances(ch, 3)
        with pytest.raises(grpc.RpcError):
            ch.unary_unary(DENIED)(b"SERVING", timeout=CALL_TIMEOUT)

    def records(name: str) -> list[dict[str, Any]]:
        found = http("GET", f"{mesh.caller.admin}/v1/metrics?service=echo&limit=1000").json()
        return [r for r in found if name in r["serviceMethod"]]

    ok = wait_for(lambda: records("test.Echo/Unary"), 5, what="records of test.Echo/Unary")
    denied = wait_for(lambda: records("test.Echo/SetHealth"), 5, what="records of the denied call")
    # the gRPC status rides along (its key named for gRPC), not only success/error
    assert ok[-1]["status"] == "success" and grpc_status(ok[-1]) in ("0", "OK"), ok[-1]
    assert denied[-1]["status"] == "error" and grpc_status(denied[-1]) in ("7", "PERMISSION_DENIED"), denied[-1]
    exposition = http("GET", f"{mesh.caller.admin}/metrics").body.decode()
    assert "test.Echo/Unary" in exposition


def test_debug_explain_answers_for_a_grpc_method(mesh: GrpcMesh) -> None:
    # a path /pkg.Service/Method without a method is a gRPC call; node-b1's copy of authorization denies SetHealth
    b1 = mesh.bs[0]
    denied = http("GET", f"{b1.admin}/debug/explain?service=echo&path={DENIED}").json()
    assert (denied["grpc"], denied["method"], denied["verdict"]) == (True, "POST", "refuse"), denied
    steps = {s["step"]: s for s in denied["steps"]}
    assert steps["authorization"]["data"]["rule"] == "authorization.rules[0]", steps["authorization"]
    # the caller's policy for flaky: retried on UNAVAILABLE, the timeout a deadline for the whole call
    flaky = http("GET", f"{mesh.caller.admin}/debug/explain?service=flaky&path=/test.Echo/Unary").json()
    policy = {s["step"]: s for s in flaky["steps"]}["policy"]
    assert flaky["verdict"] != "refuse" and policy["data"]["grpcRetryOn"] == ["unavailable"], flaky
    assert "whole call" in policy["says"], policy


def grpc_status(record: dict[str, Any]) -> str:
    values = [str(v) for k, v in record.items() if "grpc" in k.lower()]
    assert len(values) == 1, f"one gRPC status field expected in {record}"
    return values[0]


def test_the_trace_continues_through_grpc_metadata(mesh: GrpcMesh) -> None:
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with mesh.channel("echo") as ch:
        _, call = ch.unary_unary(method("Unary")).with_call(
            b"traced", metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),), timeout=CALL_TIMEOUT)
    instance = dict(call.trailing_metadata())[INSTANCE_KEY]
    seen = observed(mesh, instance)["metadata"]["Unary"]
    arrived = parse(seen["traceparent"])
    assert arrived is not None and arrived.trace_id == trace_id, seen
    assert arrived.span_id != caller_span, seen          # each sidecar hop adds its span
    assert seen.get("x-request-id"), seen
    assert seen.get("x-sidecar-caller") == "spiffe://mesh.local/service/checkout", seen
