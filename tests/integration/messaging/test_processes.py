"""Messaging between real `sidecar run` processes over mTLS and gossip (needs the messaging wiring in app.py).

The big one: 10,000 messages from two publishers while the subscriber's sidecar is killed with kill -9 and
restarted twice, and one publisher's sidecar once: every message arrives, per-publisher order holds, and the
duplicates (at-least-once) are counted and few."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SidecarProcess, assert_error, free_port, http, make_certs, wait_for
from tests.integration.messaging.procs import (
    RecordingApp,
    SseReader,
    knows_subscription,
    publish,
    read_sse,
    restart,
)

GOSSIP = {"profile": "local"}
BULK_PUBLISH = 50   # messages a bulk publish in the kill -9 test's bulkpub variant
FAST_RETRY = {"max_attempts": 3, "retry_backoff": {"base": "20ms", "max": "200ms"}, "delivery_timeout": "2s",
              "request_timeout": "1s"}


def node(name: str, tls: dict[str, str], services: list[dict[str, Any]], join: list[str], **extra: Any
         ) -> dict[str, Any]:
    return {"node": {"name": name, "cluster": "test"}, "tls": tls, "services": services,
            "gossip": {**GOSSIP, "join": join}, "logging": {"format": "json"}, **extra}


def first_seen_in_order(messages: list[dict[str, Any]], publisher: str) -> tuple[list[int], int]:
    """The publisher's sequence numbers in first-arrival order, and how many arrivals were duplicates."""
    seen: set[int] = set()
    order: list[int] = []
    duplicates = 0
    for m in messages:
        if m["payload"]["publisher"] != publisher:
            continue
        n = m["payload"]["n"]
        if n in seen:
            duplicates += 1
        else:
            seen.add(n)
            order.append(n)
    return order, duplicates


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("consumer", ["push", "bulk", "sse", "bulkpub"])
def test_ten_thousand_messages_survive_kill_9_of_subscriber_and_publisher(start_sidecar, tmp_path: Path, consumer: str
                                                                           ) -> None:  # type: ignore[no-untyped-def]
    """push: one message per POST to the subscribing app; bulk: the same subscription with bulk delivery; sse: an
    SSE reader on the subscriber's node, reconnecting with Last-Event-ID after each kill of its sidecar; bulkpub:
    push, each publisher publishing in bulks of BULK_PUBLISH (a bulk whose 202 a kill lost is published again)."""
    certs = make_certs(tmp_path / "certs", ["publisher", "billing"])
    app = RecordingApp("billing")
    reader: SseReader | None = None
    per_publisher = int(os.environ.get("MESSAGING_PER_PUBLISHER", "5000"))
    subscription: dict[str, Any] = {"topic": "orders", "path": "/events/orders"}
    if consumer == "bulk":
        subscription["bulk"] = {"enabled": True, "max_messages": 50}
    try:
        p2 = start_sidecar(node("p2", certs["publisher"], [], []), name="p2")
        seed = [p2.listeners["gossip"]]
        p1 = start_sidecar(node("p1", certs["publisher"], [], seed), name="p1")
        s = start_sidecar(node("s", certs["billing"], [{"name": "billing", "port": app.port}], seed,
                               subscriptions=[] if consumer == "sse" else [subscription]), name="s")
        if consumer == "sse":
            reader = SseReader(s, "orders")
            wait_for(reader.connected, 30, what="the SSE reader connected")
        received = reader.messages if reader is not None else app.messages
        for p in (p1, p2):
            wait_for(lambda p=p: knows_subscription(p, "orders", "s"), 30, what=f"{p.name} knows the subscription")

        progress = {"p1": 0, "p2": 0}
        errors: list[str] = []

        def publisher(process: SidecarProcess) -> None:
            n = 0
            failures = 0
            while n < per_publisher and failures < 2000:
                size = min(BULK_PUBLISH, per_publisher - n) if consumer == "bulkpub" else 1
                try:
                    if size == 1:
                        response = publish(process, "orders", {"publisher": process.name, "n": n}, timeout=10)
                    else:
                        response = http("POST", f"{process.api}/v1/publish/bulk/orders", [
                            {"type": "event", "payload": {"publisher": process.name, "n": k}}
                            for k in range(n, n + size)], timeout=10)
                except OSError:  # the sidecar is down (killed): try the same n again once it is back
                    failures += 1
                    wait_for(lambda: "api" in process.listeners, 60, interval=0.05, what="api back")
                    continue
                if response.status == 202:
                    n += size
                    progress[process.name] = n
                else:
                    failures += 1
            if n < per_publisher:
                errors.append(f"{process.name} stopped at {n}")

        threads = [threading.Thread(target=publisher, args=(p,), daemon=True) for p in (p1, p2)]
        for t in threads:
            t.start()
        # subscriber's sidecar: kill -9 and restart, twice; publisher p1: once
        for round_, at in enumerate((1000, 2500)):
            wait_for(lambda at=at: min(progress.values()) >= at, 90, what=f"{at} published")
            s.kill()
            wait_for(lambda at=at: min(progress.values()) >= at + 500, 60, what="more published while s is down")
            restart(s)
            if round_ == 0:
                wait_for(lambda: progress["p1"] >= 1500, 60, what="p1 at 1500")
                p1.kill()
                p1.listeners.clear()
                restart(p1)
        for t in threads:
            t.join(120)
        assert not errors and progress == {"p1": per_publisher, "p2": per_publisher}, (errors, progress)

        def complete() -> bool:
            got = received()
            return all(len(first_seen_in_order(got, p)[0]) == per_publisher for p in ("p1", "p2"))
        try:
            wait_for(complete, 120, interval=0.2, what="every message delivered")
        except AssertionError:
            got = received()
            counts = {p: len(first_seen_in_order(got, p)[0]) for p in ("p1", "p2")}
            states = {p.name: http("GET", p.admin + "/messaging").json() for p in (p1, p2)}
            problems = [line for p in (p1, p2) for line in p.lines if "Traceback" in line or "rror" in line][:20]
            raise AssertionError(f"delivered {counts}; publishers: {states}; log: {problems}") from None
        got = received()
        total_duplicates = 0
        for p in ("p1", "p2"):
            order, duplicates = first_seen_in_order(got, p)
            assert order == list(range(per_publisher)), f"{p}: per-publisher order broken"
            total_duplicates += duplicates
        # at least once: duplicates come only from the kills (an answer whose ack was not yet committed, and
        # a publish whose 202 was lost); a handful per kill, far below 1%
        assert total_duplicates <= 100, total_duplicates
        if consumer == "bulk":
            assert app.batches < len(got) / 2, "bulk delivery carries many messages per POST"
        if reader is not None:
            assert not app.messages() and reader.connections >= 3  # reconnected after each kill of s
            ids = [event_id for event_id, _ in reader.events]
            assert ids == sorted(set(ids)), "an SSE event id seen twice, or out of order"
        print(f"10,000 messages ({consumer}): {len(got)} deliveries, {total_duplicates} duplicates")
    finally:
        if reader is not None:
            reader.close()
        app.close()


