"""This node's subscriptions: made by the app at run time (kept in the store across restarts), by the
configuration's ``subscriptions`` (reloadable), and by SSE readers (a node stream subscription that lives while
the topic has readers here). Every change is told to the reconciler and gossiped (``on_local_change``).
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.catalog.model import NODE_STREAM, Subscription
from sidecar.config.model import MAX_BULK_MESSAGES, Config
from sidecar.errors import InvalidArgument
from sidecar.log import fields
from sidecar.messaging.context import INTERNAL_PREFIX, MessagingContext, log
from sidecar.messaging.envelope import check_topic
from sidecar.messaging.reconcile import Reconciler
from sidecar.messaging.store import Store
from sidecar.messaging.subscriptions import SubscriptionBook


class LocalSubscriptions:
    def __init__(self, ctx: MessagingContext, book: SubscriptionBook, reconciler: Reconciler) -> None:
        self.ctx = ctx
        self.book = book
        self.reconciler = reconciler
        # told after a change of this node's subscriptions (replication.local_changed, to gossip them)
        self.on_local_change: Callable[[], None] | None = None

    async def load(self) -> None:
        """The run-time subscriptions the store kept, then the configuration's."""
        ctx = self.ctx
        store, writer = ctx.store, ctx.writer
        assert store is not None and writer is not None
        for service, topic, path, bulk in await ctx.read(store.r_local_subs):
            if service == NODE_STREAM:  # its readers left with the previous run; a reader that comes back renews it
                await writer.submit(_unsubscribe(service, topic))
            elif ctx.scoped_in(Subscription(service, topic, path, bulk)):
                self.book.add_local(Subscription(service, topic, path, bulk))
        for sub in ctx.config.subscriptions:
            owner = sub.service or ctx.default_service()
            if owner is None:
                log.warning("subscription not registered: no local service to receive it",
                            extra=fields(topic=sub.topic, path=sub.path))
                continue
            if ctx.scoped_in(Subscription(owner, sub.topic, sub.path, sub.bulk_size)):
                self.book.add_local(Subscription(owner, sub.topic, sub.path, sub.bulk_size))

    def _changed(self) -> None:
        self.reconciler.changed()
        if self.on_local_change is not None:
            self.on_local_change()

    async def subscribe(self, topic: str, path: str, service: str | None = None, bulk: int = 0) -> Subscription:
        """A push subscription of a local service (default: this node's first), kept across restarts; ``bulk``
        messages per POST with bulk delivery (0: one ServiceMessage per POST)."""
        ctx = self.ctx
        ctx.require()
        check_topic(topic)
        if not path.startswith("/"):
            raise InvalidArgument(f"path must start with '/' (got {path!r})", {"field": "path"})
        if path.startswith(INTERNAL_PREFIX):
            raise InvalidArgument(f"paths under {INTERNAL_PREFIX} are the sidecars' own (got {path!r})",
                                  {"field": "path"})
        if service is None:
            service = ctx.default_service()
            if service is None:
                raise InvalidArgument("no service is registered on this node: register one, or name it in service",
                                      {"field": "service"})
        elif service not in {i.name for i in ctx.registry.instances()}:
            raise InvalidArgument(f"service {service!r} is not registered on this node", {"field": "service"})
        if not 0 <= bulk <= MAX_BULK_MESSAGES:
            raise InvalidArgument(f"bulk.maxMessages must be in [1, {MAX_BULK_MESSAGES}] (got {bulk})",
                                  {"field": "bulk.maxMessages"})
        ctx.scopes.check_subscribe(service, topic)
        subscription = Subscription(service, topic, path, bulk)
        await self.add(subscription)
        return subscription

    async def add(self, subscription: Subscription) -> None:
        _, writer = self.ctx.require()
        if self.book.local.get((subscription.service, subscription.topic)) == subscription:
            return
        await writer.submit(lambda s: s.w_local_sub(subscription.service, subscription.topic, subscription.path,
                                                    subscription.bulk))
        self.book.add_local(subscription)
        self._changed()

    async def remove(self, service: str, topic: str) -> None:
        """Drop a local subscription (the book at once, the store through the writer) and gossip the change."""
        if not self.book.remove_local(service, topic):
            return
        if self.on_local_change is not None:
            self.on_local_change()
        self.reconciler.soon()
        writer = self.ctx.writer
        if writer is not None and not self.ctx.closing.is_set():
            await writer.submit(_unsubscribe(service, topic))

    async def reconfigure(self, old: Config, new: Config) -> None:
        """Subscriptions only the old configuration made are dropped, unless the app also made them at run time
        (those are kept); new ones are added; a change is gossiped."""
        before, after = self.configured(old), self.configured(new)
        store = self.ctx.store
        if before == after or not self.ctx.started or store is None or self.ctx.closing.is_set():
            return
        persisted = {(service, topic): Subscription(service, topic, path, bulk)
                     for service, topic, path, bulk in await self.ctx.read(store.r_local_subs)}
        changed = False
        for key in before.keys() - after.keys():
            kept = persisted.get(key)
            changed |= self.book.add_local(kept) if kept is not None else self.book.remove_local(*key)
        for subscription in after.values():
            changed |= self.book.add_local(subscription)
        if changed:
            log.info("subscriptions reloaded", extra=fields(local=len(self.book.local)))
            self._changed()

    def configured(self, config: Config) -> dict[tuple[str, str], Subscription]:
        """The configuration's subscriptions by (service, topic), owners resolved as at start."""
        out: dict[tuple[str, str], Subscription] = {}
        for sub in config.subscriptions:
            owner = sub.service or (config.services[0].name if config.services else self.ctx.default_service())
            if owner is not None and self.ctx.scopes.may_subscribe(owner, sub.topic):
                out[owner, sub.topic] = Subscription(owner, sub.topic, sub.path, sub.bulk_size)
        return out


def _unsubscribe(service: str, topic: str) -> Callable[[Store], None]:
    return lambda s: s.w_remove_local_sub(service, topic)
