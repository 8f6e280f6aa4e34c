"""Publishing on a real SQLite file: the publishes made while a commit runs go into the next one as one operation,
each waits for that commit (its 202), and their streams' workers get them from memory after it, in order."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import Config, NodeConfig
from sidecar.errors import ResourceExhausted
from sidecar.events import EventBus
from sidecar.messaging.context import MessagingContext
from sidecar.messaging.envelope import MessageBody, ServiceMessage
from sidecar.messaging.publisher import Publisher
from sidecar.messaging.store import Store
from sidecar.messaging.streams import Streams


class Handed:
    """Stands in for the streams: records what is handed over after each commit."""

    def __init__(self) -> None:
        self.offers: list[dict[int, tuple[int, list[tuple[int, bytes]]]]] = []

    def offer_many(self, offers: dict[int, tuple[int, list[tuple[int, bytes]]]]) -> None:
        self.offers.append(offers)


async def opened(tmp_path: Path) -> MessagingContext:
    registry = LocalRegistry("n", EventBus())
    config = Config(node=NodeConfig(name="n", data_dir=str(tmp_path)))
    ctx = MessagingContext(config, MeshCatalog(registry, NodeInfo("n", "127.0.0.1", 0, "test")), registry,
                           SYSTEM_CLOCK)
    await ctx.open(None, lambda evicted: None)
    ctx.started = True
    return ctx


def test_publishes_queued_during_a_commit_share_the_next_and_reach_their_streams_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        ctx = await opened(tmp_path)
        assert ctx.writer is not None and ctx.store is not None
        handed = Handed()
        publisher = Publisher(ctx, cast(Streams, handed))
        billing, _ = await ctx.writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        audit, _ = await ctx.writer.submit(lambda s: s.w_ensure_stream("t", "audit", "/in", 0))
        running, release = threading.Event(), threading.Event()

        def slow(s: Store) -> None:   # holds a commit open, as a slow disk would
            running.set()
            assert release.wait(10)
        held = ctx.writer.submit(slow)
        assert await asyncio.to_thread(running.wait, 10)
        commits = ctx.writer.commits
        publishes = [asyncio.ensure_future(publisher.publish("t", MessageBody("n", i))) for i in range(100)]
        await asyncio.sleep(0.05)
        assert publisher.queued == 100 and not any(p.done() for p in publishes)   # no 202 before the commit
        publishes[7].cancel()   # a publisher that leaves: the others' commit goes on
        release.set()
        await held
        ids = await asyncio.gather(*publishes[:7], *publishes[8:])
        assert ctx.writer.commits - commits == 2   # the held commit, then one for the hundred
        assert len(handed.offers) == 1 and set(handed.offers[0]) == {billing.id, audit.id}
        tail, deliveries = handed.offers[0][billing.id]
        assert tail == 0 and [seq for seq, _ in deliveries] == list(range(1, 101))
        payloads = [ServiceMessage.from_bytes(body).payload for _, body in deliveries]
        assert payloads == list(range(100))   # publish order
        assert [ServiceMessage.from_bytes(body).id for _, body in deliveries if body] == \
            [ServiceMessage.from_bytes(body).id for _, body in handed.offers[0][audit.id][1]]
        stored = {ServiceMessage.from_bytes(body).id for _, body in deliveries}
        assert set(ids) <= stored and len(stored) == 100
        assert ctx.counters["published"] == 100 and ctx.store.pending == 100
        await ctx.close()
    asyncio.run(main())


def test_a_publish_beyond_the_queue_is_refused_and_what_was_queued_counts(tmp_path: Path) -> None:
    async def main() -> None:
        ctx = await opened(tmp_path)
        assert ctx.writer is not None
        ctx.settings = replace(ctx.settings, queue=replace(ctx.settings.queue, max_pending=3))
        publisher = Publisher(ctx, cast(Streams, Handed()))
        await ctx.writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        running, release = threading.Event(), threading.Event()
        held = ctx.writer.submit(lambda s: (running.set(), release.wait(10)))
        assert await asyncio.to_thread(running.wait, 10)
        queued: list[Any] = [asyncio.ensure_future(publisher.publish("t", MessageBody("n", i))) for i in range(3)]
        await asyncio.sleep(0)
        try:
            await publisher.publish("t", MessageBody("n", 3))
        except ResourceExhausted:
            pass
        else:
            raise AssertionError("the fourth publish must be refused: three are queued, max_pending is 3")
        release.set()
        await held
        await asyncio.gather(*queued)
        assert ctx.counters["publish_rejected"] == 1
        await ctx.close()
    asyncio.run(main())


def test_a_commit_that_fails_answers_every_publish_in_it_with_its_failure(tmp_path: Path) -> None:
    async def main() -> None:
        ctx = await opened(tmp_path)
        assert ctx.writer is not None and ctx.store is not None
        publisher = Publisher(ctx, cast(Streams, Handed()))
        await ctx.writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        await ctx.writer.submit(lambda s: s.w.execute("ALTER TABLE messages RENAME TO gone"))   # every INSERT fails
        results = await asyncio.gather(*(publisher.publish("t", MessageBody("n", i)) for i in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) and "messages" in str(r) for r in results), results
        assert ctx.store.pending == 0 and ctx.counters["published"] == 0   # nothing counted as stored
        await ctx.writer.submit(lambda s: s.w.execute("ALTER TABLE gone RENAME TO messages"))
        assert await publisher.publish("t", MessageBody("n", "after")) and ctx.store.pending == 1
        await ctx.close()
    asyncio.run(main())


async def publishing(tmp_path: Path, handed: Handed) -> tuple[MessagingContext, Publisher, int]:
    """An opened context, its publisher (handing over to ``handed``) and a stream of topic ``t`` (its id)."""
    ctx = await opened(tmp_path)
    assert ctx.writer is not None and ctx.store is not None
    stream, _ = await ctx.writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
    return ctx, Publisher(ctx, cast(Streams, handed)), stream.id


def held_commit(ctx: MessagingContext) -> tuple[asyncio.Future[None], threading.Event, threading.Event]:
    """A commit of the writer held open until ``release`` is set, as a slow disk would: (it, running, release)."""
    assert ctx.writer is not None
    running, release = threading.Event(), threading.Event()

    def slow(s: Store) -> None:
        running.set()
        assert release.wait(10)
    return ctx.writer.submit(slow), running, release


def test_a_bulk_is_one_commit_in_its_order_after_the_publishes_queued_before_it(tmp_path: Path) -> None:
    async def main() -> None:
        handed = Handed()
        ctx, publisher, stream = await publishing(tmp_path, handed)
        assert ctx.writer is not None and ctx.store is not None
        held, running, release = held_commit(ctx)
        assert await asyncio.to_thread(running.wait, 10)
        commits = ctx.writer.commits
        first = asyncio.ensure_future(publisher.publish("t", MessageBody("n", 0)))
        await asyncio.sleep(0)
        raw = [b'{"type":"n","payload":%d}' % n for n in range(1, 101)]
        bulk = asyncio.ensure_future(publisher.publish_many(
            "t", [(MessageBody("n", n), part) for n, part in enumerate(raw, 1)]))
        await asyncio.sleep(0)
        last = asyncio.ensure_future(publisher.publish("t", MessageBody("n", 101)))
        await asyncio.sleep(0.05)
        assert publisher.queued == 102 and not bulk.done()   # no 202 before the commit
        release.set()
        await held
        ids = await bulk
        assert ctx.writer.commits - commits == 2   # the held commit, then one for the lot
        _, deliveries = handed.offers[0][stream]
        messages = [ServiceMessage.from_bytes(body) for _, body in deliveries]
        assert [m.payload for m in messages] == list(range(102))
        assert [m.id for m in messages] == [await first, *ids, await last]
        assert all(body.endswith(part[1:]) for (_, body), part in zip(deliveries[1:101], raw, strict=True))
        assert ctx.counters["published"] == 102 and ctx.store.pending == 102
        await ctx.close()
    asyncio.run(main())


def test_a_bulk_the_outbox_cannot_take_whole_is_refused_whole(tmp_path: Path) -> None:
    async def main() -> None:
        ctx, publisher, _ = await publishing(tmp_path, Handed())
        assert ctx.writer is not None and ctx.store is not None
        ctx.settings = replace(ctx.settings, queue=replace(ctx.settings.queue, max_pending=5))
        held, running, release = held_commit(ctx)
        assert await asyncio.to_thread(running.wait, 10)
        queued = [asyncio.ensure_future(publisher.publish("t", MessageBody("n", i))) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted) as refused:   # three more do not fit: three are queued of 5
            await publisher.publish_many("t", [(MessageBody("n", i), None) for i in range(3, 6)])
        assert refused.value.details["asked"] == 3
        assert publisher.queued == 3 and ctx.counters["publish_rejected"] == 3   # none of the three queued
        fits = asyncio.ensure_future(publisher.publish_many("t", [(MessageBody("n", i), None) for i in (3, 4)]))
        release.set()
        await held
        await asyncio.gather(*queued, fits)
        assert ctx.store.pending == 5
        rows = ctx.store.w.execute("SELECT body FROM messages ORDER BY seq").fetchall()
        assert [ServiceMessage.from_bytes(body).payload for body, in rows] == [0, 1, 2, 3, 4]
        await ctx.close()
    asyncio.run(main())


def test_a_bulk_whose_commit_fails_stores_none_of_it(tmp_path: Path) -> None:
    async def main() -> None:
        ctx, publisher, _ = await publishing(tmp_path, Handed())
        assert ctx.writer is not None and ctx.store is not None
        # the deliveries' INSERT fails after the messages' INSERT ran: the operation rolls back whole
        await ctx.writer.submit(lambda s: s.w.execute("ALTER TABLE deliveries RENAME TO gone"))
        with pytest.raises(sqlite3.OperationalError, match="deliveries"):
            await publisher.publish_many("t", [(MessageBody("n", i), None) for i in range(10)])
        assert ctx.store.pending == 0 and ctx.counters["published"] == 0
        assert ctx.store.w.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        await ctx.close()
    asyncio.run(main())
