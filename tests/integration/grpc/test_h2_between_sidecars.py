"""HTTP/2 between sidecars over mTLS, through real `sidecar run` processes and grpcio: one multiplexed connection
per peer, a second when the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached, PING keepalive (and a frozen peer
found by it), GOAWAY when a destination's sidecar drains, and a peer without HTTP/2 still reached over HTTP/1.1.

    grpcio --h2c--> A (caller: checkout) --h2 + mTLS--> B1..B3 (echo) and the tests' own callees --h2c--> apps

Counts come from the caller's /metrics (``sidecar_upstream_h2_*{peer, service}``)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.grpcapps.launch import Spawned, spawn_all
from tests.grpcapps.service import INSTANCE_KEY, channel, method
from tests.h2client import RawH2, grpc_request
from tests.harness import SidecarProcess, http, make_certs, wait_for
from tests.integration.grpc.mesh import grpc_service, h2_counts, launch, tls_for

SERVICES = ["checkout", "echo", "tiny", "slowpoke", "frozen", "legacy", "drainer", "drained"]
RETRY_RESETS = {"attempts": 2, "retry_on": ["reset", "connect-failure"], "retry_non_idempotent": True,
                "budget": {"ratio": 1.0, "min_per_second": 100}}
CALL_TIMEOUT = 10.0


@dataclass
class Mesh:
    tmp: Path
    certs: dict[str, dict[str, str]]
    apps: dict[str, Spawned]
    caller: SidecarProcess | None = None
    echoes: list[SidecarProcess] = field(default_factory=list)
    extra: list[SidecarProcess] = field(default_factory=list)

    @property
    def a(self) -> SidecarProcess:
        assert self.caller is not None
        return self.caller

    @property
    def seed(self) -> list[str]:
        return [self.echoes[0].listeners["gossip"]]

    def start(self, name: str, config: dict[str, Any]) -> SidecarProcess:
        # the overload guard off: on a loaded test machine its loop-lag shedding would answer some calls 503,
        # and these tests count connections and calls, not shedding
        process = SidecarProcess(self.tmp, {"node": {"name": name, "cluster": "h2peer"},
                                            "gossip": {"profile": "local", "join": self.seed} if self.echoes else
                                            {"profile": "local"}, "overload": {"enabled": False}, **config},
                                 name=name)
        self.extra.append(process)
        return launch(process)

    def healthy(self, via: SidecarProcess, service: str) -> int:
        return sum(1 for i in http("GET", f"{via.api}/v1/catalog/{service}").json() if i["status"] == "healthy")

    def wait_healthy(self, via: SidecarProcess, service: str, count: int) -> None:
        wait_for(lambda: self.healthy(via, service) == count, 30, what=f"{via.name} sees {count} {service}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("h2peer")
    apps = spawn_all({name: ("tests.grpcapps.server", ["--instance", name]) for name in ("app-1", "app-2", "app-3")})
    mesh = Mesh(tmp, make_certs(tmp / "certs", SERVICES), apps)
    try:
        for i in (1, 2, 3):
            mesh.echoes.append(mesh.start(f"node-b{i}", {"tls": tls_for(mesh.certs, "echo"),
                                                         "services": [grpc_service("echo", apps[f"app-{i}"])]}))
        mesh.caller = mesh.start("node-a", {"tls": mesh.certs["checkout"], "policies": {
            "echo": {"load_balancer": "round_robin"}, "drainer": {"load_balancer": "round_robin"},
            "drained": {"load_balancer": "round_robin"}}})
        mesh.wait_healthy(mesh.a, "echo", 3)
        yield mesh
    finally:
        for process in mesh.extra:
            if process.proc is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGCONT)   # a test that failed while a peer was stopped
            process.kill()
        for app in apps.values():
            app.kill()


def peer(process: SidecarProcess) -> str:
    return process.listeners["inbound"]


# ------------------------------------------------------------------------------------------ multiplexing


def test_one_channels_300_calls_to_three_instances_use_one_h2_connection_per_peer(mesh: Mesh) -> None:
    with channel(mesh.a.listeners["outbound"], "echo") as ch:
        unary = ch.unary_unary(method("Unary"))
        calls = [unary.future(b"%d" % i, timeout=30) for i in range(300)]
        answered = Counter(dict(call.trailing_metadata())[INSTANCE_KEY] for call in calls if call.result())
    assert answered == {"app-1": 100, "app-2": 100, "app-3": 100}
    counts = h2_counts(mesh.a, "echo")
    for b in mesh.echoes:
        assert counts[peer(b)]["connections"] == 1, counts
        assert counts[peer(b)]["connections_opened_total"] == 1, counts
    # none of it went over HTTP/1.1 between the sidecars
    metrics = http("GET", f"{mesh.a.admin}/metrics").body.decode()
    assert "sidecar_upstream_connections_dialed_total 0.0" in metrics


def test_a_second_connection_opens_only_when_the_peers_streams_run_out(mesh: Mesh) -> None:
    tiny = mesh.start("node-t", {"tls": tls_for(mesh.certs, "tiny"),
                                 "services": [grpc_service("tiny", mesh.apps["app-1"])],
                                 "inbound": {"http2": {"max_concurrent_streams": 2}}})
    mesh.wait_healthy(mesh.a, "tiny", 1)
    with channel(mesh.a.listeners["outbound"], "tiny") as ch:
        ch.unary_unary(method("Unary"))(b"first", timeout=CALL_TIMEOUT)
        assert h2_counts(mesh.a, "tiny")[peer(tiny)]["connections_opened_total"] == 1
        slow = ch.unary_unary(method("Slow"))
        calls = [slow.future(json.dumps({"seconds": 1.5}).encode(), timeout=CALL_TIMEOUT) for _ in range(6)]
        wait_for(lambda: h2_counts(mesh.a, "tiny")[peer(tiny)]["streams"] == 6, 10, what="six streams open")
        during = h2_counts(mesh.a, "tiny")[peer(tiny)]
        assert [call.result() for call in calls] == [b"slept"] * 6
    # six streams at two a connection: the first connection and two more, never more than needed
    assert during["connections"] == 3 and during["connections_opened_total"] == 3, during


# ------------------------------------------------------------------------------------------ keepalive


def test_pings_keep_an_idle_connection_and_a_frozen_peer_is_cut_within_interval_plus_timeout(mesh: Mesh) -> None:
    interval, timeout = 1.0, 1.0
    caller = mesh.start("node-k", {"tls": mesh.certs["checkout"],
                                   "outbound": {"http2": {"keepalive": {"interval": "1s", "timeout": "1s"}}},
                                   "policies": {"slowpoke": {"retries": {"attempts": 0}}}})
    callee = mesh.start("node-p", {"tls": tls_for(mesh.certs, "slowpoke"),
                                   "services": [grpc_service("slowpoke", mesh.apps["app-2"])]})
    mesh.wait_healthy(caller, "slowpoke", 1)
    p = peer(callee)
    with channel(caller.listeners["outbound"], "slowpoke") as ch:
        ch.unary_unary(method("Unary"))(b"hello", timeout=CALL_TIMEOUT)
        # idle: a PING a second, each answered
        wait_for(lambda: h2_counts(caller, "slowpoke")[p].get("ping_acks_total", 0) >= 2, 10, what="pings answered")
        assert h2_counts(caller, "slowpoke")[p]["ping_timeouts_total"] == 0
        # a call in flight when the peer freezes fails with its connection, long before its deadline
        call = ch.unary_unary(method("Slow")).future(json.dumps({"seconds": 30}).encode(), timeout=25)
        wait_for(lambda: h2_counts(caller, "slowpoke")[p]["streams"] == 1, 5, what="the call is on the connection")
        assert callee.proc is not None
        callee.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_for(lambda: h2_counts(caller, "slowpoke")[p]["ping_timeouts_total"] == 1, 10,
                     what="the frozen peer's connection closed")
            found = time.monotonic() - stopped
            with pytest.raises(grpc.RpcError) as failed:
                call.result(timeout=5)
            ended = time.monotonic() - stopped
        finally:
            callee.proc.send_signal(signal.SIGCONT)
    # its response head had come (the app sends its metadata first): the caller's client sees the stream cut
    # (RST_STREAM, INTERNAL to grpcio), not a deadline
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), failed.value  # type: ignore[attr-defined]
    # the peer was last heard just before it froze: dead within interval + timeout (and a scrape's slack)
    assert found < interval + timeout + 1.0, found
    assert ended < interval + timeout + 1.5, ended
    assert h2_counts(caller, "slowpoke")[p]["connections"] == 0


def test_a_call_sent_to_a_frozen_peer_fails_over_to_another_instance_once_its_ping_goes_unanswered(
        mesh: Mesh) -> None:
    caller = mesh.start("node-r", {"tls": mesh.certs["checkout"],
                                   "outbound": {"http2": {"keepalive": {"interval": "1s", "timeout": "1s"}}},
                                   "policies": {"frozen": {"load_balancer": "round_robin", "timeout": "15s",
                                                           "retries": RETRY_RESETS}}})
    q1 = mesh.start("node-q1", {"tls": tls_for(mesh.certs, "frozen"),
                                "services": [grpc_service("frozen", mesh.apps["app-1"])]})
    mesh.start("node-q2", {"tls": tls_for(mesh.certs, "frozen"),
                           "services": [grpc_service("frozen", mesh.apps["app-2"])]})
    mesh.wait_healthy(caller, "frozen", 2)
    with channel(caller.listeners["outbound"], "frozen") as ch:
        unary = ch.unary_unary(method("Unary"))

        def instance() -> str:
            return str(dict(unary.with_call(b"x", timeout=15)[1].trailing_metadata())[INSTANCE_KEY])

        assert Counter(instance() for _ in range(4)) == {"app-1": 2, "app-2": 2}   # a connection to each
        assert q1.proc is not None
        q1.proc.send_signal(signal.SIGSTOP)
        try:
            # round robin sends one of the next two calls to the frozen peer, on its open connection: no answer
            # comes, the PING goes unanswered, the stream is lost before its response and retried on app-2
            started = time.monotonic()
            answered = Counter(instance() for _ in range(2))
            took = time.monotonic() - started
            timeouts = h2_counts(caller, "frozen")[peer(q1)]["ping_timeouts_total"]
        finally:
            q1.proc.send_signal(signal.SIGCONT)
    assert answered == {"app-2": 2}, answered
    assert timeouts == 1
    assert took < 1.0 + 1.0 + 2.0, took   # interval + timeout, and the retry, not the 15 s deadline


# ------------------------------------------------------------------------------------------ drain


def two_instances(mesh: Mesh, service: str, prefix: str) -> tuple[SidecarProcess, SidecarProcess]:
    """``service`` on app-1 and app-2, each behind a sidecar of its own, both healthy in the caller's catalog."""
    first, second = (mesh.start(f"node-{prefix}{i}", {"tls": tls_for(mesh.certs, service),
                                                      "services": [grpc_service(service, mesh.apps[f"app-{i}"])]})
                     for i in (1, 2))
    mesh.wait_healthy(mesh.a, service, 2)
    return first, second


