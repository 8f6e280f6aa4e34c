"""Publish: the message is queued for the writer (group commit) with one delivery row per stream of its topic;
the 202 waits for that commit, and the committed messages are handed to their streams' workers (they need not read
them back from the store). Beyond ``messaging.queue`` the publish is refused with 429. A bulk publish is the same
for many messages at once, queued together: one commit holds them all, in the array's order, after every publish
queued before it.

Every publish made while a commit runs goes into the next one as a single operation of the writer: its messages
in two statements (:meth:`Store.w_publish_many`), one future that all of them wait for, one hand-over per stream
after the commit. Added from the event loop, taken in the writer's thread: the lock guards the hand-over.

    publisher = Publisher(ctx, streams)
    message_id = await publisher.publish(topic, body, sender_header, raw)
    ids = await publisher.publish_many(topic, [(body, raw), ...], sender_header)   # one commit, all or nothing
"""

from __future__ import annotations

import asyncio
import functools
import threading

from sidecar.errors import ResourceExhausted
from sidecar.messaging.context import MessagingContext
from sidecar.messaging.envelope import BulkEntry, MessageBody, check_topic, encode_message, new_message_id
from sidecar.messaging.store import Store
from sidecar.messaging.streams import Streams
from sidecar.messaging.writer import Writer

Item = tuple[str, str, bytes, int]   # (message id, topic, stored ServiceMessage JSON, created ms)


class Publisher:
    def __init__(self, ctx: MessagingContext, streams: Streams) -> None:
        self.ctx = ctx
        self.streams = streams
        self._lock = threading.Lock()
        self._items: list[Item] = []   # published, not yet taken by the writer
        self._bytes = 0                # their bodies' bytes
        self._commit: asyncio.Future[tuple[int, int]] | None = None   # the operation that will take them
        self._waiters: list[asyncio.Future[None]] = []   # their publishes, answered when that commit is done

    @property
    def queued(self) -> int:
        return len(self._items)

    async def publish(self, topic: str, body: MessageBody, sender_header: str | None = None,
                      raw: bytes | None = None) -> str:
        """Store the message durably for every subscriber of ``topic``; its id, once committed. ``raw``: the
        request's own JSON of ``body``, kept as it is in the stored message when it can be (:func:`encode_message`)."""
        ctx = self.ctx
        store, writer = ctx.require()
        check_topic(topic)
        self._admit(store, writer, 1)
        sender = ctx.sender(sender_header)
        ctx.scopes.check_publish(sender, topic)
        message_id = new_message_id()
        now_ms = ctx.now_ms()
        stored = encode_message(message_id, sender, now_ms, body, raw)
        await self._queue(writer, [(message_id, topic, stored, now_ms)], len(stored))
        return message_id

    async def publish_many(self, topic: str, entries: list[BulkEntry], sender_header: str | None = None) -> list[str]:
        """A bulk publish: every entry ``(body, raw)`` stored durably, in order, in one operation of the writer and
        so in one commit; their ids, once committed. All or nothing: refused whole (429) when the outbox cannot
        take every one, and a failed commit stores none."""
        ctx = self.ctx
        store, writer = ctx.require()
        check_topic(topic)
        self._admit(store, writer, len(entries))
        sender = ctx.sender(sender_header)
        ctx.scopes.check_publish(sender, topic)
        now_ms = ctx.now_ms()
        items: list[Item] = []
        size = 0
        for body, raw in entries:
            message_id = new_message_id()
            stored = encode_message(message_id, sender, now_ms, body, raw)
            items.append((message_id, topic, stored, now_ms))
            size += len(stored)
        await self._queue(writer, items, size)
        return [item[0] for item in items]

    def _admit(self, store: Store, writer: Writer, count: int) -> None:
        """ResourceExhausted unless the outbox has room for ``count`` more messages (and the writer's queue for
        more bytes: one request is let in while it has any)."""
        queue = self.ctx.settings.queue
        # the writer's other operations, and the publishes waiting for theirs (counted as its messages)
        queued = max(writer.queued - (self._commit is not None), 0) + len(self._items)
        if store.pending + queued + count > queue.max_pending or \
                writer.queued_bytes + self._bytes >= queue.max_write_bytes:
            self.ctx.counters["publish_rejected"] += count
            more = f", and {count} more asked" if count > 1 else ""
            raise ResourceExhausted(
                f"the outbox is full ({store.pending} messages pending, {queued} queued{more}; "
                f"messaging.queue.max_pending is {queue.max_pending})",
                {"pending": store.pending, "queued": queued, "asked": count, "maxPending": queue.max_pending})

    def _queue(self, writer: Writer, items: list[Item], size: int) -> asyncio.Future[None]:
        """``items`` queued together for the next commit; a future answered once it is done."""
        # a future of its own: a publish cancelled while it waits cancels only that, not the commit the others wait for
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._commit is None:
                self._commit = writer.submit(self._write)   # raises when the writer stops: nothing queued
                self._waiters = []
                self._commit.add_done_callback(functools.partial(self._answer, self._waiters))
            self._items.extend(items)
            self._bytes += size
            self._waiters.append(waiter)
        return waiter

    def _write(self, store: Store) -> tuple[int, int]:
        """The writer thread's part: every publish queued since the last, stored; (messages, of which no stream
        wanted). Their streams' workers get them from memory once the commit is on disk, in commit order."""
        with self._lock:
            items, self._items, self._bytes, self._commit = self._items, [], 0, None
        seqs, offers = store.w_publish_many(items)
        if offers:
            streams = self.streams
            store.after_commit(lambda: streams.offer_many(offers))
        return len(items), seqs.count(0)

    def _answer(self, waiters: list[asyncio.Future[None]], commit: asyncio.Future[tuple[int, int]]) -> None:
        """The commit is done: every publish in it is answered (its 202, or the commit's failure)."""
        cancelled = commit.cancelled()
        error = None if cancelled else commit.exception()
        for waiter in waiters:
            if waiter.done():
                continue
            if cancelled:
                waiter.cancel()
            elif error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
        if not cancelled and error is None:
            published, unsubscribed = commit.result()
            self.ctx.counters["published"] += published
            if unsubscribed:
                self.ctx.counters["published_unsubscribed"] += unsubscribed