@pytest.mark.timeout(120)
def test_dead_letters_sse_resume_competing_consumers_errors_and_backpressure(start_sidecar, tmp_path: Path
                                                                             ) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["publisher", "checkout", "billing", "watcher", "ghost"])
    # the billing node that survives the kill below also hosts "ghost" (registered later through its API): either may
    # be the one, so both hold its certificate (one certificate per hosted service)
    billing_tls = {**certs["billing"],
              "identities": [{"service": "ghost", "cert": certs["ghost"]["cert"], "key": certs["ghost"]["key"]}]}

    def answer(message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if message["type"] == "poison":
            return 200, {"status": "DROP"}
        if message["type"] == "flaky":
            return 503, {"error": "not now"}
        return 200, {"echo": message["payload"], "from": message["service"]}

    one, two = RecordingApp("one", answer), RecordingApp("two", answer)
    try:
        p = start_sidecar(node("p", certs["checkout"], [{"name": "checkout", "port": 1, "check": {"ttl": "1h"}}],
                               [], messaging=FAST_RETRY), name="p")
        seed = [p.listeners["gossip"]]
        sub = [{"topic": "orders", "path": "/events"}]
        sidecars = {
            "b1": start_sidecar(node("b1", billing_tls, [{"name": "billing", "port": one.port}], seed,
                                     subscriptions=sub, messaging=FAST_RETRY), name="b1"),
            "b2": start_sidecar(node("b2", billing_tls, [{"name": "billing", "port": two.port}], seed,
                                     subscriptions=sub, messaging=FAST_RETRY), name="b2")}
        w = start_sidecar(node("w", certs["watcher"], [], seed), name="w")
        wait_for(lambda: knows_subscription(p, "orders", "b1") and knows_subscription(p, "orders", "b2"), 30,
                 what="both subscriptions at p")

        # request-response, and its errors
        wait_for(lambda: http("POST", p.api + "/v1/messages/billing", {"type": "q", "payload": 1}).status == 200, 20,
                 what="billing reachable from p")
        reply = http("POST", p.api + "/v1/messages/billing", {"type": "q", "payload": {"x": 1}})
        assert reply.json() == {"echo": {"x": 1}, "from": "checkout"}
        assert_error(http("POST", p.api + "/v1/messages/nowhere", {"type": "q", "payload": 1}), 404, "NOT_FOUND")
        assert_error(http("POST", p.api + "/v1/messages/billing", {"payload": 1}), 400, "INVALID_ARGUMENT")

        # competing consumers: p's stream goes to one instance of billing (its node's sidecar delivers it)
        for i in range(40):
            assert publish(p, "orders", i).status == 202
        wait_for(lambda: len([m for m in one.messages() + two.messages() if m["type"] == "event"]) >= 40, 30,
                 what="40 deliveries")
        events = [m for m in one.messages() + two.messages() if m["type"] == "event"]
        assert sorted(m["payload"] for m in events) == list(range(40))
        # the instance that got most goes away: the same stream continues on the other one
        counts = {name: len([m for m in app.messages() if m["type"] == "event"]) for name, app in
                  (("b1", one), ("b2", two))}
        busier = max(counts, key=lambda k: counts[k])
        survivor_app = two if busier == "b1" else one
        sidecars[busier].terminate()
        before = len([m for m in survivor_app.messages() if m["type"] == "event"])
        for i in range(40, 50):
            assert publish(p, "orders", i).status == 202
        wait_for(lambda: len([m for m in survivor_app.messages() if m["type"] == "event"]) >= before + 10, 30,
                 what="the other instance takes over")
        events = [m for m in one.messages() + two.messages() if m["type"] == "event"]
        assert sorted(m["payload"] for m in events) == list(range(50))
        b1 = sidecars["b2" if busier == "b1" else "b1"]

        # DROP and max attempts → dead letters on the admin port of the subscriber's sidecar (which delivers to its
        # app); replay and purge are POST-only
        assert publish(p, "orders", None, "poison").status == 202
        assert publish(p, "orders", None, "flaky").status == 202
        listed = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(
            http("GET", b1.admin + "/deadletters").json()["deadLetters"]), 30, what="2 dead letters")
        reasons = {d["message"]["type"]: (d["reason"], d["attempts"]) for d in listed}
        assert reasons == {"poison": ("dropped", 0), "flaky": ("max-attempts", 3)}
        assert http("GET", b1.admin + "/deadletters/purge").status == 405
        assert http("POST", b1.admin + "/deadletters/purge", {"ids": [listed[0]["id"]]}).json() == {"purged": 1}
        assert http("GET", p.admin + "/deadletters").json()["total"] == 0

        # SSE on w, resumed with Last-Event-ID; the reader's own deadline covers the wait for p to learn of its
        # subscription (up to 30 s) as well as the delivery (20 s)
        reader: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: reader.setdefault("events", read_sse(
            w.api + "/v1/subscribe/news", 4, timeout=50)), daemon=True)
        thread.start()
        wait_for(lambda: knows_subscription(p, "news", "w"), 30, what="stream subscription at p")
        for i in range(4):
            assert publish(p, "news", i).status == 202
        thread.join(20)
        assert "events" in reader, "the SSE reader on w got no 4 events within 20 s of the publishes"
        first = reader["events"]
        assert [e["payload"] for _, e in first] == [0, 1, 2, 3]
        for i in range(4, 8):
            assert publish(p, "news", i).status == 202
        resumed = read_sse(w.api + "/v1/subscribe/news", 5, last_id=first[2][0])
        assert [e["payload"] for _, e in resumed] == [3, 4, 5, 6, 7]

        # an unreachable subscriber (its node killed): messages wait; beyond retention.age they are dead-lettered
        # and reported; beyond queue.max_pending publish answers 429
        q = start_sidecar(node("q", certs["publisher"], [], seed, messaging={
            **FAST_RETRY, "queue": {"max_pending": 10}, "retention": {"age": "2s", "bytes": 1 << 20}}), name="q")
        # "ghost" subscribes on b1, then b1 is killed: q's stream has nowhere to go and its outbox fills
        assert http("PUT", b1.api + "/v1/services", {"name": "ghost", "port": free_port()}).status == 200
        b1_sub = {"topic": "stuck", "path": "/stuck", "service": "ghost"}
        assert http("POST", b1.api + "/v1/subscriptions", b1_sub).status == 201
        wait_for(lambda: knows_subscription(q, "stuck", b1.name), 30, what="q knows stuck")
        b1.kill()
        statuses = [publish(q, "stuck", i).status for i in range(12)]
        assert statuses[:10] == [202] * 10 and statuses[10:] == [429, 429], statuses
        assert_error(publish(q, "stuck", 99), 429, "RESOURCE_EXHAUSTED")
        wait_for(lambda: http("GET", q.admin + "/deadletters").json()["total"] >= 10, 20, what="retention-age")
        assert {d["reason"] for d in http("GET", q.admin + "/deadletters").json()["deadLetters"]} == {"retention-age"}
        q.wait_log("fell out of retention", 5)
        assert publish(q, "stuck", 100).status == 202  # room again
    finally:
        for app in (one, two):
            with contextlib.suppress(OSError):
                app.close()
