"""An inbox stream's worker and the batches handed to it before their commit: it takes one only when it follows
what it has read, in order, and its acks wait for that commit."""

from __future__ import annotations

import asyncio

from sidecar.messaging.store import StreamRow
from sidecar.messaging.streams import StreamWorker

ROW = StreamRow(1, "orders", "inbox:checkout@p.e:billing", "/in", 0, 0)


def test_a_preview_that_follows_what_was_read_is_delivered_from_memory_and_its_acks_wait_for_the_commit() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        worker.preview(10, [(11, b"a"), (12, b"b")], commit)
        assert worker.take_preview(10) == [(11, b"a"), (12, b"b")]
        assert worker.gate_for(12) is commit and worker.gate_for(13) is None
        commit.set_result(None)
        assert worker.gate_for(12) is None
    asyncio.run(run())


def test_a_preview_behind_unread_deliveries_is_dropped_for_the_store() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        loop = asyncio.get_running_loop()
        worker.preview(10, [(11, b"a")], loop.create_future())
        worker.preview(11, [(12, b"b")], loop.create_future())
        # the worker has read up to 7: 8..10 are in the store, unread; delivering 11 now would pass them
        assert worker.take_preview(7) == [] and not worker.previews
    asyncio.run(run())


def test_what_the_worker_already_read_from_the_store_is_not_delivered_again() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        loop = asyncio.get_running_loop()
        worker.preview(0, [(3, b"a"), (4, b"b")], loop.create_future())
        worker.preview(4, [(5, b"c")], loop.create_future())
        assert worker.take_preview(3) == [(4, b"b")]
        assert worker.take_preview(4) == [(5, b"c")]
    asyncio.run(run())


def test_a_failed_commit_makes_the_worker_read_its_stream_again() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        worker.preview(0, [(1, b"a")], commit)
        commit.set_exception(OSError("disk"))
        await asyncio.sleep(0)   # the commit's callbacks run
        assert worker.rewind and worker.take_preview(0) == []
    asyncio.run(run())
