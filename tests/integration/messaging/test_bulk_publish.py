"""Bulk publish (``POST /v1/publish/bulk/TOPIC``, an array of message bodies) between real `sidecar run` processes
over mTLS and gossip: one order across bulk and single publishes of a publisher, a 202'd bulk kept through kill -9
of the publishing sidecar, refused whole when the outbox cannot take all of it (429) or when one entry is bad (400),
and the topic's scope checked (403). The app API's own protections (token, Host, Origin) are in
tests/integration/security/test_app_api_access.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import InvalidArgumentError, ResourceExhaustedError, SidecarClient
from tests.harness import SidecarProcess, assert_error, http, make_certs, wait_for
from tests.integration.messaging.procs import RecordingApp, knows_subscription, publish, restart
from tests.integration.messaging.test_processes import first_seen_in_order, node

SUBSCRIPTION = {"topic": "orders", "path": "/events/orders"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def bulk(process: SidecarProcess, numbers: range, topic: str = "orders", headers: dict[str, str] | None = None
         ) -> Any:
    """A bulk publish of ``{"n": N}`` for each N of ``numbers``, in order."""
    return http("POST", f"{process.api}/v1/publish/bulk/{topic}",
                [{"type": "event", "payload": {"publisher": process.name, "n": n}} for n in numbers], headers)


def single(process: SidecarProcess, n: int, topic: str = "orders") -> Any:
    return publish(process, topic, {"publisher": process.name, "n": n})


def outbox(process: SidecarProcess) -> dict[str, Any]:
    """The publishing sidecar's messaging state: ``pending`` (its outbox), ``counters``."""
    return dict(http("GET", process.admin + "/messaging").json())


def delivered(app: RecordingApp, publisher: str, count: int) -> list[int]:
    """The publisher's numbers as first delivered, once ``count`` have been (else the test fails)."""
    wait_for(lambda: len(first_seen_in_order(app.messages(), publisher)[0]) >= count, 60, interval=0.1,
             what=f"{count} messages of {publisher} delivered")
    return first_seen_in_order(app.messages(), publisher)[0]


@pytest.mark.timeout(240)
def test_bulk_and_single_publishes_keep_one_order_survive_kill_9_and_a_full_outbox_refuses_a_bulk_whole(
        start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["publisher", "billing"])
    app = RecordingApp("billing")
    try:
        # g: a seed that stays up while p and s are killed, so each rejoins through it
        g = start_sidecar(node("g", certs["publisher"], [], []), name="g")
        seed = [g.listeners["gossip"]]
        p = start_sidecar(node("p", certs["publisher"], [], seed, messaging={"queue": {"max_pending": 400}}),
                          name="p")
        s = start_sidecar(node("s", certs["billing"], [{"name": "billing", "port": app.port}], seed,
                               subscriptions=[SUBSCRIPTION]), name="s")
        wait_for(lambda: knows_subscription(p, "orders", "s"), 30, what="p knows the subscription")

        # one publisher's order across single and bulk publishes, each sent once the one before it is answered
        n = 0
        for size in (1, 100, 1, 1, 37, 100, 1):
            answer = single(p, n) if size == 1 else bulk(p, range(n, n + size))
            assert answer.status == 202, answer
            if size > 1:   # the ids, in the array's order
                ids = answer.json()["ids"]
                assert len(ids) == size == len(set(ids))
            n += size

        async def through_the_client() -> list[str]:
            async with SidecarClient(p.api) as client:
                return await client.publish_many("orders", [
                    {"type": "event", "payload": {"publisher": "p", "n": k}, "metadata": {"k": str(k)}}
                    for k in range(n, n + 10)])
        client_ids = asyncio.run(asyncio.wait_for(through_the_client(), 30))
        n += 10
        traced = bulk(p, range(n, n + 3), headers={"traceparent": TRACEPARENT})
        assert traced.status == 202, traced
        n += 3
        assert delivered(app, "p", n) == list(range(n))
        by_n = {m["payload"]["n"]: m for m in app.messages()}
        assert [by_n[k]["id"] for k in range(n - 13, n - 3)] == client_ids
        assert by_n[n - 13]["metadata"] == {"k": str(n - 13)} and by_n[n - 13]["service"] == "publisher"
        # the trace context goes into each message of the bulk, as for a single publish
        assert all(by_n[k]["metadata"]["traceparent"] == TRACEPARENT for k in range(n - 3, n))

        wait_for(lambda: outbox(p)["pending"] == 0, 30, what="p's outbox settled")
        # a 202'd bulk is on disk: the subscriber is away, the publisher is killed right after the 202, and every
        # message of the bulk is in its outbox when it comes back
        s.kill()
        answer = bulk(p, range(n, n + 300))
        p.kill()
        assert answer.status == 202, answer
        kept = n + 300
        restart(p)
        assert outbox(p)["pending"] == 300

        # a full outbox refuses a bulk whole: max_pending is 400 and 300 are held, so 101 more are refused and
        # none of them is stored; then 99 fit, a single one, and nothing more
        refused = assert_error(bulk(p, range(10_000, 10_101)), 429, "RESOURCE_EXHAUSTED")
        assert refused["details"]["asked"] == 101
        assert outbox(p)["pending"] == 300

        async def refused_through_the_client() -> None:
            async with SidecarClient(p.api) as client:
                with pytest.raises(ResourceExhaustedError):
                    await client.publish_many("orders", [{"type": "event", "payload": {"n": -1}}] * 101)
        asyncio.run(asyncio.wait_for(refused_through_the_client(), 30))
        assert bulk(p, range(kept, kept + 99)).status == 202
        assert single(p, kept + 99).status == 202
        assert_error(bulk(p, range(10_101, 10_102)), 429, "RESOURCE_EXHAUSTED")
        assert_error(single(p, 10_102), 429, "RESOURCE_EXHAUSTED")
        state = outbox(p)
        assert state["pending"] == 400 and state["counters"]["publish_rejected"] == 101 + 101 + 1 + 1, state

        # the subscriber comes back: everything stored arrives once, in publish order, and nothing refused
        restart(s)
        assert delivered(app, "p", kept + 100) == list(range(kept + 100))
        wait_for(lambda: outbox(p)["pending"] == 0, 30, what="p's outbox settled")
        assert all(0 <= m["payload"]["n"] < kept + 100 for m in app.messages())
    finally:
        app.close()


