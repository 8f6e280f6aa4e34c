"""The delivery streams: one task per stream (topic, subscriber) reads what it owes from the outbox, oldest first,
and has one message (or one batch) in flight; the redelivery core (:mod:`sidecar.messaging.delivery`) says
what each answer means. A publisher's streams to services go in batches to the subscriber's sidecar, whose inbox
streams deliver to its app (:mod:`sidecar.messaging.courier`, :mod:`sidecar.messaging.inbox`).

* With bulk delivery (a service's subscription with ``bulk``), up to that many messages go in one POST and each
  settles by its own status; the ones to retry go again before anything after them.
* Acks and dead letters are written through the writer. An ack is not awaited before the next delivery: a
  ``kill -9`` between the answer and the ack's commit redelivers that message (at least once; the window is one
  commit, a few milliseconds).
* A subscriber that cannot be reached makes its stream wait for a catalog change (or its back-off), not count
  attempts; what outlives retention is dead-lettered by the store and skipped here (:meth:`Streams.evicted`).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.log import fields
from sidecar.messaging.acks import Acks
from sidecar.messaging.context import MessagingContext, log
from sidecar.messaging.courier import Courier
from sidecar.messaging.delivery import Ack, Attempts, DeadLetter, DeliveryPolicy, DeliveryRetry, Outcome
from sidecar.messaging.store import Evicted, Store, StreamRow

PAGE = 256                   # deliveries read from the outbox at once per stream
MAX_BULK_BYTES = 4 << 20     # a bulk delivery's bodies stop at this size (one message alone may be larger)
# a service's stream in flight to the subscriber's sidecar at once: up to WINDOW batches and WINDOW_MESSAGES messages
# (four full batches). Small batches (a moderate rate) keep flowing while the subscriber's acks wait for its fsync.
WINDOW = 16
WINDOW_MESSAGES = 1024
PREVIEW_MESSAGES = 4096      # messages a worker holds from memory (previews); past it, it reads the store
PREVIEW_BYTES = 8 << 20      # and their bodies' bytes


def batches(owed: list[tuple[int, bytes]], size: int, max_bytes: int) -> list[list[tuple[int, bytes]]]:
    """``owed`` cut in order into batches of at most ``size`` messages and about ``max_bytes`` of bodies."""
    out: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    used = 0
    for item in owed:
        if current and (len(current) >= size or used + len(item[1]) > max_bytes):
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += len(item[1])
    if current:
        out.append(current)
    return out


def failed(future: asyncio.Future[Any]) -> bool:
    """Whether ``future`` is done without a result (cancelled or failed)."""
    return future.done() and (future.cancelled() or future.exception() is not None)


@dataclass(slots=True)
class Window:
    """A service's stream's batches sent to the subscriber's sidecar and not yet answered, oldest first."""

    sent: deque[tuple[list[tuple[int, bytes]], asyncio.Future[tuple[list[Outcome], str | None]]]] = field(
        default_factory=deque)
    last: int | None = None   # the seq the newest batch sent ended with (None: the next starts a new run)
    messages: int = 0         # in the batches sent

    def full(self, adding: int) -> bool:
        return bool(self.sent) and (len(self.sent) >= WINDOW or self.messages + adding > WINDOW_MESSAGES)