def streaming_on_each(ch: grpc.Channel) -> dict[str, Iterator[bytes]]:
    """Two server-streaming calls at once, one on each instance (round robin), each past its first message of 40."""
    stream = ch.unary_stream(method("ServerStream"))
    request = json.dumps({"count": 40, "size": 256 * 1024}).encode()
    calls = [stream(request, timeout=30) for _ in range(2)]
    firsts = [next(call) for call in calls]
    on = {dict(call.initial_metadata())[INSTANCE_KEY]: call for call in calls}
    assert set(on) == {"app-1", "app-2"} and all(len(f) == 256 * 1024 for f in firsts)
    return on


def finish_whole_then_answer(ch: grpc.Channel, on: dict[str, Iterator[bytes]], calls: int) -> Counter[str]:
    """Both streams read to their end (each must arrive whole), then ``calls`` unary calls: who answered them."""
    assert sum(len(m) for m in on["app-2"]) == 39 * 256 * 1024
    assert sum(len(m) for m in on["app-1"]) == 39 * 256 * 1024
    unary = ch.unary_unary(method("Unary"))
    return Counter(dict(unary.with_call(b"after", timeout=CALL_TIMEOUT)[1].trailing_metadata())[INSTANCE_KEY]
                   for _ in range(calls))


def test_a_draining_peer_sends_goaway_its_stream_completes_and_new_calls_go_elsewhere(mesh: Mesh) -> None:
    d1, d2 = two_instances(mesh, "drainer", "d")
    with channel(mesh.a.listeners["outbound"], "drainer") as ch:
        on = streaming_on_each(ch)
        assert d2.proc is not None
        d2.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: h2_counts(mesh.a, "drainer")[peer(d2)]["goaways_total"] == 1, 10, what="GOAWAY from d2")
        answered = finish_whole_then_answer(ch, on, 20)   # the stream in flight on the draining peer included
    assert answered == {"app-1": 20}, answered
    assert d2.proc.wait(20) == 0
    assert h2_counts(mesh.a, "drainer")[peer(d1)]["goaways_total"] == 0


