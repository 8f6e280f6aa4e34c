"""Acks gathered for the writer (sidecar.messaging.acks): the acks of a stretch of deliveries settle in one
commit, written when the delay ends, when enough are owed, when the writer has other work to take them along,
or when messaging stops; none is lost on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidecar.clock import FakeClock
from sidecar.messaging.acks import ACK_BATCH, Acks
from sidecar.messaging.store import Store, StoreLimits
from sidecar.messaging.writer import Writer
from tests.harness import wait_for_async

LIMITS = StoreLimits(retention_age_ms=1 << 50, retention_bytes=1 << 30, max_dead_letters=5)
COUNT = 2 * ACK_BATCH + 10


async def _published(tmp_path: Path) -> tuple[Store, Writer, int]:
    store = Store(str(tmp_path), LIMITS)
    writer = Writer(store, FakeClock())
    writer.start()
    row, _ = await writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
    await writer.submit(lambda s: [s.w_publish(f"m{i}", "t", b"x", 0) for i in range(COUNT)])
    return store, writer, row.id


async def _still_owed(store: Store, pending: int) -> None:
    """``pending`` deliveries stay owed for a fifth of a second of the event loop running (nothing settles them)."""
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert store.pending == pending


def test_acks_one_at_a_time_settle_in_few_commits_and_all_of_them(tmp_path: Path) -> None:
    """200 acks a millisecond apart (an app answering a message a millisecond): a commit every 50 ms delay."""
    async def main() -> None:
        store, writer, stream = await _published(tmp_path)
        commits = writer.commits
        acks = Acks(writer, delay=0.05)
        for seq in range(1, 201):
            acks.add(stream, [seq])
            await asyncio.sleep(0.001)
        await wait_for_async(lambda: store.pending == COUNT - 200, 10, what="every ack settled")
        assert writer.commits - commits <= 10, writer.commits - commits
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_a_full_batch_of_acks_goes_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        store, writer, stream = await _published(tmp_path)
        acks = Acks(writer, delay=30.0)
        acks.add(stream, range(1, ACK_BATCH))
        await _still_owed(store, COUNT)   # one short of a batch: waits for the delay
        acks.add(stream, [ACK_BATCH])
        await wait_for_async(lambda: store.pending == COUNT - ACK_BATCH, 10, what="the batch settled")
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_an_ack_waits_out_its_delay_unless_the_writer_has_work_or_messaging_stops(tmp_path: Path) -> None:
    async def main() -> None:
        store, writer, stream = await _published(tmp_path)
        acks = Acks(writer, delay=30.0)
        acks.add(stream, [1])
        await _still_owed(store, COUNT)   # the delay has not ended
        later = writer.submit(lambda s: s.w_publish("later", "t", b"x", 0))   # work queued: acks ride along
        acks.add(stream, [2])
        await later
        await wait_for_async(lambda: store.pending == COUNT + 1 - 2, 10, what="both acks settled with the publish")
        acks.add(stream, [3])
        acks.flush()   # messaging stopping
        await writer.stop()
        assert store.pending == COUNT + 1 - 3
        store.close()
    asyncio.run(main())
