"""What the parts of messaging share: the configuration, the clock, the catalog, this node's identity, the store
with its writer and reader thread, the HTTP client, the counters, and the answers to "who sends" and "who may
receive" that several parts ask.

Built by :class:`sidecar.messaging.service.Messaging` and handed to each part; :meth:`open` and :meth:`close`
are its lifecycle (the store, the writer, the client).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import Subscription
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.errors import InvalidArgument, PermissionDenied, Unavailable
from sidecar.log import fields
from sidecar.messaging.scopes import TopicScopes
from sidecar.messaging.store import Evicted, Store, StoreLimits
from sidecar.messaging.subscriptions import subscriber_node
from sidecar.messaging.timing import ENV as TIMING_ENV
from sidecar.messaging.timing import Timing
from sidecar.messaging.writer import Writer
from sidecar.proxy.client import HttpClient
from sidecar.tls.reloader import IdentityStore

log = logging.getLogger("sidecar.messaging")
T = TypeVar("T")

SENDER_HEADER = "x-sidecar-service"         # the app may say which of its node's services sends
DELIVER_PREFIX = "/.sidecar/v1/deliver/"   # sidecar-internal: intercepted by the inbound, never an app's path
DELIVER_BATCH_PREFIX = "/.sidecar/v1/deliver-batch/"   # the same, a JSON array of messages per request
INTERNAL_PREFIX = "/.sidecar/"


class MessagingContext:
    def __init__(self, config: Config, catalog: MeshCatalog, registry: LocalRegistry, clock: Clock,
                 identity: IdentityStore | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.settings = config.messaging
        self.scopes = TopicScopes(config.messaging)
        self.catalog = catalog
        self.registry = registry
        self.clock = clock
        self.identity = identity
        self.rng = rng or random.Random()
        self.node = config.node.name
        self.counters: Counter[str] = Counter()
        self.store: Store | None = None
        self.writer: Writer | None = None
        self.outbound: HostPort | None = None
        # to the local apps, to the mesh through this sidecar's outbound listener, and over mTLS straight to peer
        # sidecars' inbound listeners
        self.client: HttpClient | None = None
        self.closing = asyncio.Event()
        self.started = False
        self.timing = Timing(None, self.node)
        self._reader: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    async def open(self, outbound: HostPort | None, on_evicted: Callable[[list[Evicted]], None]) -> Store:
        """Open the store, start the writer (told of retention's evictions) and the HTTP client."""
        self.outbound = outbound
        self.timing = Timing(os.environ.get(TIMING_ENV), self.node)
        limits = StoreLimits(int(self.settings.retention.age * 1000), self.settings.retention.bytes,
                             self.settings.max_dead_letters, self.settings.max_dead_letter_bytes)
        store = self.store = await asyncio.to_thread(Store, self.config.node.effective_data_dir, limits)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="messaging-reader")
        self.writer = Writer(store, self.clock, on_evicted)
        self.writer.start()
        self.client = HttpClient()
        return store

    async def close(self) -> None:
        """Commit what is queued, close the client and the store (the parts' tasks are stopped first)."""
        if self.writer is not None:
            await self.writer.stop()
        if self.client is not None:
            self.client.close()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
        self.timing.close()
        self.started = False

    def require(self) -> tuple[Store, Writer]:
        if not self.started or self.store is None or self.writer is None or self.closing.is_set():
            raise Unavailable("messaging is not running (starting or shutting down)")
        return self.store, self.writer

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ``Store.r_*`` method on the reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def now_ms(self) -> int:
        return int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------------------------ names

    def default_service(self) -> str | None:
        if self.config.services:
            return self.config.services[0].name
        instances = sorted(self.registry.instances(), key=lambda i: i.id)
        return instances[0].name if instances else None

    def sender(self, header: str | None) -> str:
        """Who sends. With mTLS: the service this sidecar's certificate names, since that is what a receiving
        sidecar can check (an ``x-sidecar-service`` header naming another service is refused with 403). Without:
        the header when it names a service registered here, else this node's first service (the config's first,
        else the first registered), else the node name."""
        own = self.identity.identity.service if self.identity is not None else None
        if header and header != own:
            names = {i.name for i in self.registry.instances()}
            if header not in names:
                raise InvalidArgument(f"{SENDER_HEADER} names {header!r}, which is not registered on this node",
                                      {"header": SENDER_HEADER, "registered": sorted(names)})
            if own is not None:
                raise PermissionDenied(
                    f"{SENDER_HEADER} names {header!r}, but this sidecar's certificate names {own!r}: a message's "
                    "sender is the service its sidecar can prove", {"header": SENDER_HEADER, "identity": own})
            return header
        return own or self.default_service() or self.node

    def scoped_in(self, subscription: Subscription) -> bool:
        """Whether the topic's scope lets the subscription's service subscribe; logs a refusal."""
        if self.scopes.may_subscribe(subscription.service, subscription.topic):
            return True
        log.warning("subscription not registered: the topic's scope does not list the service",
                    extra=fields(service=subscription.service, topic=subscription.topic,
                                 rule=self.scopes.where(subscription.topic, "subscribers")))
        return False

    def may_receive(self, topic: str, subscriber: str) -> bool:
        """Whether ``subscriber`` (a service, or a node's stream readers) may get ``topic``'s messages. A node's
        readers are checked by their own sidecar when they subscribe; here the node must host a service the scope
        lists, as the catalog says (a first filter: before a delivery the node also proves it by its certificate,
        :meth:`sidecar.messaging.courier.Courier.withheld`)."""
        if self.scopes.open:
            return True
        node = subscriber_node(subscriber)
        if node is None:
            return self.scopes.may_subscribe(subscriber, topic)
        if node == self.node:
            return True
        hosted = {i.name for i in self.catalog.snapshot().instances if i.node == node}
        return any(self.scopes.may_subscribe(service, topic) for service in hosted)
