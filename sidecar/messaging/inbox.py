"""The subscriber side of push delivery between sidecars: a publisher's sidecar sends a stream's messages for a
service of this node in batches (:mod:`sidecar.messaging.receiver`, or straight here when publisher and subscriber
share the node); each batch is stored, in one commit, in an *inbox* stream of its own (one per publisher, topic and
service) before it is acknowledged, and this node's stream workers deliver it to the local app, with the app's
subscription's path and bulk size, retries and dead letters (:mod:`sidecar.messaging.streams`).

Order and duplicates: a publisher sends a stream's messages in order with its own sequence numbers; the inbox keeps
the highest one stored (its *mark*, in the same commit) and drops what arrives again at or below it (a batch whose
ack was lost). ORIGIN names the publisher by its certificate's service and what it says of its node and store
epoch: a sidecar can only touch the inbox streams of the service its certificate names.

A publisher keeps a window of batches in flight: each but the first of a run says which sequence number the batch
before it ended with (``after``), and is stored only once that one is (it waits here, up to ORDER_WAIT, for it to
be queued for the same or an earlier commit; if it never is, it is refused and sent again, in order, later).

Early delivery: once a batch's rows are written (in the writer's thread, before its commit's fsync), the stream's
worker is handed them and may deliver them to the app while the commit runs; the ack to the publisher still waits
for the commit. Acks of those deliveries are written only after that commit (:meth:`StreamWorker.gate_for`); if the
commit fails the worker reads its stream again from the start (duplicates, never a loss: the publisher, unacked,
sends the batch again). The worker takes a preview only when it has read everything the stream held before it
(``tail``, the stream's previous newest delivery, known in the writer's thread), so order per stream holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.errors import NotFound, ResourceExhausted, Unavailable
from sidecar.messaging.context import MessagingContext
from sidecar.messaging.store import Store, StreamRow
from sidecar.messaging.streams import Streams, failed
from sidecar.messaging.subscriptions import SubscriptionBook, inbox_subscriber

ORDER_WAIT = 2.0    # seconds a batch waits for the one before it (``after``) to arrive


class OutOfOrder(Exception):
    """The batch before this one (``after``) is not stored: this one is refused, to come again after it."""


@dataclass(frozen=True, slots=True)
class Received:
    stored: int
    duplicates: int


class Inbox:
    def __init__(self, ctx: MessagingContext, book: SubscriptionBook, streams: Streams) -> None:
        self.ctx = ctx
        self.book = book
        self.streams = streams
        self._queued: dict[tuple[str, str, str], int] = {}   # (origin, topic, service) → last seq queued to store
        self._arrived: dict[tuple[str, str, str], asyncio.Event] = {}

    async def receive(self, origin: str, topic: str, service: str, items: list[tuple[int, str, bytes]],
                      after: int | None = None) -> Received:
        """Store ``items`` ((publisher seq, message id, body), ascending) for the local ``service``'s subscription
        to ``topic``, after the batch that ended with ``after`` (None: no condition); durable when this returns.
        NotFound without that subscription; ResourceExhausted (the publisher waits and sends again) while this
        node's outbox is over ``messaging.queue.max_pending``; Unavailable when the batch before is not stored."""
        key = (origin, topic, service)
        if after is not None and self._queued.get(key, 0) < after:
            await self._wait_queued(key, after)
        store, writer = self.ctx.require()
        subscription = self.book.local.get((service, topic))
        if subscription is None:
            raise NotFound(f"{service} has no subscription to {topic!r} on node {self.ctx.node}",
                           {"service": service, "topic": topic})
        queue = self.ctx.settings.queue
        if store.pending + writer.queued >= queue.max_pending or writer.queued_bytes >= queue.max_write_bytes:
            self.ctx.counters["inbox_refused"] += 1
            raise ResourceExhausted(f"node {self.ctx.node}'s outbox is full ({store.pending} messages pending)",
                                    {"pending": store.pending, "maxPending": queue.max_pending})
        subscriber = inbox_subscriber(origin, service)
        now_ms = self.ctx.now_ms()
        path, bulk = subscription.path, subscription.bulk
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[StreamRow, int, int]]

        def op(s: Store) -> tuple[StreamRow, int, int]:
            row, _ = s.w_ensure_stream(topic, subscriber, path, now_ms, bulk)
            if after is not None and s.marks.get(row.id, 0) < after:
                raise OutOfOrder
            stored, duplicates, tail = s.w_inbox(row.id, items, now_ms)
            if stored:
                loop.call_soon_threadsafe(self._preview, row, tail, stored, future)
            return row, len(stored), duplicates
        future = writer.submit(op, size=sum(len(body) for _, _, body in items))
        self._queued[key] = max(self._queued.get(key, 0), items[-1][0])
        event = self._arrived.pop(key, None)
        if event is not None:
            event.set()
        try:
            row, stored, duplicates = await future
        except OutOfOrder:
            self.ctx.counters["inbox_out_of_order"] += 1
            raise Unavailable(f"the batch before this one (up to {after}) is not stored here yet") from None
        if self.ctx.timing.on:
            self.ctx.timing.mark("stored", (message_id for _, message_id, _ in items), self.ctx.clock.wall())
        self.ctx.counters["inbox_received"] += stored
        self.ctx.counters["inbox_duplicates"] += duplicates
        self.streams.worker(row, unread=False)   # what it stored was handed over as it was written (_preview)
        return Received(stored, duplicates)

    def _preview(self, row: StreamRow, tail: int, stored: list[tuple[int, bytes]],
                 commit: asyncio.Future[tuple[StreamRow, int, int]]) -> None:
        if not failed(commit):
            self.streams.worker(row, unread=False).preview(tail, stored, commit)

    async def _wait_queued(self, key: tuple[str, str, str], after: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ORDER_WAIT
        while self._queued.get(key, 0) < after and loop.time() < deadline:
            event = self._arrived.setdefault(key, asyncio.Event())
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({waiter}, timeout=deadline - loop.time())
            finally:
                waiter.cancel()
