"""A stream's worker and the deliveries handed to it as they are written (an inbox's batches before their commit,
published messages after theirs): it takes them only when they follow what it has read, in order, many at once, and
the acks of uncommitted ones wait for their commit."""

from __future__ import annotations

import asyncio

from sidecar.messaging.store import StreamRow
from sidecar.messaging.streams import PREVIEW_BYTES, PREVIEW_MESSAGES, StreamWorker

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
        assert worker.take_preview(3, limit=1) == [(4, b"b")]
        assert worker.take_preview(4) == [(5, b"c")]
    asyncio.run(run())


def test_previews_that_follow_each_other_are_taken_as_one_page_up_to_a_gap() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        for tail, seq in ((0, 1), (1, 2), (2, 3), (5, 6)):   # 4 and 5 are in the store only
            worker.preview(tail, [(seq, b"x")])   # published: committed before it is handed over
        assert [seq for seq, _ in worker.take_preview(0)] == [1, 2, 3]
        assert worker.take_preview(3) == [] and not worker.previews and worker.previewed == 0
        assert not worker.gates   # committed: acks wait for nothing
    asyncio.run(run())


def test_a_page_of_previews_stops_at_the_limit_without_cutting_one() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        worker.preview(0, [(1, b"a"), (2, b"b")])
        worker.preview(2, [(3, b"c"), (4, b"d")])
        assert [seq for seq, _ in worker.take_preview(0, limit=3)] == [1, 2]
        assert [seq for seq, _ in worker.take_preview(2, limit=3)] == [3, 4]
    asyncio.run(run())


def test_a_worker_that_falls_behind_drops_its_previews_for_the_store() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        for seq in range(1, PREVIEW_MESSAGES + 2):
            worker.preview(seq - 1, [(seq, b"x")])
        # the bound was passed at the last one: only it is held, and it does not follow what was read (0)
        assert worker.previewed == 1 and worker.take_preview(0) == []
        worker.preview(0, [(1, b"x" * (PREVIEW_BYTES // 2))])
        worker.preview(1, [(2, b"x" * (PREVIEW_BYTES // 2 + 1))])   # over the bytes bound: the first is dropped
        assert worker.previewed == 1 and worker.take_preview(0) == []
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


def test_a_worker_fed_by_previews_skips_the_store_until_they_may_have_missed_something() -> None:
    async def run() -> None:
        worker = StreamWorker(ROW)
        assert worker.unread   # new: it reads the store first
        worker.unread = False  # it has
        worker.preview(0, [(1, b"a")])
        assert worker.take_preview(0) == [(1, b"a")] and not worker.unread
        worker.preview(5, [(6, b"f")])   # 2..5 were not handed over: only the store has them
        assert worker.take_preview(1) == [] and worker.unread
    asyncio.run(run())