@dataclass(slots=True)
class StreamWorker:
    row: StreamRow
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    floor: int = 0                  # deliveries at or below were evicted by retention: skip them
    in_flight: int | None = None
    attempts: int = 0
    last_error: str | None = None
    state: str = "idle"             # idle | delivering | backing-off | waiting
    delivered: int = 0
    task: asyncio.Task[None] | None = None
    # deliveries handed over as they were written, not yet read from the store: (the stream's delivery before
    # them, the deliveries, their commit: None when committed); and the commits early deliveries' acks wait for:
    # (last delivery, commit)
    previews: deque[tuple[int, list[tuple[int, bytes]], asyncio.Future[Any] | None]] = field(default_factory=deque)
    previewed: int = 0              # messages in ``previews``
    previewed_bytes: int = 0        # their bodies' bytes
    gates: deque[tuple[int, asyncio.Future[Any]]] = field(default_factory=deque)
    rewind: bool = False            # a previewed batch's commit failed: read the stream again from the start
    # the store may hold deliveries no preview brought (the worker is new, previews were dropped, a replay or a
    # wake-up wrote some): read it before going idle; a worker fed by previews alone skips that read
    unread: bool = True

    def preview(self, tail: int, stored: list[tuple[int, bytes]], commit: asyncio.Future[Any] | None = None) -> None:
        """``stored`` were written after the delivery ``tail``: by the inbox, with their commit still running (see
        :mod:`sidecar.messaging.inbox`), or by a publish, committed (``commit`` None). A worker that falls this far
        behind reads them from the store."""
        size = sum(len(body) for _, body in stored)
        if self.previewed + len(stored) > PREVIEW_MESSAGES or self.previewed_bytes + size > PREVIEW_BYTES:
            self._drop_previews()
        self.previews.append((tail, stored, commit))
        self.previewed += len(stored)
        self.previewed_bytes += size
        if commit is not None:
            commit.add_done_callback(self._committed)
        self.wakeup.set()

    def _committed(self, commit: asyncio.Future[Any]) -> None:
        if failed(commit):
            self._drop_previews()
            self.rewind = True
            self.wakeup.set()

    def take_preview(self, after: int, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """The previews that follow ``after`` (the last delivery read) directly, each the one before, oldest first,
        up to about ``limit`` messages (a preview is not cut); [] when none does, and then every preview is
        dropped: the store has the rest in order."""
        taken: list[tuple[int, bytes]] = []
        while self.previews:
            tail, stored, commit = self.previews[0]
            fresh = [item for item in stored if item[0] > after]
            if fresh and (after < tail or (commit is not None and failed(commit))):
                if not taken:
                    self._drop_previews()
                break   # a gap: what was taken is in order; the next call drops the rest for the store
            if taken and len(taken) + len(fresh) > limit:
                break
            self.previews.popleft()
            self.previewed -= len(stored)
            self.previewed_bytes -= sum(len(body) for _, body in stored)
            if not fresh:
                continue
            if commit is not None and not commit.done():
                self.gates.append((stored[-1][0], commit))
            taken += fresh
            after = fresh[-1][0]
        return taken

    def _drop_previews(self) -> None:
        self.previews.clear()
        self.previewed = self.previewed_bytes = 0
        self.unread = True

    def gate_for(self, seq: int) -> asyncio.Future[Any] | None:
        """The running commit a delivery's ack must follow; None when it is committed (or was read from the store)."""
        while self.gates and self.gates[0][1].done():
            self.gates.popleft()
        for last, commit in self.gates:
            if seq <= last:
                return commit
        return None

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.row.topic, "subscriber": self.row.subscriber, "path": self.row.path,
                "state": self.state, "inFlight": self.in_flight, "attempts": self.attempts,
                "lastError": self.last_error, "delivered": self.delivered}


