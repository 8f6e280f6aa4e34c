"""Resilience policies with real sidecars, real mTLS and real apps: retries, ejection, balancing, deadlines, caps.

Every test builds its own small cluster (a caller node and one node per instance) in the module's event loop and
drives it with blocking clients; each is bounded by counts and by the clients' timeouts.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from sidecar.config.model import (
    BudgetConfig,
    CircuitBreakerConfig,
    OutlierDetectionConfig,
    PolicyConfig,
    RetryConfig,
    ServiceConfig,
)
from sidecar.config.values import Duration
from tests.harness import wait_for
from tests.integration.mesh.conftest import LoopThread, Node, Pki, link, node_config, start_node, stop_node
from tests.integration.resilience.conftest import Answer, Backend, Cluster, load, request, start_cluster


def cluster_of(loop_thread: LoopThread, pki: Pki, backend: Backend, indexes: list[int], policy: PolicyConfig,
               seed: int = 1) -> Cluster:
    return start_cluster(loop_thread, pki, backend, "echo", indexes, policy, seed=seed)


def test_an_instance_failing_one_request_in_three_is_hidden_by_retries(
        loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(0, mode="every:3")
    # the default retry policy (2 retries on 503, budget 20% + 10/s); max_retries raised from its default of 3:
    # at ~1000 requests/s about four retries wait out their 25 ms back-off at any moment, and 3 would bind
    policy = PolicyConfig(circuit_breaker=CircuitBreakerConfig(max_retries=50))
    cluster = cluster_of(loop_thread, pki, backend, [0, 1, 2], policy)
    try:
        answers = load(cluster.outbound, "echo", 600, concurrency=4)
        statuses = Counter(a.status for a in answers)
        assert statuses[200] >= 0.99 * 600, statuses
        failed_upstream = backend.stats(0)["failures"]
        assert failed_upstream > 10                       # the failures happened, and were retried away
        echo = cluster.clusters()["echo"]
        assert echo["counters"]["retries"] >= failed_upstream - (600 - statuses[200])
    finally:
        cluster.close()


def test_a_total_outage_does_not_multiply_load(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    ratio, minimum = 0.2, 10.0
    # max_retries out of the way: the budget alone must bound the load
    policy = PolicyConfig(retries=RetryConfig(attempts=3, retry_on=["connect-failure", "reset", "gateway-error"],
                                              budget=BudgetConfig(ratio, minimum)),
                          circuit_breaker=CircuitBreakerConfig(max_retries=1000))
    for index in (0, 1, 2):
        backend.control(index, mode="fail")
    cluster = cluster_of(loop_thread, pki, backend, [0, 1, 2], policy)
    try:
        started = time.monotonic()
        answers = load(cluster.outbound, "echo", 300, concurrency=4)
        seconds = time.monotonic() - started
        assert Counter(a.status for a in answers) == {503: 300}
        attempts = sum(backend.stats(i)["requests"] for i in (0, 1, 2))
        bound = (1 + ratio) * 300 + minimum * math.ceil(seconds)
        assert 300 < attempts <= bound, (attempts, bound, seconds)   # some retries, within the budget
        counters = cluster.clusters()["echo"]["counters"]
        assert counters["retriesDenied"].get("budget", 0) > 0
        assert attempts < 300 * 4 / 2                                # far from the 4 x that attempts=3 allows
    finally:
        cluster.close()


def test_a_killed_instance_costs_a_handful_of_failures_then_is_ejected(
        loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    policy = PolicyConfig(retries=RetryConfig(attempts=0),           # no retries: ejection alone is measured
                          outlier_detection=OutlierDetectionConfig(consecutive_failures=3, max_ejection_percent=50))
    cluster = cluster_of(loop_thread, pki, backend, [0, 1, 2], policy)
    victim = cluster.instances[1]
    killed = threading.Event()

    def kill_at(done: int) -> None:
        if done == 150 and not killed.is_set():
            killed.set()
            cluster.kill(victim)

    try:
        answers = load(cluster.outbound, "echo", 450, concurrency=2, on_progress=kill_at)
        assert killed.is_set()
        failures = [a for a in answers if a.status != 200]
        # a refused connection holds it out of the picks at once (resilience.readiness); two clients may each
        # have had one in flight, and each hold ends with one probe
        assert len(failures) <= 5, Counter(a.status for a in answers)
        assert all(a.status == 503 for a in failures)

        # 3 consecutive connect failures eject it. The requests name the victim by its tag: one for "echo"
        # reaches it only when the balancer picks it once its hold is over, and peak EWMA does not pick the host
        # whose latency estimate is the highest (a failure never lowers it), so a slow answer just before the kill
        # keeps it out of the picks, and unejected, for seconds; alone in its tag, it is tried held or not
        def victim_row() -> dict[str, Any]:
            echo = cluster.clusters()["echo"]
            return next(e for e in echo["endpoints"] if e["node"] == victim.name)

        def ejected() -> bool:
            request(cluster.outbound, f"{victim.name}.echo.service.mesh")
            return bool(victim_row()["ejected"])
        wait_for(ejected, 10, interval=0.05, what=f"{victim.name} ejected")
        assert victim_row()["ejection"]["times"] == 1
        echo = cluster.clusters()["echo"]
        assert echo["counters"]["ejections"] == 1
        # the survivors took the rest
        assert sum(e["requests"] for e in echo["endpoints"] if e["node"] != victim.name) >= 450 - 150
    finally:
        cluster.close()


def test_a_killed_instance_behind_retries_costs_nothing(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    cluster = cluster_of(loop_thread, pki, backend, [0, 1, 2], PolicyConfig())
    killed = threading.Event()

    def kill_at(done: int) -> None:
        if done == 100 and not killed.is_set():
            killed.set()
            cluster.kill(cluster.instances[2])

    try:
        answers = load(cluster.outbound, "echo", 300, concurrency=2, on_progress=kill_at)
        assert Counter(a.status for a in answers) == {200: 300}
    finally:
        cluster.close()


def test_ewma_keeps_traffic_away_from_a_slow_instance(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(4, delay_ms=150)
    cluster = cluster_of(loop_thread, pki, backend, [3, 4], PolicyConfig())     # ewma is the default
    try:
        answers = load(cluster.outbound, "echo", 300, concurrency=4)
        assert Counter(a.status for a in answers) == {200: 300}
        slow_share = backend.stats(4)["requests"] / 300
        assert slow_share < 0.2, slow_share
        echo = cluster.clusters()["echo"]
        latency = {e["address"]: e["latencyEwmaMs"] for e in echo["endpoints"]}
        assert len(latency) == 2 and echo["loadBalancer"] == "ewma"
    finally:
        cluster.close()


def test_round_robin_for_contrast_shares_equally(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(4, delay_ms=20)
    cluster = cluster_of(loop_thread, pki, backend, [3, 4], PolicyConfig(load_balancer="round_robin"))
    try:
        load(cluster.outbound, "echo", 60, concurrency=2)
        assert backend.stats(3)["requests"] == backend.stats(4)["requests"] == 30
    finally:
        cluster.close()


def test_the_deadline_travels_two_hops(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    """client -> its sidecar (timeout 1 s) -> relay's sidecar -> relay app -> relay's sidecar -> leaf's sidecar ->
    leaf app. The relay app passes on the x-sidecar-deadline-ms it was given, as it would traceparent."""
    leaf = start_cluster(loop_thread, pki, backend, "leaf", [6], PolicyConfig(), caller_service="relay", seed=2)
    relay = leaf.caller                 # the relay's sidecar: its outbound reaches the leaf
    loop_thread.call(relay.registry.register, ServiceConfig("relay", backend.ports[5]), "config", time.monotonic(),
                     int(time.time() * 1000))
    backend.control(5, forward="leaf", outbound=relay.outbound)

    async def start_client() -> Node:
        node = await start_node(replace(node_config("deadline-client", pki.tls("client")),
                                        policies={"*": PolicyConfig(timeout=Duration(1.0))}))
        link(node, relay)
        return node

    client = loop_thread.run(start_client())
    try:
        fast = request(client.outbound, "relay")
        assert fast.status == 200, fast
        relay_saw = int(fast.json()["deadline"])
        leaf_saw = int(json.loads(fast.json()["upstream"])["deadline"])
        assert 500 < relay_saw <= 1000                 # the caller's 1 s, less the way there
        assert 0 < leaf_saw <= relay_saw               # never more at the next hop (the relay's policy is 15 s)

        backend.control(6, delay_ms=3000)
        slow = request(client.outbound, "relay")
        assert slow.status == 504, slow
        assert slow.headers.get("x-sidecar-error") == "DEADLINE_EXCEEDED"
        assert 0.9 <= slow.elapsed < 1.5, slow.elapsed   # at the caller's deadline, not the leaf's 3 s
        # the leaf's own sidecar stopped waiting at about the caller's deadline, not after the leaf's 3 s: by its
        # own propagated deadline (504), or because the hops above gave up first and closed (client-reset)
        leaf_node = leaf.instances[0]
        ended: list[tuple[int, float]] = wait_for(
            lambda: [(s.status, s.duration) for listener, s in list(leaf_node.requests)
                     if listener == "inbound" and s.status in (0, 504)],
            5.0, 0.02, what="the leaf's sidecar to end the request")
        assert ended[0][1] < 1.5, ended
    finally:
        loop_thread.run(stop_node(client))
        leaf.close()


def test_caps_fail_fast_with_429_naming_the_cap(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(7, delay_ms=400)
    policy = PolicyConfig(circuit_breaker=CircuitBreakerConfig(max_connections=1, max_pending_requests=1))
    cluster = cluster_of(loop_thread, pki, backend, [7], policy)
    try:
        answers = parallel(cluster.outbound, 4)
        by_status = Counter(a.status for a in answers)
        assert by_status == {200: 2, 429: 2}, by_status             # one in flight, one waiting, two refused
        for refused in (a for a in answers if a.status == 429):
            assert refused.headers["x-sidecar-error"] == "RESOURCE_EXHAUSTED"
            assert refused.json()["error"]["details"]["cap"] == "max_pending_requests"
            assert refused.elapsed < 0.3                              # fast: not after the 400 ms
        waited = max(a.elapsed for a in answers if a.status == 200)
        assert waited >= 0.75                                         # the queued one waited its turn
        breaker = cluster.clusters()["echo"]["breaker"]
        assert breaker["pendingRequests"]["rejected"] == 2
        assert breaker["connections"]["active"] == 0 and breaker["requests"]["active"] == 0
    finally:
        cluster.close()


def test_max_requests_fails_fast(loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(7, delay_ms=400)
    cluster = cluster_of(loop_thread, pki, backend, [7], PolicyConfig(
        circuit_breaker=CircuitBreakerConfig(max_requests=2)))
    try:
        answers = parallel(cluster.outbound, 5)
        assert Counter(a.status for a in answers) == {200: 2, 429: 3}
        refused = [a for a in answers if a.status == 429]
        assert all(a.json()["error"]["details"]["cap"] == "max_requests" and a.elapsed < 0.3 for a in refused)
        assert cluster.clusters()["echo"]["breaker"]["requests"]["rejected"] == 3
    finally:
        cluster.close()


def test_retry_override_headers_are_honoured_and_stripped(
        loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(0, mode="fail")
    backend.control(1, mode="fail")
    cluster = cluster_of(loop_thread, pki, backend, [0, 1], PolicyConfig(
        retries=RetryConfig(attempts=2, retry_on=["503"], budget=BudgetConfig(1.0, 100.0))))
    try:
        none = request(cluster.outbound, "echo", headers={"x-envoy-max-retries": "0"})
        assert none.status == 503
        assert sum(backend.stats(i)["requests"] for i in (0, 1)) == 1
        one = request(cluster.outbound, "echo", headers={"x-sidecar-max-retries": "1"})
        assert one.status == 503
        assert sum(backend.stats(i)["requests"] for i in (0, 1)) == 3
        backend.reset()
        backend.control(0, mode="every:1")   # 503 every time, but retry_on from the header excludes 503
        backend.control(1, mode="every:1")
        request(cluster.outbound, "echo", headers={"x-sidecar-retry-on": "connect-failure"})
        assert sum(backend.stats(i)["requests"] for i in (0, 1)) == 1
        backend.reset()
        seen = request(cluster.outbound, "echo", headers={"x-sidecar-max-retries": "1", "x-envoy-retry-on": "5xx",
                                                          "x-sidecar-retry-on": "reset"})
        assert seen.status == 200
        names = seen.json()["headers"]
        assert "x-sidecar-deadline-ms" in names
        assert not {"x-sidecar-max-retries", "x-envoy-retry-on", "x-sidecar-retry-on"} & set(names)
    finally:
        cluster.close()


def parallel(port: int, count: int) -> list[Answer]:
    """``count`` requests sent together (each on its own connection)."""
    answers: list[Answer] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait(5)
        answer = request(port, "echo")
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive()
    return answers


def test_a_waiting_request_whose_client_leaves_gives_back_its_place(
        loop_thread: LoopThread, pki: Pki, backend: Backend) -> None:
    backend.control(7, delay_ms=300)
    policy = PolicyConfig(circuit_breaker=CircuitBreakerConfig(max_connections=1, max_pending_requests=1))
    cluster = cluster_of(loop_thread, pki, backend, [7], policy)
    try:
        busy = threading.Thread(target=request, args=(cluster.outbound, "echo"), daemon=True)
        busy.start()
        wait_for(lambda: active(cluster, "connections") == 1, 5.0, what="connections active == 1")
        with socket.create_connection(("127.0.0.1", cluster.outbound), timeout=5) as gone:
            gone.sendall(b"GET /work HTTP/1.1\r\nHost: echo\r\n\r\n")
            wait_for(lambda: active(cluster, "pendingRequests") == 1, 5.0, what="pendingRequests active == 1")
            # a reset, not a half-close (after which the client could still be answered)
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for(lambda: active(cluster, "pendingRequests") == 0, 5.0, what="pendingRequests active == 0")
        # a waiting request whose body turns out malformed is answered 400 at once and leaves the queue too
        with socket.create_connection(("127.0.0.1", cluster.outbound), timeout=5) as bad:
            bad.sendall(b"POST /work HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n")
            wait_for(lambda: active(cluster, "pendingRequests") == 1, 5.0, what="pendingRequests active == 1")
            bad.sendall(b"not-a-chunk-size\r\n")
            assert bad.recv(4096).startswith(b"HTTP/1.1 400 ")
        wait_for(lambda: active(cluster, "pendingRequests") == 0, 5.0, what="pendingRequests active == 0")
        busy.join(5)
        assert request(cluster.outbound, "echo").status == 200
        breaker = cluster.clusters()["echo"]["breaker"]
        assert {k: v["active"] for k, v in breaker.items()} == {
            "connections": 0, "pendingRequests": 0, "requests": 0, "retries": 0}
        assert backend.stats(7)["requests"] == 2          # the abandoned one never reached the app
    finally:
        cluster.close()


def active(cluster: Cluster, gauge: str) -> int:
    echo = cluster.clusters().get("echo")
    return -1 if echo is None else int(echo["breaker"][gauge]["active"])
