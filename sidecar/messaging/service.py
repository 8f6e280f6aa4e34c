"""Messaging, wired together: each part does one job, and this module builds them, starts them in order and stops
them in reverse. The app, the API routes, the admin and the config applier talk to :class:`Messaging` only.

    messaging = Messaging(config, catalog, registry, clock, identity_store)
    messaging.bind(replication.local_changed)
    await messaging.start(outbound=HostPort("127.0.0.1", 15001))
    ...
    await messaging.stop()

The parts
---------
================  ===============================================================================
context           shared state: config, clock, catalog, identity, store + writer, HTTP clients, counters
requests          request-response through the mesh
publisher         publish: admission (429 when full), one commit per group of publishes, 202 once durable
streams           one worker per delivery stream, the redelivery core's driver
courier           one delivery attempt (a batch over mTLS to a node's receiver, or to a local app)
inbox             a publisher's stream received for a local app: stored before the ack, delivered from here
reconcile         subscription book → streams in the store (created, refreshed, forgotten)
local_subs        this node's subscriptions (run-time, configured, SSE readers') and their gossip
topic_log         this node's topic logs, appended on receipt and tailed by SSE readers
readers           SSE readers and the node stream subscription they hold
receiver          the loopback server the mTLS inbound hands sidecar-to-sidecar deliveries to
deadletters       list, replay, purge
================  ===============================================================================

Who may do what (zero trust between members): a message's ``service`` (the sender) is the service this sidecar's
certificate names, the one identity peers can check. Topic scopes (:mod:`sidecar.messaging.scopes`) are checked on
publish, on subscribe and before a stream is made for a subscriber; the receiver's own rules are in
:mod:`sidecar.messaging.receiver`.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import Subscription
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.log import fields
from sidecar.messaging import requests
from sidecar.messaging.context import (
    DELIVER_PREFIX,
    INTERNAL_PREFIX,
    SENDER_HEADER,
    MessagingContext,
    log,
)
from sidecar.messaging.courier import Courier
from sidecar.messaging.deadletters import DeadLetters
from sidecar.messaging.envelope import BulkEntry, MessageBody
from sidecar.messaging.inbox import Inbox
from sidecar.messaging.local_subs import LocalSubscriptions
from sidecar.messaging.publisher import Publisher
from sidecar.messaging.readers import StreamReaders
from sidecar.messaging.receiver import Receiver
from sidecar.messaging.reconcile import Reconciler
from sidecar.messaging.scopes import TopicScopes
from sidecar.messaging.store import Store
from sidecar.messaging.streams import Streams
from sidecar.messaging.subscriptions import SubscriptionBook
from sidecar.messaging.topic_log import TopicLog
from sidecar.messaging.writer import Writer
from sidecar.proxy import RequestHead, Target
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reloader import IdentityStore

__all__ = ["DELIVER_PREFIX", "INTERNAL_PREFIX", "SENDER_HEADER", "Messaging"]

HOUSEKEEPING = 1.0           # seconds between retention checks (age) when nothing is written
REFRESH_EVERY = 30           # housekeeping ticks between reconciliations (streams' last-seen refresh, forgetting)


class Messaging:
    def __init__(self, config: Config, catalog: MeshCatalog, registry: LocalRegistry, clock: Clock,
                 identity: IdentityStore | None = None, rng: random.Random | None = None) -> None:
        ctx = self.ctx = MessagingContext(config, catalog, registry, clock, identity, rng)
        self.book = SubscriptionBook(config.node.name)
        self.topic_log = TopicLog(ctx)
        self.courier = Courier(ctx, self.topic_log, self.book)
        self.streams = Streams(ctx, self.courier)
        self.publisher = Publisher(ctx, self.streams)
        self.inbox = Inbox(ctx, self.book, self.streams)
        self.courier.local_inbox = self.inbox.receive
        self.reconciler = Reconciler(ctx, self.book, self.streams)
        self.local = LocalSubscriptions(ctx, self.book, self.reconciler)
        self.readers = StreamReaders(ctx, self.local, self.topic_log)
        self.receiver = Receiver(ctx, self.readers, self.topic_log, self.inbox)
        self.dead = DeadLetters(ctx, self.streams)
        self._tasks: list[asyncio.Task[None]] = []

    def bind(self, on_local_change: Callable[[], None]) -> None:
        """Whom to tell after this node's subscriptions change. Bound after construction because of a cycle: the
        catalog replication that gossips the subscriptions is built with this object's ``local_subscriptions``."""
        self.local.on_local_change = on_local_change

    # ------------------------------------------------------------------------------------ shared state, read

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def scopes(self) -> TopicScopes:
        return self.ctx.scopes

    @property
    def store(self) -> Store | None:
        return self.ctx.store

    @property
    def writer(self) -> Writer | None:
        return self.ctx.writer

    @property
    def counters(self) -> Counter[str]:
        return self.ctx.counters

    @property
    def started(self) -> bool:
        return self.ctx.started

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, outbound: HostPort | None) -> None:
        """Open the store, start the writer, the receiver, this node's subscriptions and a task per stream."""
        ctx = self.ctx
        store = await ctx.open(outbound, self.streams.evicted)
        await self.receiver.start()
        await self.local.load()
        ctx.catalog.listeners.append(self.streams.catalog_changed)
        self.reconciler.load()
        ctx.started = True
        self._tasks.append(asyncio.create_task(self.reconciler.run(), name="messaging-reconcile"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="messaging-housekeeping"))
        log.info("messaging ready", extra=fields(store=store.path, pending=store.pending,
                                                 streams=len(self.streams.workers)))

    async def stop(self) -> None:
        """Stop the streams (in-flight deliveries are cut: they are redelivered after a restart), commit what is
        queued, close the clients, the receiver and the store."""
        ctx = self.ctx
        ctx.closing.set()
        if ctx.catalog.listeners.count(self.streams.catalog_changed):
            ctx.catalog.listeners.remove(self.streams.catalog_changed)
        tasks = [*self._tasks, *self.streams.tasks()]
        for task in tasks:
            task.cancel()
        self.topic_log.wake_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.streams.flush_acks()
        await self.receiver.stop()
        await ctx.close()

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await self.ctx.clock.sleep(HOUSEKEEPING)
            ticks += 1
            if self.ctx.writer is not None:
                self.ctx.writer.tick()
            if ticks % REFRESH_EVERY == 0:
                self.reconciler.soon()

    async def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's topic scopes and ``subscriptions`` (and ``services``, whose first is their
        default owner). A stream no one wants any more keeps collecting, as one whose subscriber's node died,
        until ``messaging.retention.age`` forgets it."""
        ctx = self.ctx
        if config.messaging.topics != ctx.settings.topics or config.messaging.default != ctx.settings.default:
            # scopes apply from the next publish, subscription and delivery; streams to subscribers they no longer
            # allow wait (and are forgotten after retention.age), open SSE readers keep reading until they leave
            ctx.scopes = TopicScopes(config.messaging)
            ctx.settings = config.messaging
            self.reconciler.soon()
            self.streams.catalog_changed(None)
        old, ctx.config = ctx.config, config
        await self.local.reconfigure(old, config)

    # ------------------------------------------------------------------------------------ the app's API

    async def send(self, service: str, body: MessageBody, sender_header: str | None = None,
                   trace: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return await requests.send(self.ctx, service, body, sender_header, trace)

    async def publish(self, topic: str, body: MessageBody, sender_header: str | None = None,
                      raw: bytes | None = None) -> str:
        """The message's id once it is stored durably; ``raw``: the app's JSON of ``body``, stored as it is."""
        return await self.publisher.publish(topic, body, sender_header, raw)

    async def publish_many(self, topic: str, entries: list[BulkEntry], sender_header: str | None = None) -> list[str]:
        """A bulk publish: the messages' ids once all are stored durably, in one commit (all or nothing)."""
        return await self.publisher.publish_many(topic, entries, sender_header)

    async def subscribe(self, topic: str, path: str, service: str | None = None, bulk: int = 0) -> Subscription:
        return await self.local.subscribe(topic, path, service, bulk)

    def stream(self, topic: str, last_event_id: int | None, sender_header: str | None = None
               ) -> AbstractAsyncContextManager[AsyncIterator[list[tuple[int, bytes]]]]:
        return self.readers.stream(topic, last_event_id, sender_header)

    def subscriptions_json(self) -> list[dict[str, Any]]:
        return self.book.to_json()

    # ------------------------------------------------------------------------------------ gossip and inbound

    def local_subscriptions(self) -> tuple[Subscription, ...]:
        """For the gossiped node state (wire: ``replication.local_subscriptions``)."""
        return self.book.local_tuple()

    def on_remote_subscriptions(self, node: str, subscriptions: tuple[Subscription, ...]) -> None:
        """A peer's subscriptions from gossip (wire: ``replication.subscription_listeners``)."""
        self.reconciler.on_remote_subscriptions(node, subscriptions)

    def internal_route(self, head: RequestHead, caller: PeerIdentity,
                       authorize: Callable[[PeerIdentity, str, str, str], None]) -> Target:
        """For the inbound listener (wire: ``dataplane.routes.internal``): see :meth:`Receiver.route`."""
        return self.receiver.route(head, caller, authorize)

    # ------------------------------------------------------------------------------------ admin

    async def dead_letters(self, limit: int = 100, after: int = 0, topic: str | None = None) -> dict[str, Any]:
        return await self.dead.page(limit, after, topic)

    async def replay(self, ids: list[int] | None) -> dict[str, Any]:
        return await self.dead.replay(ids)

    async def purge(self, ids: list[int] | None) -> dict[str, Any]:
        return await self.dead.purge(ids)

    def status(self) -> dict[str, Any]:
        store, writer = self.ctx.store, self.ctx.writer
        return {
            "pending": store.pending if store else 0,
            "pendingBytes": store.pending_bytes if store else 0,
            "deadLetters": store.dead_letter_count if store else 0,
            "deadLetterBytes": store.dead_letter_bytes if store else 0,
            "deadLettersDropped": store.dead_letters_dropped if store else 0,
            "readers": self.readers.to_json(),
            "commits": writer.commits if writer else 0,
            "operations": writer.operations if writer else 0,
            # group commit's effect: fsyncs per message made durable (published here, or received for readers)
            "fsyncs": store.fsyncs if store else 0,
            "durableMessages": store.durable_messages if store else 0,
            "fsyncsPerMessage": round(store.fsyncs / store.durable_messages, 4) if store and store.durable_messages
            else None,
            "streams": self.streams.to_json(),
            "subscriptions": self.subscriptions_json(),
            "counters": dict(sorted(self.ctx.counters.items())),
        }
