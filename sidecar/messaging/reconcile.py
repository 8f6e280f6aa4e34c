"""From the subscription book to the streams: every (topic, subscriber) the mesh wants, and the topics' scopes
allow, gets a stream in the store and a worker; a stream no one has wanted for longer than
``messaging.retention.age`` is forgotten and what it still owed is dead-lettered.

A stream whose subscription disappears from the catalog (its node died) is kept and keeps collecting: the node
may come back within retention and then loses nothing. An inbox stream (a publisher's, received here for a local
app) is kept while the local subscription is, and forgotten like the others once it has been gone that long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.catalog.model import Subscription
from sidecar.errors import Unavailable
from sidecar.log import fields
from sidecar.messaging.context import MessagingContext, log
from sidecar.messaging.store import Store, StreamRow
from sidecar.messaging.streams import Streams
from sidecar.messaging.subscriptions import SubscriptionBook, Wanted, inbox_service

REFRESH_MS = 60_000          # a stream's last-seen time is rewritten at most this often


class Reconciler:
    def __init__(self, ctx: MessagingContext, book: SubscriptionBook, streams: Streams) -> None:
        self.ctx = ctx
        self.book = book
        self.streams = streams
        self._wanted_changed = asyncio.Event()
        self._stream_keys: set[tuple[str, str]] = set()   # (topic, subscriber) of streams stored or queued

    def load(self) -> None:
        """The streams the store holds from the previous run, each with its worker."""
        store = self.ctx.store
        assert store is not None
        for row in store.streams():
            self._stream_keys.add((row.topic, row.subscriber))
            self.streams.worker(row)
        self._wanted_changed.set()

    def changed(self) -> None:
        """The book changed: streams for new subscriptions at once, the rest at the next reconciliation."""
        self.ensure_new()
        self._wanted_changed.set()

    def soon(self) -> None:
        """Reconcile at the next turn (the periodic refresh, a change of scopes)."""
        self._wanted_changed.set()

    def on_remote_subscriptions(self, node: str, subscriptions: tuple[Subscription, ...]) -> None:
        """A peer's subscriptions from gossip (wire: ``replication.subscription_listeners``)."""
        if self.book.set_remote(node, subscriptions):
            self.changed()
            self.streams.catalog_changed(None)  # streams waiting for a subscriber (a stream reader come back) retry

    def ensure_new(self) -> None:
        """Queue a new stream for every new wanted subscription at once, so that a publish that comes after the
        subscription became known is queued after its stream (the writer keeps the order)."""
        writer = self.ctx.writer
        if not self.ctx.started or writer is None or self.ctx.closing.is_set():
            return
        now_ms = self.ctx.now_ms()
        for key, want in self.wanted().items():
            if key in self._stream_keys:
                continue
            self._stream_keys.add(key)
            writer.submit(_ensure(want, now_ms)).add_done_callback(self._stream_ready)

    def _stream_ready(self, future: asyncio.Future[tuple[StreamRow, bool]]) -> None:
        if future.cancelled() or future.exception() is not None or self.ctx.closing.is_set():
            return
        row, created = future.result()
        if created:
            log.info("new subscription stream", extra=fields(topic=row.topic, subscriber=row.subscriber,
                                                             path=row.path))
        self.streams.worker(row)

    async def run(self) -> None:
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            try:
                await self.reconcile()
            except Unavailable:
                return
            except Exception:
                log.exception("messaging: reconciling the subscriptions failed")

    async def reconcile(self) -> None:
        store, writer = self.ctx.require()
        now_ms = self.ctx.now_ms()
        wanted = self.wanted()
        held = {(r.topic, r.subscriber): r for r in store.streams()}
        for key, want in wanted.items():
            found = held.get(key)
            if (found is None or found.path != want.path or found.bulk != want.bulk
                    or now_ms - found.last_seen_ms > REFRESH_MS):
                self._stream_keys.add(key)
                row, created = await writer.submit(_ensure(want, now_ms))
                if created:
                    log.info("new subscription stream", extra=fields(topic=row.topic, subscriber=row.subscriber,
                                                                     path=row.path))
                found = row
            self.streams.worker(found)
        age_ms = int(self.ctx.settings.retention.age * 1000)
        for key, row in held.items():
            service = inbox_service(row.subscriber)
            if service is not None and (service, row.topic) in self.book.local:
                continue  # an inbox stream lives while its local subscription does (refreshed by each batch)
            if key not in wanted and now_ms - row.last_seen_ms > age_ms:
                self.streams.drop(row.id)
                self._stream_keys.discard(key)
                owed = await writer.submit(_forget(row.id, now_ms))
                self.ctx.counters["dead_lettered:unsubscribed"] += owed
                log.warning("subscription stream forgotten: not seen for longer than messaging.retention.age",
                            extra=fields(topic=row.topic, subscriber=row.subscriber, dead_lettered=owed))

    def wanted(self) -> dict[tuple[str, str], Wanted]:
        """The streams the mesh wants that the topics' scopes allow."""
        wanted = self.book.wanted()
        if self.ctx.scopes.open:
            return wanted
        return {key: want for key, want in wanted.items() if self.ctx.may_receive(want.topic, want.subscriber)}


def _ensure(want: Wanted, now_ms: int) -> Callable[[Store], tuple[StreamRow, bool]]:
    return lambda s: s.w_ensure_stream(want.topic, want.subscriber, want.path, now_ms, want.bulk)


def _forget(stream: int, now_ms: int) -> Callable[[Store], int]:
    return lambda s: s.w_forget_stream(stream, now_ms)
