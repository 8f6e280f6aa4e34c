"""The outbox on a real SQLite file: group commit, settle, dead letters, retention, restart."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sidecar.clock import FakeClock
from sidecar.messaging.store import CHECKPOINT_BYTES, Store, StoreLimits
from sidecar.messaging.writer import Writer

LIMITS = StoreLimits(retention_age_ms=60_000, retention_bytes=1 << 20, max_dead_letters=5)


def test_publish_settle_and_restart(tmp_path: Path) -> None:
    store = Store(str(tmp_path), LIMITS)
    store.begin()
    one, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    two, _ = store.w_ensure_stream("t", "node:c", "", 0)
    assert store.w_publish("m0", "other", b"x", 0) == (0, [], [])  # nobody wants it: nothing kept
    seqs = [store.w_publish(f"m{i}", "t", b"body%d" % i, 0)[0] for i in range(3)]
    store.commit()
    assert store.pending == 3 and [s for s, _ in store.r_page(one.id, 0, 10)] == seqs
    store.begin()
    store.w_settle(one.id, seqs[0])
    store.w_settle(two.id, seqs[0])
    assert not store.w_settle(two.id, seqs[0])  # twice is harmless
    store.w_settle(one.id, seqs[1])
    store.commit()
    assert store.pending == 2
    store.close()
    again = Store(str(tmp_path), LIMITS)  # what a restart reads back
    assert again.pending == 2 and {r.subscriber for r in again.streams()} == {"billing", "node:c"}
    assert [s for s, _ in again.r_page(one.id, 0, 10)] == [seqs[2]]
    assert [s for s, _ in again.r_page(two.id, 0, 10)] == seqs[1:]
    again.close()


def test_retention_dead_letters_the_oldest_and_caps_dead_letters(tmp_path: Path) -> None:
    store = Store(str(tmp_path), StoreLimits(retention_age_ms=1000, retention_bytes=50, max_dead_letters=3))
    store.begin()
    stream, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    for i in range(8):
        store.w_publish(f"m{i}", "t", b"0123456789", created_ms=i * 100)
    store.in_flight.add((stream.id, 8))  # the newest is on the wire: never evicted
    evicted = store.w_enforce_retention(now_ms=900)
    store.commit()
    assert [e.seq for e in evicted] == [1, 2, 3] and {e.reason for e in evicted} == {"retention-bytes"}
    store.begin()
    evicted = store.w_enforce_retention(now_ms=1650)  # older than 1 s: seq 4..7 (created 300..600)
    store.commit()
    assert [e.seq for e in evicted] == [4, 5, 6, 7] and {e.reason for e in evicted} == {"retention-age"}
    assert store.pending == 1 and store.dead_letter_count == 3  # capped: the oldest dead letters went
    rows = store.r_dead_letters(10, 0, None)
    assert [r.message_id for r in rows] == ["m4", "m5", "m6"]
    store.close()


def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(str(tmp_path), LIMITS)
        writer = Writer(store, FakeClock())
        writer.start()
        await writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        commits = writer.commits
        results = await asyncio.gather(*(writer.submit(lambda s, i=i: s.w_publish(f"m{i}", "t", b"x", 0))
                                         for i in range(500)))
        assert sorted(seq for seq, _, _ in results) == list(range(1, 501))
        assert writer.commits - commits < 50  # 500 publishes, a handful of fsyncs
        assert store.durable_messages == 500 and store.fsyncs <= writer.commits
        failing = writer.submit(lambda s: s.w.execute("INSERT INTO nowhere VALUES (1)"))
        fine = writer.submit(lambda s: s.w_publish("ok", "t", b"x", 0))
        assert (await fine)[0] == 501
        try:
            await failing
        except Exception as e:
            assert "nowhere" in str(e)
        else:
            raise AssertionError("a failing operation must fail alone")
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_dead_letters_are_bounded_by_bytes_too_oldest_first_and_counted(tmp_path: Path) -> None:
    # 1 KiB bodies, a 4 KiB bound and a count bound far away: bytes decide
    limits = StoreLimits(retention_age_ms=60_000, retention_bytes=1 << 20, max_dead_letters=1000,
                    max_dead_letter_bytes=4096)
    store = Store(str(tmp_path), limits)
    store.begin()
    stream, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    for i in range(10):
        seq, _, _ = store.w_publish(f"m{i}", "t", bytes([65 + i]) * 1024, created_ms=0)
        assert store.w_dead_letter(stream.id, seq, "rejected", 1, "HTTP 400", 0)
    store.w_enforce_retention(now_ms=1)
    store.commit()
    assert (store.dead_letter_count, store.dead_letter_bytes, store.dead_letters_dropped) == (4, 4096, 6)
    assert [r.message_id for r in store.r_dead_letters(10, 0, None)] == ["m6", "m7", "m8", "m9"]
    store.close()
    again = Store(str(tmp_path), limits)  # the accounting is read back after a restart
    assert (again.dead_letter_count, again.dead_letter_bytes) == (4, 4096)
    again.begin()
    replayed = again.w_replay([again.r_dead_letters(1, 0, None)[0].id], 2)
    assert len(replayed) == 1 and again.dead_letter_bytes == 3072
    assert again.w_purge(None) == 3 and again.dead_letter_bytes == 0
    again.commit()
    again.close()


def test_one_fsync_covers_every_publish_queued_while_the_previous_commit_ran(tmp_path: Path) -> None:
    """Group commit, counted: the publishes that arrive while a commit runs are stored by the next commit, one
    fsync for all of them; each caller still learns its own result only once that commit is done."""
    async def main() -> None:
        store = Store(str(tmp_path), StoreLimits(retention_age_ms=1 << 50, retention_bytes=1 << 20,
                                                 max_dead_letters=5))  # retention keeps everything here
        writer = Writer(store, FakeClock())
        writer.start()
        await writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        fsyncs, messages = store.fsyncs, store.durable_messages
        running, release = threading.Event(), threading.Event()

        def slow(s: Store) -> tuple[int, list[int]]:  # holds the commit open, as a slow disk would
            running.set()
            assert release.wait(10)
            return s.w_publish("first", "t", b"x", 0)

        first = writer.submit(slow)
        assert await asyncio.to_thread(running.wait, 10)
        rest = [writer.submit(lambda s, i=i: s.w_publish(f"m{i}", "t", b"x", 0)) for i in range(100)]
        await asyncio.sleep(0)
        assert not any(f.done() for f in rest)  # not durable yet: no answer yet
        release.set()
        await first
        await asyncio.gather(*rest)
        assert store.durable_messages - messages == 101
        assert store.fsyncs - fsyncs == 2  # the slow commit's, then one for the hundred queued behind it
        writer.tick()  # a commit that writes nothing (retention with nothing to do) costs no fsync
        await writer.submit(lambda s: None)
        assert store.fsyncs - fsyncs == 2
        stream = store.streams()[0].id
        settled = await asyncio.gather(*(writer.submit(lambda s, q=seq: s.w_settle(stream, q), durable=False)
                                         for seq in range(1, 51)))
        assert all(settled) and store.pending == 51 and store.fsyncs - fsyncs == 2  # acks alone: no fsync
        published, acked = await asyncio.gather(writer.submit(lambda s: s.w_publish("late", "t", b"x", 0)),
                                                writer.submit(lambda s: s.w_settle(stream, 51), durable=False))
        assert published[0] == 102 and acked
        assert store.fsyncs - fsyncs == 3  # an ack in the same commit as a publish rides on its fsync
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_checkpoints_are_run_and_counted(tmp_path: Path) -> None:
    """The WAL is checkpointed by the store once it has grown by CHECKPOINT_BYTES, and those fsyncs count too."""
    store = Store(str(tmp_path), StoreLimits(retention_age_ms=60_000, retention_bytes=1 << 30,
                                             max_dead_letters=5))
    store.begin()
    store.w_ensure_stream("t", "billing", "/in", 0)
    store.commit()
    body = b"x" * (64 << 10)
    commits = 0
    while store.fsyncs == commits + 1:  # until a commit costs more than its own fsync: the checkpoint's two
        store.begin()
        store.w_publish(f"m{commits}", "t", body, 0)
        store.commit()
        commits += 1
        assert commits < 200
    assert store.fsyncs == commits + 1 + 2 and store.durable_messages == commits
    assert CHECKPOINT_BYTES // (2 * len(body)) <= commits <= CHECKPOINT_BYTES // len(body) + 1
    store.close()


def test_an_inbox_keeps_a_publishers_order_and_drops_what_it_stored_before_across_restarts(tmp_path: Path) -> None:
    """A publisher's batch whose ack was lost comes again, maybe cut differently and with more after it: what is at
    or below the stream's mark (the publisher's highest seq stored) is a duplicate, the rest is stored in order;
    the mark and the epoch outlive a restart."""
    store = Store(str(tmp_path), LIMITS)
    epoch = store.epoch
    store.begin()
    inbox, _ = store.w_ensure_stream("t", "inbox:checkout@p1.e:billing", "/in", 0)
    stored, duplicates, tail = store.w_inbox(inbox.id, [(5, "a", b"A"), (9, "b", b"B")], 0)
    assert [body for _, body in stored] == [b"A", b"B"] and duplicates == 0 and tail == 0
    store.commit()
    store.close()
    again = Store(str(tmp_path), LIMITS)
    assert again.epoch == epoch and again.marks == {inbox.id: 9}
    again.begin()
    stored, duplicates, tail = again.w_inbox(inbox.id, [(9, "b", b"B"), (12, "c", b"C"), (20, "d", b"D")], 0)
    assert [body for _, body in stored] == [b"C", b"D"] and duplicates == 1
    assert tail == 2   # B's delivery, read from the table after the restart: C and D follow it
    assert again.w_inbox(inbox.id, [(5, "a", b"A")], 0) == ([], 1, 0)
    again.commit()
    assert [body for _, body in again.r_page(inbox.id, 0, 10)] == [b"A", b"B", b"C", b"D"]
    assert again.pending == 4
    again.begin()
    assert again.w_forget_stream(inbox.id, 0) == 4  # forgotten: its mark goes with it
    again.commit()
    assert again.marks == {}
    again.close()
    assert Store(str(tmp_path), LIMITS).epoch == epoch


def test_a_publish_is_not_written_for_an_inbox_stream_of_its_topic_before_or_after_a_restart(tmp_path: Path) -> None:
    """An inbox stream holds only what its publisher's stream hands it (w_inbox): a publish on this node is written
    for the topic's service and node streams, and the service's stream brings it to the inbox once."""
    store = Store(str(tmp_path), LIMITS)
    store.begin()
    service, node, inbox = (store.w_ensure_stream("t", subscriber, "/in", 0)[0]
                            for subscriber in ("billing", "node:a", "inbox:billing@a.e:billing"))
    seq, streams, _ = store.w_publish("m1", "t", b"1", 0)
    assert streams == [service.id, node.id]
    assert len(store.w_inbox(inbox.id, [(seq, "m1", b"1")], 0)[0]) == 1
    store.commit()
    assert [body for _, body in store.r_page(inbox.id, 0, 10)] == [b"1"]
    assert store.pending == 2   # the published message (two streams owe it) and the inbox's own copy
    store.close()
    again = Store(str(tmp_path), LIMITS)
    again.begin()
    assert again.w_publish("m2", "t", b"2", 0)[1] == [service.id, node.id]
    again.commit()
    assert [body for _, body in again.r_page(inbox.id, 0, 10)] == [b"1"]
    again.close()


def test_acks_submitted_one_at_a_time_share_a_commit(tmp_path: Path) -> None:
    """A subscriber acks one message at a time; the writer lets acks alone wait ACK_LINGER for company, so two
    acks a moment apart are one commit, not two."""
    async def main() -> None:
        store = Store(str(tmp_path), LIMITS)
        writer = Writer(store, FakeClock())
        writer.start()
        await writer.submit(lambda s: s.w_ensure_stream("t", "billing", "/in", 0))
        commits = writer.commits
        first = writer.submit(lambda s: None, durable=False)
        for _ in range(3):
            await asyncio.sleep(0)   # the writer has woken for the first ack, and waits for company
        second = writer.submit(lambda s: None, durable=False)
        await asyncio.gather(first, second)
        assert writer.commits - commits == 1
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_a_streams_tail_is_its_newest_delivery_whoever_wrote_it(tmp_path: Path) -> None:
    """What a worker must have read before it may take a delivery from memory: the stream's delivery before it,
    whether that came from a publish, a replayed dead letter or the table (after a restart)."""
    store = Store(str(tmp_path), LIMITS)
    store.begin()
    one, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    two, _ = store.w_ensure_stream("t", "audit", "/in", 0)
    assert store.w_publish("m1", "t", b"1", 0) == (1, [one.id, two.id], [0, 0])
    assert store.w_publish("m2", "t", b"2", 0) == (2, [one.id, two.id], [1, 1])
    assert store.w_dead_letter(one.id, 2, "rejected", 1, None, 0)
    assert store.w_replay(None, 0) == [(one.id, 3)]
    assert store.w_publish("m4", "t", b"4", 0) == (4, [one.id, two.id], [3, 2])
    store.commit()
    store.close()
    again = Store(str(tmp_path), LIMITS)
    again.begin()
    assert again.w_publish("m5", "t", b"5", 0)[2] == [4, 4]
    again.commit()
    again.close()


def test_settling_many_deliveries_at_once_removes_only_those_and_messages_no_one_owes(tmp_path: Path) -> None:
    store = Store(str(tmp_path), LIMITS)
    store.begin()
    one, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    two, _ = store.w_ensure_stream("t", "audit", "/in", 0)
    seqs = [store.w_publish(f"m{i}", "t", b"x" * 10, 0)[0] for i in range(1200)]   # more than one IN list
    assert store.w_settle_many(one.id, seqs[:1100]) == 1100
    assert store.w_settle_many(one.id, seqs[:10]) == 0   # settled before: skipped
    assert store.pending == 1200   # the other stream still owes them all
    assert store.w_settle_many(two.id, seqs[:1000]) == 1000
    store.commit()
    assert store.pending == 200 and store.pending_bytes == 2000
    assert [s for s, _ in store.r_page(one.id, 0, 1000)] == seqs[1100:]
    assert [s for s, _ in store.r_page(two.id, 0, 1000)] == seqs[1000:]
    assert store.r.execute("SELECT count(*) FROM messages").fetchone()[0] == 200
    store.close()


def test_hooks_run_after_their_commit_and_not_for_an_operation_that_failed(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(str(tmp_path), LIMITS)
        writer = Writer(store, FakeClock())
        writer.start()
        ran: list[str] = []

        def good(s: Store) -> None:
            s.after_commit(lambda: ran.append("good"))

        def bad(s: Store) -> None:
            s.after_commit(lambda: ran.append("bad"))
            raise ValueError("this operation fails alone")
        results = await asyncio.gather(writer.submit(good), writer.submit(bad), return_exceptions=True)
        assert results[0] is None and isinstance(results[1], ValueError)
        assert ran == ["good"] and store.hooks == []
        await writer.stop()
        store.close()
    asyncio.run(main())


def test_the_topic_log_is_trimmed_by_age_and_its_bytes_follow(tmp_path: Path) -> None:
    store = Store(str(tmp_path), StoreLimits(retention_age_ms=1000, retention_bytes=1 << 20, max_dead_letters=5))
    store.begin()
    for i in range(4):
        store.w_append_log("t", f"m{i}", b"0123456789", created_ms=i * 500)
    store.w_enforce_retention(now_ms=1600)   # m0 and m1 are older than 1 s
    store.commit()
    assert [i for i, _ in store.r_log("t", 0, 10)] == [3, 4] and store.log_bytes == 20
    store.begin()
    store.w_append_log("t", "m4", b"0123456789", created_ms=2000)
    store.w_enforce_retention(now_ms=2200)   # m2 is old now, but the log was trimmed less than a second ago
    store.commit()
    assert len(store.r_log("t", 0, 10)) == 3
    store.begin()
    store.w_enforce_retention(now_ms=2700)
    store.commit()
    assert [i for i, _ in store.r_log("t", 0, 10)] == [5] and store.log_bytes == 10
    store.close()


def test_publishing_many_at_once_keeps_order_and_never_reuses_a_seq(tmp_path: Path) -> None:
    store = Store(str(tmp_path), LIMITS)
    store.begin()
    one, _ = store.w_ensure_stream("t", "billing", "/in", 0)
    two, _ = store.w_ensure_stream("t", "node:c", "", 0)
    other, _ = store.w_ensure_stream("u", "audit", "/in", 0)
    first, _, _ = store.w_publish("m0", "t", b"x", 0)
    store.commit()
    store.begin()
    store.w_settle_many(one.id, [first])
    store.w_settle_many(two.id, [first])   # the newest message is gone: AUTOINCREMENT never gives its seq again
    seqs, offers = store.w_publish_many([("m1", "t", b"a", 5), ("m2", "nobody", b"-", 5), ("m3", "u", b"b", 6),
                                         ("m4", "t", b"c", 7)])
    store.commit()
    assert seqs == [first + 1, 0, first + 2, first + 3]
    assert offers == {one.id: (first, [(first + 1, b"a"), (first + 3, b"c")]),
                      two.id: (first, [(first + 1, b"a"), (first + 3, b"c")]),
                      other.id: (0, [(first + 2, b"b")])}
    assert store.r_page(one.id, 0, 10) == [(first + 1, b"a"), (first + 3, b"c")]
    assert store.r_page(other.id, 0, 10) == [(first + 2, b"b")]
    assert (store.pending, store.pending_bytes, store.durable_messages) == (3, 3, 4)
    store.begin()
    assert store.w_publish("m5", "u", b"d", 8)[0] == first + 4   # the statement's own AUTOINCREMENT follows them
    store.commit()
    store.close()
    again = Store(str(tmp_path), LIMITS)   # read back after a restart: the same outbox
    assert list(again.outbox) == [first + 1, first + 2, first + 3, first + 4]
    assert again.outbox[first + 1][0] == 2
    again.close()