@pytest.mark.timeout(120)
def test_a_bad_bulk_is_refused_whole_and_stores_nothing(start_sidecar, tmp_path: Path
                                                        ) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["checkout", "billing"])
    app = RecordingApp("billing")
    try:
        s = start_sidecar(node("s", certs["billing"], [{"name": "billing", "port": app.port}], [],
                               subscriptions=[SUBSCRIPTION]), name="s")
        # p publishes as checkout (its certificate); "audit" is the only publisher of the scoped topic
        p = start_sidecar(node("p", certs["checkout"], [], [s.listeners["gossip"]], messaging={
            "topics": {"audited": {"publishers": ["audit"]}}}), name="p")
        wait_for(lambda: knows_subscription(p, "orders", "s"), 30, what="p knows the subscription")
        url = p.api + "/v1/publish/bulk/orders"
        entry = {"type": "event", "payload": {"publisher": "p", "n": -1}}
        for body, message in (
                (b"", "request body is empty"),
                (b"not json", "request body is not valid JSON"),
                (entry, "request body must be a JSON array of messages (got dict)"),
                ([], "a bulk publish has 1 to 1000 messages (got 0)"),
                ([entry] * 1001, "a bulk publish has 1 to 1000 messages (got more than 1000)"),
                ([entry, entry, entry, {"payload": 1}, entry], "[3].type: "),
                ([entry, "event"], "[1]: a message is a JSON object"),
                ([{**entry, "metadata": "x"}], "[0].metadata: "),
                ([{"type": "event", "payload": "x" * (1 << 20)}], "request body is larger than 1048576 bytes")):
            error = assert_error(http("POST", url, body), 400, "INVALID_ARGUMENT")
            assert error["message"].startswith(message), (message, error)
        assert assert_error(http("POST", url, [entry, {"type": ""}]), 400, "INVALID_ARGUMENT")["details"] == {
            "field": "[1].type", "index": 1}
        assert_error(http("POST", url.replace("/orders", "/bad%20topic"), [entry]), 400, "INVALID_ARGUMENT")

        async def bad_through_the_client() -> None:
            async with SidecarClient(p.api) as client:
                with pytest.raises(InvalidArgumentError, match=r"\[1\]\.payload"):
                    await client.publish_many("orders", [entry, {"type": "event"}])
        asyncio.run(asyncio.wait_for(bad_through_the_client(), 30))
        # the scope is checked once for the topic, as for a single publish
        refused = assert_error(bulk(p, range(3), "audited"), 403, "PERMISSION_DENIED")
        assert refused["details"]["rule"] == "messaging.topics.audited.publishers"
        assert_error(single(p, 0, "audited"), 403, "PERMISSION_DENIED")
        # /v1/publish/bulk is still a single publish, to a topic named "bulk"
        assert json.loads(single(p, 0, "bulk").body).keys() == {"id"}

        # none of the refused bulks stored a message: only the next good one arrives
        assert bulk(p, range(2)).status == 202
        assert delivered(app, "p", 2) == [0, 1]
        assert outbox(p)["counters"]["published"] == 3   # the good bulk, and the single one to "bulk"
        assert [m["payload"]["n"] for m in app.messages()] == [0, 1]
    finally:
        app.close()
