"""A subscribing app on the publisher's own node, between real `sidecar run` processes with mTLS: in steady state
every message reaches it exactly once and in order (single publishes, bulk publishes, bulk delivery, an SSE reader
on the same node), on a topic a local and a remote service both subscribe to (each publishing too), and after a
kill -9 with a backlog held for the local app. At least once allows a duplicate after a crash or a lost ack, not one
per message: the publisher's stream hands the message to this node's inbox, and only the inbox delivers it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SidecarProcess, http, make_certs, wait_for
from tests.integration.messaging.procs import RecordingApp, SseReader, knows_subscription, publish, restart
from tests.integration.messaging.test_bulk_publish import bulk
from tests.integration.messaging.test_processes import node

RETRY = {"max_attempts": 1000, "retry_backoff": {"base": "20ms", "max": "200ms"}, "delivery_timeout": "2s"}


def status(process: SidecarProcess) -> dict[str, Any]:
    return dict(http("GET", process.admin + "/messaging").json())


def numbers(messages: list[dict[str, Any]], publisher: str, topic: str = "orders") -> list[int]:
    """Every arrival of the publisher's messages on ``topic``, in arrival order, duplicates included."""
    return [m["payload"]["n"] for m in messages
            if m["payload"]["publisher"] == publisher and m["payload"].get("topic", "orders") == topic]


def settled(process: SidecarProcess) -> bool:
    state = status(process)
    return state["pending"] == 0 and all(s["inFlight"] is None for s in state["streams"])


def delivered_per_stream(process: SidecarProcess, topic: str) -> dict[str, int]:
    """``delivered`` of each of the sidecar's streams of ``topic``, by the kind of subscriber (service, inbox, node)."""
    out: dict[str, int] = {}
    for s in status(process)["streams"]:
        if s["topic"] == topic:
            kind = s["subscriber"].split(":")[0] if ":" in s["subscriber"] else "service"
            out[kind] = out.get(kind, 0) + s["delivered"]
    return out


@pytest.mark.timeout(180)
def test_a_local_subscriber_gets_every_message_once_in_order_also_in_bulk_over_sse_and_after_kill_9(
        start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["billing"])
    gate = threading.Event()   # while clear, the app answers 503 (it is not ready: retry later)
    gate.set()
    accepted: list[dict[str, Any]] = []
    lock = threading.Lock()

    def answer(message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not gate.is_set():
            return 503, {}
        with lock:
            accepted.append(message)
        return 200, {}

    app = RecordingApp("billing", answer)
    reader: SseReader | None = None
    try:
        solo = start_sidecar(node(
            "solo", certs["billing"], [{"name": "billing", "port": app.port}], [], messaging=RETRY,
            subscriptions=[{"topic": "orders", "path": "/events/orders"},
                           {"topic": "bulked", "path": "/events/bulked",
                            "bulk": {"enabled": True, "max_messages": 10}}]), name="solo")
        reader = SseReader(solo, "orders")
        wait_for(reader.connected, 15, what="the SSE reader connected")
        wait_for(lambda: "node" in delivered_per_stream(solo, "orders"), 15, what="the SSE reader's node stream")

        # steady state: single publishes, then a bulk publish, one after the other
        for n in range(4):
            assert publish(solo, "orders", {"publisher": "solo", "n": n}).status == 202
        assert bulk(solo, range(4, 24)).status == 202
        for start in range(0, 25, 5):   # bulk delivery: the app gets arrays of up to 10
            answer_ = http("POST", f"{solo.api}/v1/publish/bulk/bulked",
                           [{"type": "event", "payload": {"publisher": "solo", "n": n, "topic": "bulked"}}
                            for n in range(start, start + 5)])
            assert answer_.status == 202, answer_
        wait_for(lambda: len(numbers(app.messages(), "solo")) >= 24 and
                 len(numbers(app.messages(), "solo", "bulked")) >= 25 and len(reader.messages()) >= 24 and
                 settled(solo), 30, interval=0.05, what="everything delivered and acked")
        assert numbers(app.messages(), "solo") == list(range(24))
        assert numbers(app.messages(), "solo", "bulked") == list(range(25))
        assert app.batches >= 3, "the bulked topic's deliveries came as arrays"
        assert [m["payload"]["n"] for m in reader.messages()] == list(range(24))
        # one hop each: the publisher's stream into this node's inbox, the inbox to the app, the node's stream to
        # its SSE readers; none of them carried a message twice
        assert delivered_per_stream(solo, "orders") == {"service": 24, "inbox": 24, "node": 24}
        assert delivered_per_stream(solo, "bulked") == {"service": 25, "inbox": 25}
        counters = status(solo)["counters"]
        assert counters["delivered"] == 24 * 3 + 25 * 2, counters
        assert counters.get("inbox_duplicates", 0) == 0, counters

        # a backlog for the local app (it answers 503), kept through kill -9, delivered once and in order after
        reader.close()
        reader = None
        gate.clear()
        for n in range(24, 44):
            assert publish(solo, "orders", {"publisher": "solo", "n": n}).status == 202
        wait_for(lambda: delivered_per_stream(solo, "orders").get("service", 0) == 44 and
                 len(numbers(app.messages(), "solo")) > 24, 30, interval=0.05,
                 what="the backlog stored in the inbox and tried")
        solo.kill()
        gate.set()
        restart(solo)
        wait_for(lambda: len(numbers(accepted, "solo")) >= 44 and settled(solo), 30, interval=0.05,
                 what="the backlog delivered after the restart")
        assert numbers(accepted, "solo") == list(range(44))
        assert delivered_per_stream(solo, "orders")["inbox"] == 20
    finally:
        if reader is not None:
            reader.close()
        app.close()


@pytest.mark.timeout(180)
def test_a_topic_with_a_local_and_a_remote_subscriber_fans_out_once_to_each(
        start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["billing", "audit"])
    billing, audit = RecordingApp("billing"), RecordingApp("audit")
    subscription = [{"topic": "orders", "path": "/events/orders"}]
    try:
        a = start_sidecar(node("a", certs["billing"], [{"name": "billing", "port": billing.port}], [],
                               subscriptions=subscription), name="a")
        b = start_sidecar(node("b", certs["audit"], [{"name": "audit", "port": audit.port}],
                               [a.listeners["gossip"]], subscriptions=subscription), name="b")
        wait_for(lambda: knows_subscription(a, "orders", "b") and knows_subscription(b, "orders", "a"), 30,
                 what="each knows the other's subscription")
        # each node publishes to a local subscriber and a remote one, turn by turn
        for n in range(10):
            assert publish(a, "orders", {"publisher": "a", "n": n}).status == 202
            assert publish(b, "orders", {"publisher": "b", "n": n}).status == 202
        assert bulk(a, range(10, 30)).status == 202
        for app in (billing, audit):
            wait_for(lambda app=app: len(numbers(app.messages(), "a")) >= 30 and  # type: ignore[misc]
                     len(numbers(app.messages(), "b")) >= 10, 30, interval=0.05, what=f"{app.name} got both")
        wait_for(lambda: settled(a) and settled(b), 30, interval=0.05, what="both outboxes settled")
        for app in (billing, audit):
            assert numbers(app.messages(), "a") == list(range(30)), app.name
            assert numbers(app.messages(), "b") == list(range(10)), app.name
        for process in (a, b):
            assert status(process)["counters"].get("inbox_duplicates", 0) == 0
    finally:
        billing.close()
        audit.close()