def test_admin_drain_sends_goaway_its_stream_completes_and_the_listener_still_accepts(mesh: Mesh) -> None:
    e1, e2 = two_instances(mesh, "drained", "e")
    with channel(mesh.a.listeners["outbound"], "drained") as ch:
        on = streaming_on_each(ch)
        assert http("POST", f"{e2.admin}/drain").status == 200
        wait_for(lambda: h2_counts(mesh.a, "drained")[peer(e2)]["goaways_total"] == 1, 10, what="GOAWAY from e2")
        # the drain does not close the listener: a new connection is accepted and answered, without a GOAWAY, by
        # UNAVAILABLE (the drained service is unhealthy), which a caller retries on another instance
        client = RawH2.over_tls(peer(e2), mesh.certs["checkout"], "drained")
        try:
            sid = client.request(*grpc_request(method("Unary"), "drained", b"still open"))
            frames = client.read_until_end(sid, CALL_TIMEOUT)
        finally:
            client.close()
        answer = next(dict(f.headers) for f in frames if f.stream == sid and f.kind == "HEADERS")
        assert answer[":status"] == "200" and answer["grpc-status"] == "14", frames
        assert "unhealthy" in answer["grpc-message"] and not any(f.kind == "GOAWAY" for f in frames), frames
        mesh.wait_healthy(mesh.a, "drained", 1)   # once the catalog has e2 unhealthy, new calls go to e1 only
        answered = finish_whole_then_answer(ch, on, 10)   # the stream in flight on the drained peer included
    assert answered == {"app-1": 10}, answered
    assert e2.proc is not None and e2.proc.poll() is None   # /drain is not /leave: the sidecar runs on
    assert h2_counts(mesh.a, "drained")[peer(e1)]["goaways_total"] == 0


# ------------------------------------------------------------------------------------------ fallback


def test_a_peer_without_http2_gets_the_calls_over_http1(mesh: Mesh) -> None:
    legacy = mesh.start("node-l", {"tls": tls_for(mesh.certs, "legacy"),
                                   "services": [grpc_service("legacy", mesh.apps["app-3"])],
                                   "inbound": {"http2": {"enabled": False}}})
    mesh.wait_healthy(mesh.a, "legacy", 1)
    with channel(mesh.a.listeners["outbound"], "legacy") as ch:
        unary = ch.unary_unary(method("Unary"))
        calls = [unary.future(b"%d" % i, timeout=CALL_TIMEOUT) for i in range(10)]
        assert [call.result() for call in calls] == [b"%d" % i for i in range(10)]
        assert [unary(b"again", timeout=CALL_TIMEOUT) for _ in range(5)] == [b"again"] * 5
    counts = h2_counts(mesh.a, "legacy")[peer(legacy)]
    # one dial found the peer without h2; every call since went over HTTP/1.1
    assert counts["http1_fallbacks_total"] == 1 and counts["connections"] == 0, counts
    assert counts["connections_opened_total"] == 1, counts
