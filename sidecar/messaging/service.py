"""The messaging driver: request-response through the mesh, the durable outbox and its delivery streams,
node stream logs for SSE readers, and the receiver of sidecar-to-sidecar deliveries.

    messaging = Messaging(config, catalog, registry, clock, identity_store)
    await messaging.start(outbound=HostPort("127.0.0.1", 15001))
    ...
    await messaging.stop()

Theory of operation
-------------------
* Publish: the message is queued for the writer (group commit) with one delivery row per stream of its topic;
  the 202 waits for that commit. Beyond ``messaging.queue`` the publish is refused with 429.
* One task per stream (topic, subscriber) reads what it owes, oldest first, and has one message in flight.
  Services are reached through this sidecar's own outbound listener with ``Host: SERVICE`` and the subscription's
  path, so mTLS, authorization, balancing among the service's instances (competing consumers), retries and
  tracing apply. Node streams (``node:NAME``) go over mTLS straight to that node's inbound listener at
  :data:`DELIVER_PREFIX`, which the inbound hands to :meth:`Messaging.internal_route` instead of an app.
* The subscriber's answer is classified by :mod:`sidecar.messaging.delivery`; acks and dead letters are written
  through the writer. An ack is not awaited before the next delivery: a ``kill -9`` between the answer and the
  ack's commit redelivers that message (at least once; the window is one commit, a few milliseconds).
* A stream whose subscription disappears from the catalog (its node died) is kept and keeps collecting; it is
  forgotten only after ``retention.age`` without being seen, and what it still owed is dead-lettered.
* Who may do what (zero trust between members): a message's ``service`` (the sender) is the service this sidecar's
  certificate names, the one identity peers can check. Topic scopes (:mod:`sidecar.messaging.scopes`) are checked
  on publish, on subscribe and before a stream is made for a subscriber. A node's stream subscription lives as long
  as it has SSE readers. The receiver of deliveries takes one only from a peer sidecar (never through an app's
  outbound), whose SPIFFE ID is the message's sender, which the authorization rules admit to the services reading
  the topic here, and which the topic's scope lets publish; and only for a topic this node has readers of.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NODE_STREAM, Subscription
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.model import Config
from sidecar.config.values import HostPort
from sidecar.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from sidecar.log import fields
from sidecar.messaging.delivery import Ack, Attempts, DeadLetter, DeliveryPolicy, Outcome, Retry, classify
from sidecar.messaging.envelope import MessageBody, ServiceMessage, check_topic
from sidecar.messaging.scopes import TopicScopes
from sidecar.messaging.store import DeadLetterRow, Evicted, Limits, Store, StreamRow
from sidecar.messaging.subscriptions import SubscriptionBook, Wanted, subscriber_node
from sidecar.messaging.writer import Writer
from sidecar.proxy import RequestHead, Target
from sidecar.tls.context import peer_server_name, service_server_name
from sidecar.tls.errors import PeerRefused, SpiffeIdError
from sidecar.tls.identity import PeerIdentity, SpiffeId
from sidecar.tls.reloader import IdentityStore
from sidecar.web import errors_middleware, json_response

log = logging.getLogger("sidecar.messaging")
T = TypeVar("T")

DELIVER_PREFIX = "/.sidecar/v1/deliver/"   # sidecar-internal: intercepted by the inbound, never an app's path
INTERNAL_PREFIX = "/.sidecar/"
SENDER_HEADER = "x-sidecar-service"         # the app may say which of its node's services sends
_INTERNAL_HEADER = b"x-sidecar-internal"
_CALLER_HEADER = b"x-sidecar-caller"
PAGE = 256                   # deliveries read from the outbox at once per stream
MAX_RESPONSE = 8 << 20       # a request-response answer larger than this is refused (the API takes 1 MiB in)
VERDICT_BYTES = 64 << 10     # of a subscriber's answer, enough to find {"status": "DROP"}
REFRESH_MS = 60_000          # a stream's last-seen time is rewritten at most this often
NODE_PROOF_TTL = 60.0        # seconds a node's proven identity is trusted before its certificate is asked again
HOUSEKEEPING = 1.0           # seconds between retention checks (age) when nothing is written


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

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.row.topic, "subscriber": self.row.subscriber, "path": self.row.path,
                "state": self.state, "inFlight": self.in_flight, "attempts": self.attempts,
                "lastError": self.last_error, "delivered": self.delivered}


def dead_letter_json(row: DeadLetterRow) -> dict[str, Any]:
    try:
        message: Any = json.loads(row.body)
    except ValueError:
        message = row.body.decode("utf-8", "replace")
    return {"id": row.id, "message": message, "topic": row.topic, "subscriber": row.subscriber, "path": row.path,
            "reason": row.reason, "attempts": row.attempts, "lastError": row.last_error, "timestamp": row.at_ms}


def trace_of(raw: bytes) -> dict[str, str]:
    """A stored message's trace context (``metadata.traceparent``/``tracestate``), as request headers."""
    if b'"traceparent"' not in raw:
        return {}
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return {}
    return {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate") and isinstance(v, str)}


class Messaging:
    def __init__(self, config: Config, catalog: MeshCatalog, registry: LocalRegistry, clock: Clock,
                 identity: IdentityStore | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.settings = config.messaging
        self.catalog = catalog
        self.registry = registry
        self.clock = clock
        self.identity = identity
        self.rng = rng or random.Random()
        self.node = config.node.name
        self.book = SubscriptionBook(self.node)
        self.policy = DeliveryPolicy(self.settings.max_attempts, float(self.settings.retry_backoff.base),
                                     float(self.settings.retry_backoff.max))
        self.counters: Counter[str] = Counter()
        self.scopes = TopicScopes(config.messaging)
        # SSE readers on this node: topic → service → open streams; the node's stream subscription to a topic lives
        # while it has readers
        self.readers: dict[str, Counter[str]] = {}
        # told after a change of this node's subscriptions (replication.local_changed, to gossip them): see bind
        self.on_local_change: Callable[[], None] | None = None
        self.store: Store | None = None
        self.writer: Writer | None = None
        self.outbound: HostPort | None = None
        self.workers: dict[int, StreamWorker] = {}
        self._reader: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._mtls: aiohttp.ClientSession | None = None
        self._receiver: web.AppRunner | None = None
        self._receiver_target: Target | None = None
        self._token = secrets.token_urlsafe(32).encode()
        self._catalog_event = asyncio.Event()
        self._log_events: dict[str, asyncio.Event] = {}
        self._reconcile_wanted = asyncio.Event()
        self._stream_keys: set[tuple[str, str]] = set()   # (topic, subscriber) of streams stored or queued
        self._tasks: list[asyncio.Task[None]] = []
        self._node_proofs: dict[tuple[str, str, int], tuple[str, float]] = {}  # (node, host, port) → (service, when)
        self._closing = asyncio.Event()
        self.started = False

    def bind(self, on_local_change: Callable[[], None]) -> None:
        """Whom to tell after this node's subscriptions change. Bound after construction because of a cycle: the
        catalog replication that gossips the subscriptions is built with this object's ``local_subscriptions``."""
        self.on_local_change = on_local_change

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, outbound: HostPort | None) -> None:
        """Open the store, start the writer, the receiver and a task per known stream."""
        from concurrent.futures import ThreadPoolExecutor

        self.outbound = outbound
        limits = Limits(int(self.settings.retention.age * 1000), self.settings.retention.bytes,
                        self.settings.max_dead_letters, self.settings.max_dead_letter_bytes)
        self.store = await asyncio.to_thread(Store, self.config.node.effective_data_dir, limits)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="messaging-reader")
        self.writer = Writer(self.store, self.clock, self._evicted)
        self.writer.start()
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        self._mtls = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30, force_close=False),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        await self._start_receiver()
        for service, topic, path in await self._read(self.store.r_local_subs):
            if service == NODE_STREAM:  # its readers left with the previous run; a reader that comes back renews it
                await self.writer.submit(_unsubscribe(service, topic))
            elif self._scoped_in(Subscription(service, topic, path)):
                self.book.add_local(Subscription(service, topic, path))
        for sub in self.config.subscriptions:
            owner = sub.service or self._default_service()
            if owner is None:
                log.warning("subscription not registered: no local service to receive it",
                            extra=fields(topic=sub.topic, path=sub.path))
                continue
            if self._scoped_in(Subscription(owner, sub.topic, sub.path)):
                self.book.add_local(Subscription(owner, sub.topic, sub.path))
        self.catalog.listeners.append(self._catalog_changed)
        for row in self.store.streams():
            self._stream_keys.add((row.topic, row.subscriber))
            self._worker(row)
        self.started = True
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="messaging-reconcile"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="messaging-housekeeping"))
        self._reconcile_wanted.set()
        log.info("messaging ready", extra=fields(store=self.store.path, pending=self.store.pending,
                                                 streams=len(self.workers)))

    async def stop(self) -> None:
        """Stop the streams (in-flight deliveries are cut: they are redelivered after a restart), commit what is
        queued, close the clients and the store."""
        self._closing.set()
        if self.catalog.listeners.count(self._catalog_changed):
            self.catalog.listeners.remove(self._catalog_changed)
        tasks = [*self._tasks, *(w.task for w in self.workers.values() if w.task is not None)]
        for task in tasks:
            task.cancel()
        for event in self._log_events.values():
            event.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.stop()
        for session in (self._http, self._mtls):
            if session is not None:
                await session.close()
        if self._receiver is not None:
            await self._receiver.cleanup()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
        self.started = False

    def _require(self) -> tuple[Store, Writer]:
        if not self.started or self.store is None or self.writer is None or self._closing.is_set():
            raise Unavailable("messaging is not running (starting or shutting down)")
        return self.store, self.writer

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ``Store.r_*`` method on the reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def _now_ms(self) -> int:
        return int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------------------------ names

    def _default_service(self) -> str | None:
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
        return own or self._default_service() or self.node

    def _scoped_in(self, subscription: Subscription) -> bool:
        """Whether the topic's scope lets the subscription's service subscribe; logs a refusal."""
        if self.scopes.may_subscribe(subscription.service, subscription.topic):
            return True
        log.warning("subscription not registered: the topic's scope does not list the service",
                    extra=fields(service=subscription.service, topic=subscription.topic,
                                 rule=self.scopes.where(subscription.topic, "subscribers")))
        return False

    # ------------------------------------------------------------------------------------ request-response

    async def send(self, service: str, body: MessageBody, sender_header: str | None = None,
                   trace: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Deliver a ServiceMessage to one instance of ``service`` at its messages_path and return the app's answer
        (status, headers worth passing on, body). Errors of the mesh come back as the mesh answered them."""
        self._require()
        snapshot = self.catalog.snapshot()
        instances = snapshot.service(service)
        if not instances:
            raise NotFound(f"no service named {service!r} in the catalog", {"service": service})
        routable = snapshot.routable(service)
        path = (routable or instances)[0].messages_path
        message = ServiceMessage.new(self.sender(sender_header), body, self._now_ms())
        timeout = float(self.settings.request_timeout)
        self.counters["requests"] += 1
        assert self._http is not None and self.outbound is not None
        try:
            async with self._http.post(
                    f"http://{self.outbound}{path}", data=message.to_bytes(),
                    headers={**(trace or {}), "Host": service, "Content-Type": "application/json",
                             "x-sidecar-message-id": message.id},
                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                raw = await response.content.read(MAX_RESPONSE + 1)
                if len(raw) > MAX_RESPONSE:
                    raise Unavailable(f"{service} answered more than {MAX_RESPONSE} bytes", {"service": service})
                keep = {k: v for k, v in response.headers.items()
                        if k.lower() in ("content-type", "x-sidecar-error", "x-request-id", "traceparent")}
                return response.status, keep, raw
        except TimeoutError:
            self.counters["request_timeouts"] += 1
            raise DeadlineExceeded(f"{service} did not answer the message within {timeout:.3f}s",
                                   {"service": service, "messageId": message.id}) from None
        except aiohttp.ClientError as e:
            self.counters["request_errors"] += 1
            raise Unavailable(f"the message to {service} could not be sent: {type(e).__name__}: {e}",
                              {"service": service, "messageId": message.id}) from None

    # ------------------------------------------------------------------------------------ publish

    async def publish(self, topic: str, body: MessageBody, sender_header: str | None = None) -> ServiceMessage:
        """Store the message durably for every subscriber of ``topic``; returns once committed."""
        store, writer = self._require()
        check_topic(topic)
        queue = self.settings.queue
        if store.pending + writer.queued >= queue.max_pending or writer.queued_bytes >= queue.max_write_bytes:
            self.counters["publish_rejected"] += 1
            raise ResourceExhausted(
                f"the outbox is full ({store.pending} messages pending, {writer.queued} queued; "
                f"messaging.queue.max_pending is {queue.max_pending})",
                {"pending": store.pending, "queued": writer.queued, "maxPending": queue.max_pending})
        sender = self.sender(sender_header)
        self.scopes.check_publish(sender, topic)
        message = ServiceMessage.new(sender, body, self._now_ms())
        raw = message.to_bytes()
        now_ms = message.timestamp
        _, streams = await writer.submit(lambda s: s.w_publish(message.id, topic, raw, now_ms), size=len(raw))
        self.counters["published"] += 1
        if not streams:
            self.counters["published_unsubscribed"] += 1
        for stream in streams:
            worker = self.workers.get(stream)
            if worker is not None:
                worker.wakeup.set()
        return message

    # ------------------------------------------------------------------------------------ subscriptions

    async def subscribe(self, topic: str, path: str, service: str | None = None) -> Subscription:
        """A push subscription of a local service (default: this node's first), kept across restarts."""
        self._require()
        check_topic(topic)
        if not path.startswith("/"):
            raise InvalidArgument(f"path must start with '/' (got {path!r})", {"field": "path"})
        if path.startswith(INTERNAL_PREFIX):
            raise InvalidArgument(f"paths under {INTERNAL_PREFIX} are the sidecars' own (got {path!r})",
                                  {"field": "path"})
        if service is None:
            service = self._default_service()
            if service is None:
                raise InvalidArgument("no service is registered on this node: register one, or name it in service",
                                      {"field": "service"})
        elif service not in {i.name for i in self.registry.instances()}:
            raise InvalidArgument(f"service {service!r} is not registered on this node", {"field": "service"})
        self.scopes.check_subscribe(service, topic)
        subscription = Subscription(service, topic, path)
        await self._add_local(subscription)
        return subscription

    async def _add_local(self, subscription: Subscription) -> None:
        _, writer = self._require()
        if self.book.local.get((subscription.service, subscription.topic)) == subscription:
            return
        await writer.submit(lambda s: s.w_local_sub(subscription.service, subscription.topic, subscription.path))
        self.book.add_local(subscription)
        self._ensure_new()
        self._reconcile_wanted.set()
        if self.on_local_change is not None:
            self.on_local_change()

    async def _remove_local(self, service: str, topic: str) -> None:
        """Drop a local subscription (the book at once, the store through the writer) and gossip the change."""
        if not self.book.remove_local(service, topic):
            return
        if self.on_local_change is not None:
            self.on_local_change()
        self._reconcile_wanted.set()
        writer = self.writer
        if writer is not None and not self._closing.is_set():
            await writer.submit(_unsubscribe(service, topic))

    async def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's topic scopes and ``subscriptions`` (and ``services``, whose first is their
        default owner). Subscriptions only the old configuration made are dropped, unless the app also made them at
        run time (those are kept); new ones are added; a change is gossiped. A stream no one wants any more keeps
        collecting, as one whose subscriber's node died, until ``messaging.retention.age`` forgets it."""
        if config.messaging.topics != self.settings.topics or config.messaging.default != self.settings.default:
            # scopes apply from the next publish, subscription and delivery; streams to subscribers they no longer
            # allow wait (and are forgotten after retention.age), open SSE readers keep reading until they leave
            self.scopes = TopicScopes(config.messaging)
            self.settings = config.messaging
            self._reconcile_wanted.set()
            self._catalog_changed(None)
        old = self._configured(self.config)
        self.config = config
        new = self._configured(config)
        store = self.store
        if old == new or not self.started or store is None or self._closing.is_set():
            return
        persisted = {(service, topic): Subscription(service, topic, path)
                     for service, topic, path in await self._read(store.r_local_subs)}
        changed = False
        for key in old.keys() - new.keys():
            kept = persisted.get(key)
            changed |= self.book.add_local(kept) if kept is not None else self.book.remove_local(*key)
        for subscription in new.values():
            changed |= self.book.add_local(subscription)
        if changed:
            log.info("subscriptions reloaded", extra=fields(local=len(self.book.local)))
            self._ensure_new()
            self._reconcile_wanted.set()
            if self.on_local_change is not None:
                self.on_local_change()

    def _configured(self, config: Config) -> dict[tuple[str, str], Subscription]:
        """The configuration's subscriptions by (service, topic), owners resolved as at start."""
        out: dict[tuple[str, str], Subscription] = {}
        for sub in config.subscriptions:
            owner = sub.service or (config.services[0].name if config.services else self._default_service())
            if owner is not None and self.scopes.may_subscribe(owner, sub.topic):
                out[owner, sub.topic] = Subscription(owner, sub.topic, sub.path)
        return out

    def local_subscriptions(self) -> tuple[Subscription, ...]:
        """For the gossiped node state (wire: ``replication.local_subscriptions``)."""
        return self.book.local_tuple()

    def on_remote_subscriptions(self, node: str, subscriptions: tuple[Subscription, ...]) -> None:
        """A peer's subscriptions from gossip (wire: ``replication.subscription_listeners``)."""
        if self.book.set_remote(node, subscriptions):
            self._ensure_new()
            self._reconcile_wanted.set()
            self._catalog_changed(None)  # streams waiting for a subscriber (a stream reader come back) try again

    def _ensure_new(self) -> None:
        """Queue a new stream for every new wanted subscription at once, so that a publish that comes after the
        subscription became known is queued after its stream (the writer keeps the order)."""
        writer = self.writer
        if not self.started or writer is None or self._closing.is_set():
            return
        now_ms = self._now_ms()
        for key, want in self._wanted().items():
            if key in self._stream_keys:
                continue
            self._stream_keys.add(key)
            writer.submit(self._ensure(want, now_ms)).add_done_callback(self._stream_ready)

    def _stream_ready(self, future: asyncio.Future[tuple[StreamRow, bool]]) -> None:
        if future.cancelled() or future.exception() is not None or self._closing.is_set():
            return
        row, created = future.result()
        if created:
            log.info("new subscription stream", extra=fields(topic=row.topic, subscriber=row.subscriber,
                                                             path=row.path))
        self._worker(row)

    def subscriptions_json(self) -> list[dict[str, str]]:
        return self.book.to_json()

    # ------------------------------------------------------------------------------------ streams

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                await self._reconcile()
            except Unavailable:
                return
            except Exception:
                log.exception("messaging: reconciling the subscriptions failed")

    async def _reconcile(self) -> None:
        store, writer = self._require()
        now_ms = self._now_ms()
        wanted = self._wanted()
        held = {(r.topic, r.subscriber): r for r in store.streams()}
        for key, want in wanted.items():
            found = held.get(key)
            if found is None or found.path != want.path or now_ms - found.last_seen_ms > REFRESH_MS:
                self._stream_keys.add(key)
                row, created = await writer.submit(self._ensure(want, now_ms))
                if created:
                    log.info("new subscription stream", extra=fields(topic=row.topic, subscriber=row.subscriber,
                                                                     path=row.path))
                found = row
            self._worker(found)
        age_ms = int(self.settings.retention.age * 1000)
        for key, row in held.items():
            if key not in wanted and now_ms - row.last_seen_ms > age_ms:
                worker = self.workers.pop(row.id, None)
                if worker is not None and worker.task is not None:
                    worker.task.cancel()
                self._stream_keys.discard(key)
                owed = await writer.submit(_forget(row.id, now_ms))
                self.counters["dead_lettered:unsubscribed"] += owed
                log.warning("subscription stream forgotten: not seen for longer than messaging.retention.age",
                            extra=fields(topic=row.topic, subscriber=row.subscriber, dead_lettered=owed))

    def _wanted(self) -> dict[tuple[str, str], Wanted]:
        """The streams the mesh wants that the topics' scopes allow (see :meth:`_may_receive`)."""
        wanted = self.book.wanted()
        if self.scopes.open:
            return wanted
        return {key: want for key, want in wanted.items() if self._may_receive(want.topic, want.subscriber)}

    def _may_receive(self, topic: str, subscriber: str) -> bool:
        """Whether ``subscriber`` (a service, or a node's stream readers) may get ``topic``'s messages. A node's
        readers are checked by their own sidecar when they subscribe; here the node must host a service the scope
        lists, as the catalog says (a first filter: before a delivery the node also proves it by its certificate,
        :meth:`_node_may_not_receive`)."""
        if self.scopes.open:
            return True
        node = subscriber_node(subscriber)
        if node is None:
            return self.scopes.may_subscribe(subscriber, topic)
        if node == self.node:
            return True
        hosted = {i.name for i in self.catalog.snapshot().instances if i.node == node}
        return any(self.scopes.may_subscribe(service, topic) for service in hosted)

    @staticmethod
    def _ensure(want: Wanted, now_ms: int) -> Callable[[Store], tuple[StreamRow, bool]]:
        return lambda s: s.w_ensure_stream(want.topic, want.subscriber, want.path, now_ms)

    def _worker(self, row: StreamRow) -> StreamWorker:
        worker = self.workers.get(row.id)
        if worker is None:
            worker = self.workers[row.id] = StreamWorker(row)
            worker.task = asyncio.create_task(self._run_stream(worker), name=f"stream:{row.topic}:{row.subscriber}")
        else:
            worker.row = row
        worker.wakeup.set()
        return worker

    async def _run_stream(self, worker: StreamWorker) -> None:
        """The stream's task: a bug in one delivery is logged and the stream starts over from what it owes."""
        while not self._closing.is_set():
            try:
                await self._stream_loop(worker)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["stream_errors"] += 1
                log.exception("messaging: stream %s → %s failed; resuming", worker.row.topic, worker.row.subscriber)
                worker.state = "failed"
                await self.clock.sleep(1.0)

    async def _stream_loop(self, worker: StreamWorker) -> None:
        store = self.store
        assert store is not None
        after = 0
        while not self._closing.is_set():
            worker.wakeup.clear()
            page = await self._read(store.r_page, worker.row.id, after, PAGE)
            if not page:
                worker.state = "idle"
                await worker.wakeup.wait()
                continue
            for seq, body in page:
                after = seq
                if seq <= worker.floor:
                    continue
                await self._deliver(worker, seq, body)

    async def _deliver(self, worker: StreamWorker, seq: int, body: bytes) -> None:
        store, writer = self.store, self.writer
        assert store is not None and writer is not None
        stream = worker.row.id
        key = (stream, seq)
        attempts = Attempts()
        worker.in_flight, worker.attempts, worker.last_error = seq, 0, None
        settled = False
        try:
            while not self._closing.is_set():
                if seq <= worker.floor:  # retention dead-lettered it while we waited
                    return
                if not self._reachable(worker.row):
                    worker.state = "waiting"
                    await self._wait_catalog(1.0)
                    continue
                worker.state = "delivering"
                # only an attempt on the wire protects a delivery from retention; a waiting one may be evicted
                store.in_flight.add(key)
                outcome, error = await self._bounded_attempt(worker.row, body, attempts.total + 1)
                step = attempts.next_step(self.policy, outcome, self.rng.random())
                worker.attempts = attempts.total
                if isinstance(step, Ack):
                    settled = True
                    self._settle(writer, stream, seq)
                    worker.delivered += 1
                    self.counters["delivered"] += 1
                    if attempts.total > 0:
                        self.counters["redelivered"] += 1
                    return
                if isinstance(step, DeadLetter):
                    settled = True
                    await self._dead_letter(worker, seq, step.reason, attempts.counted, error)
                    return
                assert isinstance(step, Retry)
                store.in_flight.discard(key)
                worker.last_error = error
                worker.state = "backing-off"
                self.counters["retries" if step.counted else "waits"] += 1
                if outcome is Outcome.UNREACHABLE:
                    await self._wait_catalog(step.delay)
                else:
                    await self.clock.sleep(step.delay)
        finally:
            worker.in_flight = None
            if not settled:
                store.in_flight.discard(key)

    def _settle(self, writer: Writer, stream: int, seq: int) -> None:
        def op(s: Store) -> bool:
            s.in_flight.discard((stream, seq))  # in the writer thread: retention never sees it unowned
            return s.w_settle(stream, seq)
        writer.submit(op).add_done_callback(_consume)

    async def _dead_letter(self, worker: StreamWorker, seq: int, reason: str, attempts: int,
                           error: str | None) -> None:
        writer = self.writer
        assert writer is not None
        now_ms = self._now_ms()
        stream = worker.row.id

        def op(s: Store) -> bool:
            s.in_flight.discard((stream, seq))
            return s.w_dead_letter(stream, seq, reason, attempts, error, now_ms)
        await writer.submit(op)
        self.counters[f"dead_lettered:{reason}"] += 1
        log.warning("message dead-lettered", extra=fields(topic=worker.row.topic, subscriber=worker.row.subscriber,
                                                          seq=seq, reason=reason, attempts=attempts, error=error))

    def _evicted(self, evicted: list[Evicted]) -> None:
        by_reason: Counter[str] = Counter()
        for item in evicted:
            worker = self.workers.get(item.stream)
            if worker is not None and item.seq > worker.floor:
                worker.floor = item.seq
            by_reason[item.reason] += 1
        for reason, count in by_reason.items():
            self.counters[f"dead_lettered:{reason}"] += count
            log.warning("messages fell out of retention and were dead-lettered",
                        extra=fields(reason=reason, count=count,
                                     age=self.settings.retention.age.to_text(),
                                     bytes=self.settings.retention.bytes))

    def _reachable(self, row: StreamRow) -> bool:
        if not self._may_receive(row.topic, row.subscriber):
            return False  # a scope made after the stream: it waits, and is forgotten after retention.age
        node = subscriber_node(row.subscriber)
        snapshot = self.catalog.snapshot()
        if node is None:
            return bool(snapshot.routable(row.subscriber))
        if node == self.node:
            return True
        info = snapshot.nodes.get(node)
        return (self.identity is not None and info is not None and info.state in ("alive", "suspect")
                and info.inbound_port > 0)

    async def _bounded_attempt(self, row: StreamRow, body: bytes, number: int) -> tuple[Outcome, str | None]:
        """An attempt in its own task with a hard deadline of our own besides the client's timeout: if the
        attempt does not end (a cancellation swallowed somewhere below), the stream still moves on."""
        attempt = asyncio.ensure_future(self._attempt(row, body, number))
        done, _ = await asyncio.wait({attempt}, timeout=float(self.settings.delivery_timeout) + 1.0)
        if not done:
            attempt.cancel()
            attempt.add_done_callback(_consume)
            self.counters["hard_timeouts"] += 1
            return Outcome.FAILED, "no answer (hard deadline)"
        return attempt.result()

    async def _attempt(self, row: StreamRow, body: bytes, number: int) -> tuple[Outcome, str | None]:
        node = subscriber_node(row.subscriber)
        if node == self.node:
            await self._append_log(row.topic, body)
            return Outcome.ACK, None
        timeout = aiohttp.ClientTimeout(total=float(self.settings.delivery_timeout))
        headers = {"Content-Type": "application/json", "x-sidecar-topic": row.topic,
                   "x-sidecar-delivery-attempt": str(number), **trace_of(body)}
        try:
            if node is None:
                assert self._http is not None and self.outbound is not None
                request = self._http.post(f"http://{self.outbound}{row.path}", data=body,
                                          headers={**headers, "Host": row.subscriber}, timeout=timeout)
            else:
                info = self.catalog.snapshot().nodes[node]
                assert self._mtls is not None and self.identity is not None
                withheld = await self._node_may_not_receive(node, info.address, info.inbound_port, row.topic)
                if withheld is not None:
                    self.counters["deliveries_withheld:scope"] += 1
                    return Outcome.UNREACHABLE, withheld
                host = f"[{info.address}]" if ":" in info.address else info.address
                # a node's stream subscription names the service whose certificate must answer (its claim is
                # signed by it); the handshake refuses any other before the message is written
                name = (service_server_name(row.path, info.address, info.inbound_port) if row.path
                        else peer_server_name(info.address, info.inbound_port))
                request = self._mtls.post(f"https://{host}:{info.inbound_port}{DELIVER_PREFIX}{row.topic}", data=body,
                                          headers=headers, timeout=timeout, ssl=self.identity.client_context,
                                          server_hostname=name)
            async with request as response:
                verdict = await response.content.read(VERDICT_BYTES)
                mesh_error = response.headers.get("x-sidecar-error")
                outcome = classify(response.status, mesh_error, verdict)
                error = None if outcome is Outcome.ACK else _describe(response.status, mesh_error, verdict)
                return outcome, error
        except TimeoutError:
            return Outcome.FAILED, f"no answer within {float(self.settings.delivery_timeout):.3f}s"
        except (aiohttp.ClientConnectionError, KeyError, OSError) as e:
            return Outcome.UNREACHABLE, f"{type(e).__name__}: {e}"
        except aiohttp.ClientError as e:
            return Outcome.FAILED, f"{type(e).__name__}: {e}"
        except PeerRefused as e:
            return Outcome.UNREACHABLE, str(e)

    async def _node_may_not_receive(self, node: str, host: str, port: int, topic: str) -> str | None:
        """For a scoped topic: why the sidecar at ``host:port`` may not get its messages for its stream readers, or
        None when its certificate names a service the scope lets subscribe. The catalog's word for which services
        a node hosts is not taken: the node proves its identity in a TLS handshake, kept for NODE_PROOF_TTL."""
        if self.scopes.open:
            return None
        assert self.identity is not None
        key = (node, host, port)
        now = self.clock.monotonic()
        proof = self._node_proofs.get(key)
        if proof is None or now - proof[1] > NODE_PROOF_TTL:
            _, writer, peer = await self.identity.connect(host, port, timeout=float(self.settings.delivery_timeout))
            writer.close()
            if len(self._node_proofs) >= 4096:
                self._node_proofs.clear()
            proof = self._node_proofs[key] = (peer.service, now)
        if self.scopes.may_subscribe(proof[0], topic):
            return None
        return f"node {node}'s certificate names {proof[0]}, which may not subscribe to {topic}"

    def _catalog_changed(self, snapshot: Any) -> None:
        event, self._catalog_event = self._catalog_event, asyncio.Event()
        event.set()

    async def _wait_catalog(self, timeout: float) -> None:
        # asyncio.wait, not wait_for: on 3.11 wait_for loses a cancellation that arrives as the event is set (the
        # drain changes the catalog just before messaging.stop cancels the streams), and the stream would go on
        waiter = asyncio.ensure_future(self._catalog_event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await self.clock.sleep(HOUSEKEEPING)
            ticks += 1
            if self.writer is not None:
                self.writer.tick()
            if ticks % 30 == 0:
                self._reconcile_wanted.set()

    # ------------------------------------------------------------------------------------ node stream logs

    async def _append_log(self, topic: str, body: bytes) -> int | None:
        _, writer = self._require()
        message = ServiceMessage.from_bytes(body)
        now_ms = self._now_ms()
        event_id = await writer.submit(lambda s: s.w_append_log(topic, message.id, body, now_ms), size=len(body))
        self.counters["stream_received" if event_id is not None else "stream_duplicates"] += 1
        event = self._log_events.pop(topic, None)
        if event is not None:
            event.set()
        return event_id

    @contextlib.asynccontextmanager
    async def stream(self, topic: str, last_event_id: int | None, sender_header: str | None = None
                     ) -> AsyncIterator[AsyncIterator[tuple[int, str, Any]]]:
        """One SSE reader: yields this node's log of ``topic`` as (event id, "message", ServiceMessage JSON), from
        after ``last_event_id`` (None: from now on), until messaging stops. The reader's service (as
        :meth:`sender` says) must be among the topic's subscribers. The node's stream subscription is made with the
        first reader of the topic and removed when its last reader leaves (publishers' streams then wait, within
        retention, for a reader to come back: a reader resuming with ``Last-Event-ID`` loses nothing)."""
        self._require()
        check_topic(topic)
        service = self.sender(sender_header)
        self.scopes.check_subscribe(service, topic)
        readers = self.readers.setdefault(topic, Counter())
        readers[service] += 1
        try:
            await self._add_local(Subscription(NODE_STREAM, topic, ""))
            yield self._tail(topic, last_event_id)
        finally:
            readers[service] -= 1
            if readers[service] <= 0:
                del readers[service]
            if not readers and self.readers.get(topic) is readers:
                del self.readers[topic]
                try:
                    await self._remove_local(NODE_STREAM, topic)
                except Exception as e:  # closing: the next start drops the row
                    log.info("stream subscription not removed: %s", e, extra=fields(topic=topic))

    async def _tail(self, topic: str, last_event_id: int | None) -> AsyncIterator[tuple[int, str, Any]]:
        store = self.store
        assert store is not None
        after = last_event_id if last_event_id is not None else (await self._read(store.r_log_head, topic))[1]
        while not self._closing.is_set():
            event = self._log_events.get(topic)
            if event is None:
                event = self._log_events[topic] = asyncio.Event()
            rows = await self._read(store.r_log, topic, after, PAGE)
            for event_id, body in rows:
                after = event_id
                yield event_id, "message", json.loads(body)
            if not rows:
                await event.wait()

    async def _start_receiver(self) -> None:
        app = web.Application(middlewares=[errors_middleware], client_max_size=2 << 20)
        app.router.add_post(DELIVER_PREFIX + "{topic}", self._receive)
        self._receiver = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._receiver.setup()
        site = web.TCPSite(self._receiver, "127.0.0.1", 0)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)
        assert sockets
        port = int(sockets[0].getsockname()[1])
        self._receiver_target = Target(("127.0.0.1", port), timeout=30.0, tag="messaging")

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(_INTERNAL_HEADER.decode(), "").encode()
        if not hmac.compare_digest(given, self._token):
            raise Unauthenticated("sidecar-internal deliveries come only through the mTLS inbound listener")
        topic = check_topic(request.match_info["topic"])
        caller = request.headers.get(_CALLER_HEADER.decode(), "")
        raw = await request.read()
        try:
            message = ServiceMessage.from_bytes(raw)
        except ValueError as e:
            raise InvalidArgument(f"not a ServiceMessage: {e}") from None
        try:
            proven = SpiffeId.from_text(caller).service
        except SpiffeIdError:
            proven = None
        if message.service != proven:
            # the sender is whoever holds the certificate: a member cannot put words in another service's mouth
            self.counters["deliveries_refused:sender"] += 1
            raise PermissionDenied(f"the message says it is from {message.service!r}, but the caller is {caller}",
                                   {"service": message.service, "caller": caller})
        if topic not in self.readers:
            raise NotFound(f"this node has no readers of {topic!r}", {"topic": topic})
        event_id = await self._append_log(topic, raw)
        return json_response({"status": "ok", "eventId": event_id, "duplicate": event_id is None})

    def internal_route(self, head: RequestHead, caller: PeerIdentity,
                       authorize: Callable[[PeerIdentity, str, str, str], None]) -> Target:
        """For the inbound listener: a request to ``/.sidecar/...`` from a verified peer goes to the receiver,
        with the caller's SPIFFE ID and the receiver's token set (whatever the peer sent in their place is
        removed). Refused before any body is read: a topic this node has no readers of (404), a caller ``authorize``
        refuses for any service reading the topic here (403; the request is matched as
        ``POST /.sidecar/v1/deliver/TOPIC`` to that service), a caller the topic's scope does not let publish (403)."""
        if self._receiver_target is None or not head.path.startswith(DELIVER_PREFIX) or head.method != "POST":
            raise NotFound(f"no such sidecar-internal resource: {head.method} {head.path}")
        topic = head.path[len(DELIVER_PREFIX):]
        readers = self.readers.get(topic)
        if not readers:
            raise NotFound(f"this node has no readers of {topic!r}", {"topic": topic})
        for service in sorted(readers):
            authorize(caller, service, head.method, head.path)
        if not self.scopes.may_publish(caller.service, topic):
            self.counters["deliveries_refused:scope"] += 1
            where = self.scopes.where(topic, "publishers")
            raise PermissionDenied(f"{caller.service} may not publish to {topic} ({where})",
                                   {"caller": caller.spiffe_id, "topic": topic, "rule": where})
        items = [i for i in head.headers.items if i[0] not in (_INTERNAL_HEADER, _CALLER_HEADER)]
        items.append((_CALLER_HEADER, _CALLER_HEADER, caller.spiffe_id.encode("latin-1")))
        items.append((_INTERNAL_HEADER, _INTERNAL_HEADER, self._token))
        head.headers.items = items
        return self._receiver_target

    # ------------------------------------------------------------------------------------ dead letters

    async def dead_letters(self, limit: int = 100, after: int = 0, topic: str | None = None) -> dict[str, Any]:
        store, _ = self._require()
        rows = await self._read(store.r_dead_letters, limit, after, topic)
        return {"deadLetters": [dead_letter_json(r) for r in rows], "total": store.dead_letter_count}

    async def replay(self, ids: list[int] | None) -> dict[str, Any]:
        _, writer = self._require()
        now_ms = self._now_ms()
        queued: list[tuple[int, int]] = await writer.submit(lambda s: s.w_replay(ids, now_ms))
        assert self.store is not None
        rows = {r.id: r for r in self.store.streams()}
        for stream, _ in queued:
            if stream in rows:
                self._worker(rows[stream])
        self.counters["replayed"] += len(queued)
        log.info("dead letters replayed", extra=fields(count=len(queued)))
        return {"replayed": len(queued)}

    async def purge(self, ids: list[int] | None) -> dict[str, Any]:
        _, writer = self._require()
        count: int = await writer.submit(lambda s: s.w_purge(ids))
        self.counters["purged"] += count
        log.info("dead letters purged", extra=fields(count=count))
        return {"purged": count}

    # ------------------------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        store, writer = self.store, self.writer
        return {
            "pending": store.pending if store else 0,
            "pendingBytes": store.pending_bytes if store else 0,
            "deadLetters": store.dead_letter_count if store else 0,
            "deadLetterBytes": store.dead_letter_bytes if store else 0,
            "deadLettersDropped": store.dead_letters_dropped if store else 0,
            "readers": {topic: dict(sorted(readers.items())) for topic, readers in sorted(self.readers.items())},
            "commits": writer.commits if writer else 0,
            "operations": writer.operations if writer else 0,
            "streams": [w.to_json() for w in sorted(self.workers.values(), key=lambda w: w.row.id)],
            "subscriptions": self.subscriptions_json(),
            "counters": dict(sorted(self.counters.items())),
        }


def _unsubscribe(service: str, topic: str) -> Callable[[Store], None]:
    return lambda s: s.w_remove_local_sub(service, topic)


def _forget(stream: int, now_ms: int) -> Callable[[Store], int]:
    return lambda s: s.w_forget_stream(stream, now_ms)


def _describe(status: int, mesh_error: str | None, body: bytes) -> str:
    where = f"mesh {mesh_error}" if mesh_error else "app"
    text = body[:200].decode("utf-8", "replace")
    return f"HTTP {status} from the {where}: {text}"


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("messaging: an ack was not stored: %s", future.exception())