class Streams:
    def __init__(self, ctx: MessagingContext, courier: Courier) -> None:
        self.ctx = ctx
        self.courier = courier
        settings = ctx.settings
        self.policy = DeliveryPolicy(settings.max_attempts, float(settings.retry_backoff.base),
                                     float(settings.retry_backoff.max))
        self.workers: dict[int, StreamWorker] = {}
        self._catalog_event = asyncio.Event()
        self._acks: Acks | None = None

    @property
    def acks(self) -> Acks:
        if self._acks is None:
            assert self.ctx.writer is not None
            self._acks = Acks(self.ctx.writer)
        return self._acks

    def flush_acks(self) -> None:
        """Queue the acks still waiting out their delay (messaging is stopping: the writer commits them)."""
        if self._acks is not None:
            self._acks.flush()

    def worker(self, row: StreamRow, unread: bool = True) -> StreamWorker:
        """The stream's worker, started if new, told to look for work: in the store (``unread``), or only in what
        is handed to it (its previews)."""
        worker = self.workers.get(row.id)
        if worker is None:
            worker = self.workers[row.id] = StreamWorker(row)
            worker.task = asyncio.create_task(self._run(worker), name=f"stream:{row.topic}:{row.subscriber}")
        else:
            worker.row = row
        worker.unread |= unread
        worker.wakeup.set()
        return worker

    def wake(self, streams: list[int]) -> None:
        for stream in streams:
            worker = self.workers.get(stream)
            if worker is not None:
                worker.unread = True
                worker.wakeup.set()

    def offer_many(self, offers: dict[int, tuple[int, list[tuple[int, bytes]]]]) -> None:
        """Published messages, committed, handed to their streams' workers: per stream, the deliveries written
        after its delivery ``tail``, ascending. A worker that has read that far sends them without reading the
        store."""
        for stream, (tail, deliveries) in offers.items():
            worker = self.workers.get(stream)
            if worker is not None:
                worker.preview(tail, deliveries)

    def drop(self, stream: int) -> None:
        """Stop a stream's worker (the stream is being forgotten)."""
        worker = self.workers.pop(stream, None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [w.task for w in self.workers.values() if w.task is not None]

    def to_json(self) -> list[dict[str, Any]]:
        return [w.to_json() for w in sorted(self.workers.values(), key=lambda w: w.row.id)]

    async def _run(self, worker: StreamWorker) -> None:
        """The stream's task: a bug in one delivery is logged and the stream starts over from what it owes."""
        while not self.ctx.closing.is_set():
            try:
                await self._loop(worker)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.ctx.counters["stream_errors"] += 1
                log.exception("messaging: stream %s → %s failed; resuming", worker.row.topic, worker.row.subscriber)
                worker.state = "failed"
                await self.ctx.clock.sleep(1.0)

    async def _loop(self, worker: StreamWorker) -> None:
        store = self.ctx.store
        assert store is not None
        after = 0
        window = Window()
        worker.unread = True
        try:
            while not self.ctx.closing.is_set():
                worker.wakeup.clear()
                if worker.rewind:
                    worker.rewind, after, worker.unread = False, 0, True
                limit = max(PAGE, worker.row.bulk)
                page = worker.take_preview(after, limit)
                if not page and worker.unread:
                    worker.unread = False   # cleared before the read: what is written during it sets it again
                    page = await self.ctx.read(store.r_page, worker.row.id, after, limit)
                    worker.unread |= len(page) >= limit
                if not page:
                    while window.sent:
                        await self._settle_oldest(worker, window)
                    if not worker.wakeup.is_set():
                        worker.state = "idle"
                        await worker.wakeup.wait()
                    continue
                after = page[-1][0]
                owed = [(seq, body) for seq, body in page if seq > worker.floor]
                # another sidecar (its readers, its inbox): batches; an app: one message per POST, or its bulk size
                bulk = self.courier.batch_size(worker.row)
                pipelined = self.courier.pipelined(worker.row)
                for batch in batches(owed, bulk, MAX_BULK_BYTES) if bulk else ([item] for item in owed):
                    if pipelined:
                        await self._send(worker, window, batch)
                    else:
                        await self._deliver(worker, batch, bulk > 0)
        finally:
            for batch, task in window.sent:
                task.cancel()
                store.in_flight.difference_update((worker.row.id, seq) for seq, _ in batch)

    async def _send(self, worker: StreamWorker, window: Window, batch: list[tuple[int, bytes]]) -> None:
        """A batch of a service's stream into the window: sent at once, with the seq the batch before it ended
        with, while the window has room (:meth:`Window.full`); answers are taken oldest first
        (:meth:`_settle_oldest`)."""
        while window.full(len(batch)):
            await self._settle_oldest(worker, window)
        batch = [(seq, body) for seq, body in batch if seq > worker.floor]
        if not batch:
            return
        if not self.courier.reachable(worker.row):
            while window.sent:
                await self._settle_oldest(worker, window)
            await self._deliver(worker, batch, True)   # waits for the subscriber as one batch at a time does
            return
        store = self.ctx.store
        assert store is not None
        store.in_flight.update((worker.row.id, seq) for seq, _ in batch)
        task = asyncio.ensure_future(self.courier.bounded_attempt(worker.row, batch, 1, True, window.last))
        window.sent.append((batch, task))
        window.messages += len(batch)
        window.last = batch[-1][0]
        worker.state, worker.in_flight = "delivering", window.sent[0][0][0][0]

    async def _settle_oldest(self, worker: StreamWorker, window: Window) -> None:
        """The oldest batch's answer: all stored, or (any other answer) that batch goes again on its own through
        :meth:`_deliver`, and the batches after it in the window follow it in order, each in turn. The receiver
        stores a batch only after the one before it, so what it acked after a failure is in order too."""
        ctx = self.ctx
        store = ctx.store
        assert store is not None
        batch, task = window.sent.popleft()
        window.messages -= len(batch)
        try:
            outcomes, _ = await task
        except Exception:
            outcomes = [Outcome.FAILED] * len(batch)
        if all(outcome is Outcome.ACK for outcome in outcomes):
            self.acks.add(worker.row.id, [seq for seq, _ in batch])
            worker.delivered += len(batch)
            ctx.counters["delivered"] += len(batch)
        else:
            for seq, _ in batch:
                store.in_flight.discard((worker.row.id, seq))
            await self._deliver(worker, batch, True)
            # the batches sent after it went with an "after" the receiver may have refused: each is settled in turn
            # (stored, or sent again on its own) before a new run starts. A batch of the next run, sent without an
            # "after", could otherwise be stored first and move the receiver's mark past them: it would take them
            # for duplicates, acknowledge them and drop them.
            while window.sent:
                await self._settle_oldest(worker, window)
            window.last = None   # the next batch sent starts a new run: no "after" to wait for
        worker.in_flight = window.sent[0][0][0][0] if window.sent else None

    async def _deliver(self, worker: StreamWorker, batch: list[tuple[int, bytes]], bulk: bool) -> None:
        """One message, or with ``bulk`` a batch in one POST whose messages each settle by their own status; those
        to retry go again (alone in a smaller batch) before anything after the batch is delivered, so a stream's
        order holds message by message, or batch by batch."""
        ctx = self.ctx
        store, writer = ctx.store, ctx.writer
        assert store is not None and writer is not None
        stream = worker.row.id
        attempts = {seq: Attempts() for seq, _ in batch}
        settled: set[int] = set()
        pending = batch
        worker.in_flight, worker.attempts, worker.last_error = batch[0][0], 0, None
        try:
            while pending and not ctx.closing.is_set():
                pending = [(seq, body) for seq, body in pending if seq > worker.floor]  # retention took the rest
                if not pending:
                    return
                if not self.courier.reachable(worker.row):
                    worker.state = "waiting"
                    await self.wait_catalog(1.0)
                    continue
                worker.state = "delivering"
                # only an attempt on the wire protects a delivery from retention; a waiting one may be evicted
                store.in_flight.update((stream, seq) for seq, _ in pending)
                number = max(attempts[seq].total for seq, _ in pending) + 1
                outcomes, error = await self.courier.bounded_attempt(worker.row, pending, number, bulk)
                retry: list[tuple[int, bytes]] = []
                delay, unreachable = 0.0, False
                for (seq, body), outcome in zip(pending, outcomes, strict=True):
                    tried = attempts[seq]
                    step = tried.next_step(self.policy, outcome, ctx.rng.random())
                    if isinstance(step, Ack):
                        settled.add(seq)
                        self._settle_after(worker, seq)
                        worker.delivered += 1
                        ctx.counters["delivered"] += 1
                        if tried.total > 0:
                            ctx.counters["redelivered"] += 1
                    elif isinstance(step, DeadLetter):
                        settled.add(seq)
                        await self._dead_letter(worker, seq, step.reason, tried.counted, error)
                    else:
                        assert isinstance(step, DeliveryRetry)
                        store.in_flight.discard((stream, seq))
                        retry.append((seq, body))
                        delay = max(delay, step.delay)
                        unreachable |= outcome is Outcome.UNREACHABLE
                        ctx.counters["retries" if step.counted else "waits"] += 1
                worker.attempts = max(a.total for a in attempts.values())
                pending = retry
                if pending:
                    worker.in_flight, worker.last_error, worker.state = pending[0][0], error, "backing-off"
                    if unreachable:
                        await self.wait_catalog(delay)
                    else:
                        await ctx.clock.sleep(delay)
        finally:
            worker.in_flight = None
            for seq, _ in batch:
                if seq not in settled:
                    store.in_flight.discard((stream, seq))

    def _settle_after(self, worker: StreamWorker, seq: int) -> None:
        """An ack, written once the delivery itself is committed (it may have been delivered early)."""
        gate = worker.gate_for(seq)
        if gate is None:
            self.acks.add(worker.row.id, (seq,))
            return

        def settle(commit: asyncio.Future[Any]) -> None:
            if not failed(commit) and not self.ctx.closing.is_set():
                self.acks.add(worker.row.id, (seq,))
        gate.add_done_callback(settle)

    async def _dead_letter(self, worker: StreamWorker, seq: int, reason: str, attempts: int,
                           error: str | None) -> None:
        writer = self.ctx.writer
        assert writer is not None
        now_ms = self.ctx.now_ms()
        stream = worker.row.id

        def op(s: Store) -> bool:
            s.in_flight.discard((stream, seq))
            return s.w_dead_letter(stream, seq, reason, attempts, error, now_ms)
        await writer.submit(op)
        self.ctx.counters[f"dead_lettered:{reason}"] += 1
        log.warning("message dead-lettered", extra=fields(topic=worker.row.topic, subscriber=worker.row.subscriber,
                                                          seq=seq, reason=reason, attempts=attempts, error=error))

    def evicted(self, evicted: list[Evicted]) -> None:
        """Retention dead-lettered these deliveries (the writer's callback): their streams skip them."""
        by_reason: Counter[str] = Counter()
        for item in evicted:
            worker = self.workers.get(item.stream)
            if worker is not None and item.seq > worker.floor:
                worker.floor = item.seq
            by_reason[item.reason] += 1
        settings = self.ctx.settings
        for reason, count in by_reason.items():
            self.ctx.counters[f"dead_lettered:{reason}"] += count
            log.warning("messages fell out of retention and were dead-lettered",
                        extra=fields(reason=reason, count=count, age=settings.retention.age.to_text(),
                                     bytes=settings.retention.bytes))

    def catalog_changed(self, snapshot: Any) -> None:
        """The catalog's listener: waiting streams look again."""
        event, self._catalog_event = self._catalog_event, asyncio.Event()
        event.set()

    async def wait_catalog(self, timeout: float) -> None:
        # asyncio.wait, not wait_for: on 3.11 wait_for loses a cancellation that arrives as the event is set (the
        # drain changes the catalog just before messaging.stop cancels the streams), and the stream would go on
        waiter = asyncio.ensure_future(self._catalog_event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
