"""Messaging across sidecars in one event loop: real sockets, mTLS between data planes, SQLite on disk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.config.model import (
    BulkDeliveryConfig,
    MessagingQueue,
    MessagingRetention,
    ServiceConfig,
    SubscriptionConfig,
)
from sidecar.config.values import Duration
from sidecar.errors import Unavailable
from tests.harness import wait_for_async
from tests.integration.messaging.inproc import App, Mesh, get, messaging_config, post


def run(test: Callable[[Mesh], Awaitable[None]], tmp: Path, identities: list[str], timeout: float = 30.0) -> None:
    async def main() -> None:
        mesh = Mesh(tmp, identities)
        try:
            async with asyncio.timeout(timeout):
                await test(mesh)
        finally:
            await mesh.close()
    asyncio.run(main())


def service(name: str, app: App, messages_path: str = "/messages") -> ServiceConfig:
    return ServiceConfig(name=name, port=app.port, messages_path=messages_path)


# ------------------------------------------------------------------------------------------ request-response


def test_request_response_and_its_errors(tmp_path: Path) -> None:
    async def slow(message: dict[str, Any]) -> web.Response:
        if message["type"] == "slow":
            await asyncio.sleep(3)
        return web.json_response({"echo": message["payload"], "from": message["service"]}, status=201)

    async def test(mesh: Mesh) -> None:
        app = await App("payment", slow).start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "payment", [service("payment", app, "/inbox")])
        a = mesh.nodes["a"]
        status, headers, body = await post(a.api_url + "/v1/messages/payment",
                                           {"type": "pay", "payload": {"amount": 100}, "metadata": {"k": "v"}})
        assert status == 201 and body == {"echo": {"amount": 100}, "from": "checkout"}
        got = app.received[-1]
        assert got["type"] == "pay" and got["service"] == "checkout" and got["metadata"] == {"k": "v"}
        assert set(got) == {"id", "service", "timestamp", "type", "payload", "metadata"}
        assert app.headers[-1]["x-sidecar-caller"] == "spiffe://mesh.local/service/checkout"
        # the sender may be named by header, only among this node's services
        status, _, body = await post(a.api_url + "/v1/messages/payment", {"type": "t", "payload": 1},
                                     {"x-sidecar-service": "nope"})
        assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
        # malformed bodies
        for bad in ({"payload": 1}, {"type": "", "payload": 1}, {"type": "t"}, {"type": "t", "payload": 1,
                                                                                 "metadata": [1]}):
            status, headers, body = await post(a.api_url + "/v1/messages/payment", bad)
            assert status == 400 and headers["x-sidecar-error"] == "INVALID_ARGUMENT", bad
        # no such service: 404; timeout: 504
        status, headers, body = await post(a.api_url + "/v1/messages/nowhere", {"type": "t", "payload": 1})
        assert status == 404 and headers["x-sidecar-error"] == "NOT_FOUND"
        status, headers, body = await post(a.api_url + "/v1/messages/payment", {"type": "slow", "payload": 1})
        assert status == 504 and headers["x-sidecar-error"] == "DEADLINE_EXCEEDED"
        # an instance whose app is gone: the mesh's 503 comes back as the mesh said it
        await app.stop()
        status, headers, body = await post(a.api_url + "/v1/messages/payment", {"type": "t", "payload": 1})
        assert status == 503 and headers["x-sidecar-error"] == "UNAVAILABLE", body

    run(test, tmp_path, ["checkout", "payment"])


# ------------------------------------------------------------------------------------------ publish-subscribe


def test_publish_order_and_competing_consumers(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        one, two = await App("one").start(), await App("two").start()
        subscription = [SubscriptionConfig(topic="orders", path="/events")]
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b1", "billing", [service("billing", one)], subscription)
        await mesh.add("b2", "billing", [service("billing", two)], subscription)
        a = mesh.nodes["a"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known to a")
        ids = []
        for i in range(60):
            status, _, body = await post(a.api_url + "/v1/publish/orders", {"type": "order", "payload": i})
            assert status == 202, body
            ids.append(body["id"])
        await wait_for_async(lambda: len(one.received) + len(two.received) >= 60, what="60 deliveries")
        got = one.received + two.received
        assert sorted(m["id"] for m in got) == sorted(ids)     # each message to one instance, none twice
        # a's stream goes to one billing node's sidecar, which delivers it to its app in publish order
        chosen = one if one.received else two
        assert [m["payload"] for m in chosen.received] == list(range(60))
        assert chosen.headers[0]["x-sidecar-topic"] == "orders"
        await wait_for_async(lambda: a.messaging.store is not None and a.messaging.store.pending == 0,
                             what="a's outbox trimmed")
        status = await get(a.admin_url + "/messaging")
        assert status["counters"]["delivered"] == 60
        receiver = mesh.nodes["b1" if chosen is one else "b2"]
        status = await get(receiver.admin_url + "/messaging")
        assert status["counters"]["inbox_received"] == 60 and status["counters"]["delivered"] == 60
        assert status["counters"]["push_batches"] <= 60   # many messages a request when they queue up

    run(test, tmp_path, ["checkout", "billing"])


def test_drop_and_max_attempts_land_in_dead_letters_then_replay_and_purge(tmp_path: Path) -> None:
    fixed = {"value": False}

    async def picky(message: dict[str, Any]) -> web.Response:
        if message["type"] == "poison":
            return web.json_response({"status": "DROP"})
        if message["type"] == "flaky" and not fixed["value"]:
            return web.json_response({"error": "try later"}, status=500)
        return web.json_response({})

    async def test(mesh: Mesh) -> None:
        app = await App("sub", picky).start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")])
        a, b = mesh.nodes["a"], mesh.nodes["b"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        for kind in ("poison", "flaky", "fine"):
            status, _, _ = await post(a.api_url + "/v1/publish/t", {"type": kind, "payload": None})
            assert status == 202
        # the subscriber's sidecar delivers to its app: the letters are its own
        letters = await wait_for_async(lambda: b.messaging.store and b.messaging.store.dead_letter_count == 2,
                                   what="two dead letters")
        assert letters
        listed = (await get(b.admin_url + "/deadletters"))["deadLetters"]
        by_type = {d["message"]["type"]: d for d in listed}
        assert by_type["poison"]["reason"] == "dropped" and by_type["poison"]["attempts"] == 0
        assert by_type["flaky"]["reason"] == "max-attempts" and by_type["flaky"]["attempts"] == 3
        assert "HTTP 500" in by_type["flaky"]["lastError"] and by_type["flaky"]["subscriber"] == "billing"
        assert [m["type"] for m in app.received].count("flaky") == 3
        # replay one by id once the app is fixed; the other is purged
        fixed["value"] = True
        status, _, body = await post(b.admin_url + "/deadletters/replay", {"ids": [by_type["flaky"]["id"]]})
        assert status == 200 and body == {"replayed": 1}
        await wait_for_async(lambda: [m["type"] for m in app.received].count("flaky") == 4, what="replayed delivery")
        status, _, body = await post(b.admin_url + "/deadletters/purge", {})
        assert status == 400  # no accidental purge-all
        status, _, body = await post(b.admin_url + "/deadletters/purge", {"all": True})
        assert body == {"purged": 1}
        assert (await get(b.admin_url + "/deadletters"))["deadLetters"] == []

    run(test, tmp_path, ["checkout", "billing"])


def test_a_subscriber_that_is_down_gets_everything_on_return(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")])
        a = mesh.nodes["a"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        await mesh.stop_node("b")
        for i in range(30):
            assert (await post(a.api_url + "/v1/publish/t", {"type": "x", "payload": i}))[0] == 202
        # the stream has taken up the first message and decided it cannot deliver it (its subscriber's node is
        # gone), as the admin port reports: only after that decision is "nothing arrived" a result
        async def holding() -> bool:
            streams = (await get(a.admin_url + "/messaging"))["streams"]
            return any(s["topic"] == "t" and s["inFlight"] is not None and s["state"] == "waiting" for s in streams)

        await wait_for_async(holding, what="the stream holding a message, waiting for its subscriber")
        assert app.received == []
        assert a.messaging.store is not None and a.messaging.store.pending == 30
        # the publisher restarts too, from its data_dir, while the subscriber is still away
        await mesh.stop_node("a")
        await mesh.restart_node("a")
        await mesh.restart_node("b")
        await wait_for_async(lambda: len(app.received) >= 30, what="30 deliveries after the return")
        assert [m["payload"] for m in app.received] == list(range(30))

    run(test, tmp_path, ["checkout", "billing"])


def test_retention_overflow_is_dead_lettered_and_reported(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        small = messaging_config(retention=MessagingRetention(age=Duration(3600), bytes=3000))
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)], messaging=small)
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")])
        a = mesh.nodes["a"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        await mesh.stop_node("b")
        for i in range(40):
            assert (await post(a.api_url + "/v1/publish/t", {"type": "x", "payload": "p" * 100 + str(i)}))[0] == 202
        store = a.messaging.store
        assert store is not None and store.pending_bytes <= 3000
        evicted = a.messaging.counters["dead_lettered:retention-bytes"]
        assert evicted > 0 and evicted + store.pending == 40
        listed = (await get(a.admin_url + "/deadletters?limit=1000"))["deadLetters"]
        assert len(listed) == evicted and {d["reason"] for d in listed} == {"retention-bytes"}
        remaining = store.pending
        await mesh.restart_node("b")
        await wait_for_async(lambda: len(app.received) >= remaining and store.pending == 0, what="rest delivered")
        # what arrived is the newest part, in order, and together with the dead letters it is everything
        payloads = [m["payload"] for m in app.received]
        assert payloads == sorted(payloads, key=lambda p: int(p[100:]))
        assert len(payloads) + evicted == 40

    run(test, tmp_path, ["checkout", "billing"])


def test_backpressure_answers_429_when_the_outbox_is_full(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        tight = messaging_config(queue=MessagingQueue(max_pending=10))
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)], messaging=tight)
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")])
        a = mesh.nodes["a"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        await mesh.stop_node("b")
        statuses = [(await post(a.api_url + "/v1/publish/t", {"type": "x", "payload": i})) for i in range(15)]
        assert [s for s, _, _ in statuses[:10]] == [202] * 10
        status, headers, body = statuses[10]
        assert status == 429 and headers["x-sidecar-error"] == "RESOURCE_EXHAUSTED", body
        assert a.messaging.counters["publish_rejected"] == 5

    run(test, tmp_path, ["checkout", "billing"])


def test_a_full_subscriber_sidecar_refuses_batches_and_the_publishers_outbox_holds_them(tmp_path: Path) -> None:
    """Backpressure end to end: the subscriber's sidecar stores at most messaging.queue.max_pending; beyond, it
    refuses batches (429) and the publisher keeps them (its stream waits, uncounted), so nothing is lost and the
    order holds once the app catches up."""
    held = asyncio.Event()

    async def slow(message: dict[str, Any]) -> web.Response:
        await held.wait()
        return web.json_response({})

    async def test(mesh: Mesh) -> None:
        app = await App("sub", slow).start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")],
                       # the app holds its first delivery until the test lets it go: no timeout may end it first
                       # (a timed-out attempt is retried, and dead-lettered after max_attempts)
                       messaging=messaging_config(queue=MessagingQueue(max_pending=5), delivery_timeout=Duration(60)))
        a, b = mesh.nodes["a"], mesh.nodes["b"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        for i in range(20):
            assert (await post(a.api_url + "/v1/publish/t", {"type": "x", "payload": i}))[0] == 202
        await wait_for_async(lambda: b.messaging.counters["inbox_refused"] > 0, what="b refusing batches")
        assert a.messaging.store is not None and a.messaging.store.pending > 0   # the rest waits at a
        assert b.messaging.store is not None and b.messaging.store.pending < 20
        assert a.messaging.counters["dead_lettered:max-attempts"] == 0
        held.set()
        await wait_for_async(lambda: len(app.received) >= 20, what="everything delivered")
        assert [m["payload"] for m in app.received] == list(range(20))

    run(test, tmp_path, ["checkout", "billing"])


# ------------------------------------------------------------------------------------------ streaming


async def read_events(url: str, count: int, last_id: int | None = None, timeout: float = 10.0
                      ) -> list[tuple[int, dict[str, Any]]]:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        event_id: int | None = None
        async for line in response.content:
            text = line.decode().rstrip("\n")
            if text.startswith("id: "):
                event_id = int(text[4:])
            elif text.startswith("data: "):
                assert event_id is not None
                events.append((event_id, json.loads(text[6:])))
                if len(events) >= count:
                    break
    return events


def test_sse_stream_resumes_with_last_event_id(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("c", "watcher", [ServiceConfig(name="watcher", port=1)])
        a, c = mesh.nodes["a"], mesh.nodes["c"]
        reader = asyncio.create_task(read_events(c.api_url + "/v1/subscribe/news", 5))
        await wait_for_async(lambda: ("news", "node:c") in a.messaging.book.wanted(), what="stream subscription at a")
        for i in range(5):
            assert (await post(a.api_url + "/v1/publish/news", {"type": "n", "payload": i}))[0] == 202
        first = await reader
        assert [e["payload"] for _, e in first] == list(range(5))
        ids = [i for i, _ in first]
        assert ids == sorted(ids) and len(set(ids)) == 5
        # the reader left: so does c's stream subscription; more messages are published meanwhile, and wait at a
        await wait_for_async(lambda: ("news", "node:c") not in a.messaging.book.wanted(), what="a forgets the reader")
        for i in range(5, 10):
            assert (await post(a.api_url + "/v1/publish/news", {"type": "n", "payload": i}))[0] == 202
        # a reconnect from the 3rd event gets the rest: the log's, then what waited at a
        resumed = await read_events(c.api_url + "/v1/subscribe/news", 7, last_id=ids[2])
        assert [e["payload"] for _, e in resumed] == list(range(3, 10))
        # a publish on the reader's own node reaches it too, without a network hop
        # read on from the last event seen, so the publish is caught whether it lands before or after the
        # reader's stream starts its tail
        reader = asyncio.create_task(read_events(c.api_url + "/v1/subscribe/news", 1, last_id=resumed[-1][0]))
        assert (await post(c.api_url + "/v1/publish/news", {"type": "n", "payload": "local"}))[0] == 202
        assert [e["payload"] for _, e in await reader] == ["local"]

    run(test, tmp_path, ["checkout", "watcher"])


def test_a_node_stream_carries_many_messages_per_request_stored_before_the_answer(tmp_path: Path) -> None:
    """Publishes that queue up while a node's readers are away go to that node in batches when they are back: a
    few requests, each stored (one commit, one fsync) before its answer, every event in publish order."""
    async def test(mesh: Mesh) -> None:
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("c", "watcher", [ServiceConfig(name="watcher", port=1)])
        a, c = mesh.nodes["a"], mesh.nodes["c"]
        first = await read_events_when_wanted(a, c, 1)
        await wait_for_async(lambda: ("news", "node:c") not in a.messaging.book.wanted(), what="a forgets the reader")
        for i in range(300):  # wait at a while c has no reader
            assert (await post(a.api_url + "/v1/publish/news", {"type": "n", "payload": i}))[0] == 202
        store = c.messaging.store
        assert store is not None
        fsyncs, stored = store.fsyncs, store.durable_messages
        events = await read_events(c.api_url + "/v1/subscribe/news", 300, last_id=first[-1][0])
        assert [e["payload"] for _, e in events] == list(range(300))
        batches = c.messaging.counters["stream_batches"]
        assert 2 <= batches <= 10, batches  # 300 messages in pages of up to 256
        assert store.durable_messages - stored == 300 and store.fsyncs - fsyncs <= 3 * batches

    async def read_events_when_wanted(a: Any, c: Any, count: int) -> list[tuple[int, dict[str, Any]]]:
        reader = asyncio.create_task(read_events(c.api_url + "/v1/subscribe/news", count))
        await wait_for_async(lambda: ("news", "node:c") in a.messaging.book.wanted(), what="stream subscription at a")
        assert (await post(a.api_url + "/v1/publish/news", {"type": "n", "payload": "first"}))[0] == 202
        return await reader

    run(test, tmp_path, ["checkout", "watcher"])


def test_internal_delivery_path_needs_the_inbound(tmp_path: Path) -> None:
    """The receiver behind /.sidecar/ refuses anything that did not come through the mTLS inbound."""
    async def test(mesh: Mesh) -> None:
        node = await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        target = node.messaging.receiver.target
        assert target is not None
        host, port = target.address
        status, headers, _ = await post(f"http://{host}:{port}/.sidecar/v1/deliver/t",
                                        {"id": "x", "service": "s", "timestamp": 1, "type": "t", "payload": 1},
                                        {"x-sidecar-internal": "guess"})
        assert status == 401 and headers["x-sidecar-error"] == "UNAUTHENTICATED"

    run(test, tmp_path, ["checkout"])


@pytest.mark.parametrize("topic", ["bad topic", "-x", "a" * 201])
def test_publish_refuses_bad_topics(tmp_path: Path, topic: str) -> None:
    async def test(mesh: Mesh) -> None:
        node = await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        status, headers, _ = await post(node.api_url + "/v1/publish/" + topic.replace(" ", "%20"),
                                        {"type": "t", "payload": 1})
        assert status == 400 and headers["x-sidecar-error"] == "INVALID_ARGUMENT"

    run(test, tmp_path, ["checkout"])


def test_bulk_delivery_statuses_per_message_in_order(tmp_path: Path) -> None:
    """A subscription with bulk delivery gets arrays of ServiceMessages in publish order; each message settles by
    its own status: SUCCESS acks, DROP dead-letters, RETRY (or no status) delivers it again, before anything
    published after its batch."""
    release = asyncio.Event()
    answered: list[list[int]] = []   # payloads acked, per POST

    async def bulk(batch: Any) -> web.Response:
        assert isinstance(batch, list)
        if len(answered) == 0:
            await release.wait()  # the first POST is held while the rest is published: later POSTs carry many
        statuses = []
        acked = []
        for m in batch:
            seen = sum(1 for earlier in app.received[:-1] for e in earlier if e["id"] == m["id"])
            if m["type"] == "poison":
                statuses.append({"id": m["id"], "status": "DROP"})
            elif m["type"] == "flaky" and seen == 0:
                statuses.append({"id": m["id"], "status": "RETRY"})
            elif m["type"] == "silent" and seen == 0:
                continue  # left out: retried
            else:
                statuses.append({"id": m["id"], "status": "SUCCESS"})
                acked.append(m["payload"])
        answered.append(acked)
        return web.json_response({"statuses": statuses})

    async def test(mesh: Mesh) -> None:
        nonlocal app
        app = await App("sub", bulk).start()
        bulk_sub = SubscriptionConfig(topic="t", path="/bulk", bulk=BulkDeliveryConfig(enabled=True, max_messages=8))
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)], [bulk_sub])
        a, b = mesh.nodes["a"], mesh.nodes["b"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known")
        kinds = {5: "poison", 11: "flaky", 17: "silent"}
        for i in range(30):
            status, _, _ = await post(a.api_url + "/v1/publish/t", {"type": kinds.get(i, "fine"), "payload": i})
            assert status == 202
        release.set()
        # the subscriber's sidecar delivers to its app: settling, letters and counters are its own
        await wait_for_async(lambda: a.messaging.store is not None and a.messaging.store.pending == 0
                             and b.messaging.store is not None and b.messaging.store.pending == 0,
                             what="every message stored at b and settled there")
        sizes = [len(batch) for batch in app.received]
        assert max(sizes) == 8 and all(1 <= n <= 8 for n in sizes)  # batches, capped at max_messages
        assert [int(h["x-sidecar-bulk"]) for h in app.headers] == sizes
        first_seen: list[int] = []
        for batch in app.received:
            first_seen += [m["payload"] for m in batch if m["payload"] not in first_seen]
        assert first_seen == list(range(30))  # publish order, batch after batch
        acked = [p for batch in answered for p in batch]
        assert sorted(acked) == [i for i in range(30) if i != 5] and len(acked) == 29  # each acked once
        for retried in (11, 17):  # again, alone with the other retried ones, before anything after its batch
            again = next(n for n, batch in enumerate(answered) if retried in batch)
            first = next(n for n, batch in enumerate(app.received) if retried in [m["payload"] for m in batch])
            later = max(m["payload"] for m in app.received[first])
            assert again == first + 1 and all(p <= later for p in answered[again]), (retried, answered)
        letters = (await get(b.admin_url + "/deadletters"))["deadLetters"]
        assert [(d["message"]["payload"], d["reason"]) for d in letters] == [(5, "dropped")]
        status = await get(b.admin_url + "/messaging")
        assert status["counters"]["delivered"] == 29 and status["counters"]["retries"] == 2

    app: App
    run(test, tmp_path, ["checkout", "billing"])


def test_bulk_subscription_through_the_api_spreads_with_its_size(tmp_path: Path) -> None:
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)])
        b, a = mesh.nodes["b"], mesh.nodes["a"]
        status, _, body = await post(b.api_url + "/v1/subscriptions",
                                     {"topic": "t", "path": "/bulk", "bulk": {"enabled": True, "maxMessages": 50}})
        assert status == 201 and body["bulk"] == {"enabled": True, "maxMessages": 50}, body
        for bad in ({"enabled": True, "maxMessages": 0}, {"enabled": "yes"}, {"size": 3}, [1]):
            status, headers, body = await post(b.api_url + "/v1/subscriptions",
                                               {"topic": "u", "path": "/x", "bulk": bad})
            assert status == 400 and headers["x-sidecar-error"] == "INVALID_ARGUMENT", (bad, body)
            assert "bulk" in body["error"]["message"]
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known to a")
        assert [w.bulk for w in a.messaging.book.wanted().values()] == [50]
        status, _, _ = await post(a.api_url + "/v1/publish/t", {"type": "x", "payload": 1})
        await wait_for_async(lambda: app.received, what="delivered")
        assert isinstance(app.received[0], list) and app.received[0][0]["payload"] == 1

    run(test, tmp_path, ["checkout", "billing"])


def test_a_push_batch_is_stored_only_after_the_one_before_it_and_a_repeat_is_a_duplicate(tmp_path: Path) -> None:
    """The subscriber's inbox, as a publisher's window of batches reaches it: a batch that overtakes the one before
    it (its ``after``) waits for it and is stored after it; one whose predecessor never comes is refused with
    nothing stored; what comes again at or below the mark is counted a duplicate and delivered once."""
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="t", path="/in")])
        inbox = mesh.nodes["b"].messaging.inbox

        def items(*seqs: int) -> list[tuple[int, str, bytes]]:
            return [(seq, f"m{seq}", json.dumps({"id": f"m{seq}", "service": "checkout", "timestamp": 0,
                                                 "type": "x", "payload": seq}).encode()) for seq in seqs]
        second = asyncio.ensure_future(inbox.receive("checkout@a.e1", "t", "billing", items(7, 9), after=4))
        key = ("checkout@a.e1", "t", "billing")
        await wait_for_async(lambda: key in inbox._arrived, what="the second batch waiting for the first")
        assert not second.done()
        await inbox.receive("checkout@a.e1", "t", "billing", items(2, 4))
        assert (await second).stored == 2
        again = await inbox.receive("checkout@a.e1", "t", "billing", items(4, 7, 9, 11))
        assert (again.stored, again.duplicates) == (1, 3)
        with pytest.raises(Unavailable):
            await inbox.receive("checkout@a.e1", "t", "billing", items(20), after=15)   # 15 never comes
        store = mesh.nodes["b"].messaging.store
        assert store is not None
        await wait_for_async(lambda: len(app.received) >= 5 and store.pending == 0, what="the inbox delivered")
        assert [m["payload"] for m in app.received] == [2, 4, 7, 9, 11]

    run(test, tmp_path, ["checkout", "billing"])


def test_a_window_whose_batches_were_refused_is_settled_in_order_before_a_new_run_and_loses_nothing(
        tmp_path: Path) -> None:
    """The publisher's window toward another sidecar's inbox, with a backlog: every batch of a full window is
    refused (as while the subscriber's sidecar restarts), the oldest answering last. It goes again on its own and is
    stored; the ones after it must be settled in turn before the next batch goes out without an ``after``. Sent
    first, that batch would move the inbox's mark past them: they would be acknowledged as duplicates, never
    stored."""
    async def test(mesh: Mesh) -> None:
        app = await App("sub").start()
        await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
        await mesh.add("b", "billing", [service("billing", app)], [SubscriptionConfig(topic="orders", path="/in")])
        a, inbox = mesh.nodes["a"], mesh.nodes["b"].messaging.inbox
        await wait_for_async(lambda: a.messaging.book.wanted(), what="subscription known to a")
        receive = inbox.receive
        calls: list[tuple[int, int | None]] = []
        published, window_sent = asyncio.Event(), asyncio.Event()
        outage: list[int] = []   # the number of the call it began with
        refused = 4              # a full window: 4 batches of 256 (courier.NODE_BATCH, streams.WINDOW_MESSAGES)

        async def down_for_a_window(origin: str, topic: str, service: str, items: list[tuple[int, str, bytes]],
                                    after: int | None = None) -> Any:
            calls.append((items[0][0], after))
            n = len(calls)
            if not outage and published.is_set() and after is not None:
                outage.append(n)   # a batch in the middle of a run, with the backlog behind it
            if outage and outage[0] <= n < outage[0] + refused:
                if n == outage[0] + refused - 1:
                    window_sent.set()
                if n == outage[0]:
                    await asyncio.wait_for(window_sent.wait(), 10)   # it answers once the window is full
                raise Unavailable("the subscriber is restarting")
            return await receive(origin, topic, service, items, after)
        inbox.receive = down_for_a_window   # type: ignore[method-assign]
        total = 4000
        for start in range(0, total, 1000):
            status, _, body = await post(a.api_url + "/v1/publish/bulk/orders",
                                         [{"type": "order", "payload": n} for n in range(start, start + 1000)])
            assert status == 202, body
        published.set()
        await wait_for_async(lambda: a.messaging.store is not None and a.messaging.store.pending == 0, 40,
                             what="a's outbox delivered")
        assert outage and window_sent.is_set(), calls   # the window was refused whole
        await wait_for_async(lambda: len({m["payload"] for m in app.received}) == total, 10,
                             what=f"all {total} at the app (got {len({m['payload'] for m in app.received})})")
        first_seen = list(dict.fromkeys(m["payload"] for m in app.received))
        assert first_seen == list(range(total))

    run(test, tmp_path, ["checkout", "billing"], timeout=90.0)
