"""One delivery attempt of one stored message (or batch) to its stream's subscriber, and whether the subscriber can
be tried at all. The answer is an :class:`~sidecar.messaging.delivery.Outcome` per message for the redelivery core.

* A service's stream goes, with mTLS, in batches to the sidecar of one node where the service subscribes (the
  handshake proves that node holds the service's certificate): that sidecar stores a batch before it answers and
  delivers it to its app itself (:mod:`sidecar.messaging.inbox`). A stream keeps its node while that node still
  subscribes and hosts a routable instance (competing consumers share a topic's streams, one node each), so its
  order holds. When the catalog says that node is gone (dead, left, unhealthy) the stream moves to another: what
  the first had stored and not yet delivered reaches its app when it comes back, after newer messages reached the
  other node (order holds per node, not across such a move). Without mTLS a service is reached through this
  sidecar's own outbound listener with ``Host: SERVICE`` and the subscription's path, one message (or bulk batch)
  per request.
* An inbox stream (a publisher's stream received here) goes to a routable local instance of its service, straight
  to the app's port, with the local subscription's path: one message per POST, or its bulk size.
* A node's stream readers (``node:NAME``) are reached over mTLS straight at that node's inbound listener at
  :data:`~sidecar.messaging.context.DELIVER_BATCH_PREFIX`, many messages per request, which the node stores
  before it answers (:mod:`sidecar.messaging.receiver`); for a scoped topic the node first proves, by its certificate,
  that it hosts a service the scope lets subscribe. This node's own readers get the message in its topic log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.catalog.model import HealthStatus, ServiceMetadata
from sidecar.errors import SidecarError
from sidecar.messaging.apprequest import AppRequests
from sidecar.messaging.context import DELIVER_BATCH_PREFIX, DELIVER_PREFIX, MessagingContext, log
from sidecar.messaging.delivery import Outcome, classify, classify_bulk
from sidecar.messaging.store import StreamRow
from sidecar.messaging.subscriptions import INBOX_PREFIX, SubscriptionBook, inbox_service, subscriber_node
from sidecar.messaging.topic_log import TopicLog
from sidecar.proxy.failures import ConnectFailure, UpstreamReset
from sidecar.tls.context import peer_server_name, service_server_name
from sidecar.tls.errors import PeerRefused

VERDICT_BYTES = 64 << 10     # of a subscriber's answer, enough to find {"status": "DROP"}
BULK_VERDICT_BYTES = 1 << 20  # of a bulk answer: a status per message, up to 1000 of them
NODE_PROOF_TTL = 60.0        # seconds a node's proven identity is trusted before its certificate is asked again
NODE_BATCH = 256             # messages per request to another sidecar (its SSE readers, or its inbox)
ORIGIN_HEADER = "x-sidecar-origin"           # the publishing sidecar's NODE.EPOCH
SEQS_HEADER = "x-sidecar-seqs"               # a push batch's publisher sequence numbers, ascending, comma-separated
SUBSCRIBER_HEADER = "x-sidecar-subscriber"   # the service a push batch is for
AFTER_HEADER = "x-sidecar-after"             # the seq the batch before this one in the window ended with

# this node's inbox, for a stream whose chosen subscriber node is this one: (origin, topic, service, items, after)
LocalInbox = Callable[[str, str, str, list[tuple[int, str, bytes]], int | None], Awaitable[object]]


def trace_of(raw: bytes) -> dict[str, str]:
    """A stored message's trace context (``metadata.traceparent``/``tracestate``), as request headers."""
    if b'"traceparent"' not in raw:
        return {}
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return {}
    # a value that would break the request's head is not passed on (the message itself still is)
    return {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate") and isinstance(v, str)
            and v.isprintable()}


def _message_id(body: bytes) -> str:
    # a stored message is written by ServiceMessage.to_bytes, its id first: read up to the closing quote when
    # the id has no escape in it, rather than parse the whole message (a bulk answer needs every id)
    if body.startswith(b'{"id":"'):
        end = body.find(b'"', 7)
        found = body[7:end]
        if end > 0 and b"\\" not in found and found.isascii():
            return found.decode("ascii")
    try:
        value = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def describe(status: int, mesh_error: str | None, body: bytes) -> str:
    where = f"mesh {mesh_error}" if mesh_error else "app"
    text = body[:200].decode("utf-8", "replace")
    return f"HTTP {status} from the {where}: {text}"


def no_answer(e: Exception, timeout: float) -> tuple[Outcome, str]:
    """An attempt that got no answer, and why: a timeout counts (FAILED); no connection, a connection closed before
    the answer, a refused handshake or a node gone from the catalog (KeyError) is a wait (UNREACHABLE); an answer
    that is not HTTP/1.1, or any other failure, counts."""
    if isinstance(e, TimeoutError):
        return Outcome.FAILED, f"no answer within {timeout:.3f}s"
    if isinstance(e, (PeerRefused, ConnectFailure, UpstreamReset)):
        return Outcome.UNREACHABLE, str(e)
    unreachable = isinstance(e, (KeyError, OSError))
    return Outcome.UNREACHABLE if unreachable else Outcome.FAILED, f"{type(e).__name__}: {e}"


def consume(future: asyncio.Future[Any]) -> None:
    """Done-callback of a future no one awaits: its failure is logged, not lost."""
    if not future.cancelled() and future.exception() is not None:
        log.warning("messaging: an ack was not stored: %s", future.exception())


class Courier:
    def __init__(self, ctx: MessagingContext, topic_log: TopicLog, book: SubscriptionBook) -> None:
        self.ctx = ctx
        self.topic_log = topic_log
        self.book = book
        self.local_inbox: LocalInbox | None = None   # wired by the service once the inbox exists
        self.app_requests = AppRequests()
        self._node_proofs: dict[tuple[str, str, int], tuple[str, float]] = {}  # (node, host, port) → (service, when)
        self._targets: dict[int, str] = {}   # a service's stream → the node it goes to
        self._instances: dict[str, ServiceMetadata | None] = {}   # service → its local instance chosen
        self._instances_version = -1         # the registry's version they were chosen at

    def batch_size(self, row: StreamRow) -> int:
        """Messages per attempt: a batch to another sidecar, else the subscription's bulk size (0: one, not bulk)."""
        if subscriber_node(row.subscriber) is not None or (inbox_service(row.subscriber) is None
                                                           and self.ctx.identity is not None):
            return NODE_BATCH
        return row.bulk

    def pipelined(self, row: StreamRow) -> bool:
        """Whether the stream keeps a window of batches in flight: a service's, to its subscriber's sidecar."""
        return subscriber_node(row.subscriber) is None and inbox_service(row.subscriber) is None and \
            self.ctx.identity is not None

    def reachable(self, row: StreamRow) -> bool:
        ctx = self.ctx
        service = inbox_service(row.subscriber)
        if service is not None:
            return self.local_instance(service) is not None
        if not ctx.may_receive(row.topic, row.subscriber):
            return False  # a scope made after the stream: it waits, and is forgotten after retention.age
        node = subscriber_node(row.subscriber)
        snapshot = ctx.catalog.snapshot()
        if node is None:
            if ctx.identity is not None:
                return self.push_node(row) is not None
            return bool(snapshot.routable(row.subscriber))
        if node == ctx.node:
            return True
        return ctx.identity is not None and self._node_up(node)

    def _node_up(self, node: str) -> bool:
        info = self.ctx.catalog.snapshot().nodes.get(node)
        return info is not None and info.state in ("alive", "suspect") and info.inbound_port > 0

    def push_node(self, row: StreamRow) -> str | None:
        """The node a service's stream goes to: the one it went to while that node still subscribes and hosts a
        routable instance, else one of those at random (publishers spread over competing consumers)."""
        ctx = self.ctx
        hosting = {i.node for i in ctx.catalog.snapshot().routable(row.subscriber)}
        candidates = [n for n in self.book.nodes_of(row.subscriber, row.topic)
                      if n in hosting and (n == ctx.node or self._node_up(n))]
        held = self._targets.get(row.id)
        if held in candidates:
            return held
        if not candidates:
            return None
        chosen = self._targets[row.id] = ctx.rng.choice(candidates)
        return chosen

    def local_instance(self, service: str) -> ServiceMetadata | None:
        """A local instance of ``service`` fit for traffic (healthy before degraded), or None; chosen again only
        when the registry changes (a registration, a removal, a status), not for every delivery."""
        registry = self.ctx.registry
        if registry.version != self._instances_version:
            self._instances.clear()
            self._instances_version = registry.version
        if service not in self._instances:
            fit = [i for i in registry.instances() if i.name == service and i.status is not HealthStatus.UNHEALTHY]
            self._instances[service] = min(fit, key=lambda i: (i.status.rank, i.id)) if fit else None
        return self._instances[service]

    async def bounded_attempt(self, row: StreamRow, batch: list[tuple[int, bytes]], number: int, bulk: bool,
                              after: int | None = None) -> tuple[list[Outcome], str | None]:
        """:meth:`attempt` under a deadline of our own a second past the client's: whatever holds an attempt up
        besides the request (a handshake proving a node's identity, a store write), the stream still moves on. In
        the stream's own task, not one of its own: a delivery is not two trips through the event loop longer. An
        inbox stream's attempt is one request to the local app, under the client's own deadline: no second one."""
        if row.subscriber.startswith(INBOX_PREFIX):
            return await self.attempt(row, batch, number, bulk, after)
        try:
            async with asyncio.timeout(float(self.ctx.settings.delivery_timeout) + 1.0):
                return await self.attempt(row, batch, number, bulk, after)
        except TimeoutError:
            self.ctx.counters["hard_timeouts"] += 1
            return [Outcome.FAILED] * len(batch), "no answer (hard deadline)"

    async def attempt(self, row: StreamRow, batch: list[tuple[int, bytes]], number: int, bulk: bool,
                      after: int | None = None) -> tuple[list[Outcome], str | None]:
        """One POST of one message (``bulk`` False: ``batch`` holds one) or of a JSON array of the batch's
        ServiceMessages, whose answer gives each its outcome (:func:`classify_bulk`); an outcome per message.
        ``after``: for a service's stream, the seq the batch sent before this one (still unanswered) ended with."""
        ctx = self.ctx
        node = subscriber_node(row.subscriber)
        count = len(batch)
        if node == ctx.node:
            await self.topic_log.append_many(row.topic, [body for _, body in batch])
            return [Outcome.ACK] * count, None
        service = inbox_service(row.subscriber)
        if service is not None:
            return await self._to_app(row, service, batch, number, bulk)
        if node is None and ctx.identity is not None:
            return await self._to_node(row, batch, after)
        headers = [("Content-Type", "application/json"), ("x-sidecar-topic", row.topic),
                   ("x-sidecar-delivery-attempt", str(number)), *trace_of(batch[0][1]).items()]
        if bulk:
            headers.append(("x-sidecar-bulk", str(count)))
        data = b"[" + b",".join(body for _, body in batch) + b"]" if bulk else batch[0][1]
        limit = BULK_VERDICT_BYTES if bulk else VERDICT_BYTES
        timeout = float(ctx.settings.delivery_timeout)
        assert ctx.client is not None
        try:
            if node is None:
                assert ctx.outbound is not None
                answer = await ctx.client.post((ctx.outbound.host, ctx.outbound.port), row.path, data, headers,
                                               timeout=timeout, limit=limit, authority=row.subscriber)
            else:
                info = ctx.catalog.snapshot().nodes[node]
                assert ctx.identity is not None
                withheld = await self.withheld(node, info.address, info.inbound_port, row.topic)
                if withheld is not None:
                    ctx.counters["deliveries_withheld:scope"] += 1
                    return [Outcome.UNREACHABLE] * count, withheld
                # a node's stream subscription names the service whose certificate must answer (its claim is
                # signed by it); the handshake refuses any other before the message is written
                name = (service_server_name(row.path, info.address, info.inbound_port) if row.path
                        else peer_server_name(info.address, info.inbound_port))
                prefix = DELIVER_BATCH_PREFIX if bulk else DELIVER_PREFIX
                answer = await ctx.client.post((info.address, info.inbound_port), f"{prefix}{row.topic}", data,
                                               headers, timeout=timeout, limit=limit,
                                               tls=ctx.identity.client_context, server_hostname=name)
        except (TimeoutError, SidecarError, KeyError, OSError, PeerRefused, ValueError) as e:
            return self._failed(e, count)
        mesh_error = answer.header("x-sidecar-error")
        verdict = answer.body
        if bulk:
            outcomes = classify_bulk(answer.status, mesh_error, verdict, [_message_id(body) for _, body in batch])
        else:
            outcomes = [classify(answer.status, mesh_error, verdict)]
        failed = any(o is not Outcome.ACK for o in outcomes)
        return outcomes, describe(answer.status, mesh_error, verdict) if failed else None

    def _failed(self, e: Exception, count: int) -> tuple[list[Outcome], str]:
        outcome, error = no_answer(e, float(self.ctx.settings.delivery_timeout))
        return [outcome] * count, error

    async def _to_app(self, row: StreamRow, service: str, batch: list[tuple[int, bytes]], number: int, bulk: bool
                      ) -> tuple[list[Outcome], str | None]:
        """An inbox stream's delivery: one POST to a local instance of the app (the answer is the app's alone)."""
        ctx = self.ctx
        count = len(batch)
        instance = self.local_instance(service)
        if instance is None:
            return [Outcome.UNREACHABLE] * count, f"no routable local instance of {service}"
        assert ctx.client is not None
        if ctx.timing.on:
            ctx.timing.mark("to-app", (_message_id(body) for _, body in batch), ctx.clock.wall())
        data = b"[" + b",".join(body for _, body in batch) + b"]" if bulk else batch[0][1]
        try:
            request = self.app_requests.encode(row.path, service, row.topic, number, trace_of(batch[0][1]),
                                               count if bulk else 0, data)
            answer = await ctx.client.send((instance.host, instance.port), request,
                                           timeout=float(ctx.settings.delivery_timeout),
                                           limit=BULK_VERDICT_BYTES if bulk else VERDICT_BYTES)
        except (TimeoutError, SidecarError, OSError, ValueError) as e:
            return self._failed(e, count)
        verdict = answer.body
        outcomes = (classify_bulk(answer.status, None, verdict, [_message_id(body) for _, body in batch])
                    if bulk else [classify(answer.status, None, verdict)])
        failed = any(o is not Outcome.ACK for o in outcomes)
        return outcomes, describe(answer.status, None, verdict) if failed else None

    async def _to_node(self, row: StreamRow, batch: list[tuple[int, bytes]], after: int | None
                       ) -> tuple[list[Outcome], str | None]:
        """A service's stream: the batch to the chosen node's sidecar, which stores it before it answers."""
        ctx = self.ctx
        count = len(batch)
        node = self.push_node(row)
        if node is None:
            return [Outcome.UNREACHABLE] * count, f"no node with a routable {row.subscriber} subscribes"
        assert ctx.store is not None
        origin = f"{ctx.node}.{ctx.store.epoch}"
        if node == ctx.node:
            assert self.local_inbox is not None and ctx.identity is not None
            items = [(seq, _message_id(body), body) for seq, body in batch]
            try:
                await self.local_inbox(f"{ctx.identity.identity.service}@{origin}", row.topic, row.subscriber, items,
                                       after)
            except SidecarError as e:
                return [Outcome.UNREACHABLE] * count, str(e)
            return [Outcome.ACK] * count, None
        info = ctx.catalog.snapshot().nodes.get(node)
        if info is None:
            return [Outcome.UNREACHABLE] * count, f"node {node} left"
        assert ctx.client is not None and ctx.identity is not None
        headers = [("Content-Type", "application/json"), ("x-sidecar-topic", row.topic),
                   (SUBSCRIBER_HEADER, row.subscriber), (ORIGIN_HEADER, origin),
                   (SEQS_HEADER, ",".join(str(seq) for seq, _ in batch)), *trace_of(batch[0][1]).items()]
        if after is not None:
            headers.append((AFTER_HEADER, str(after)))
        data = b"[" + b",".join(body for _, body in batch) + b"]"
        if ctx.timing.on:
            ctx.timing.mark("sent", (_message_id(body) for _, body in batch), ctx.clock.wall())
        try:
            # the handshake asks for the service's certificate: a node that cannot show it gets nothing
            answer = await ctx.client.post(
                (info.address, info.inbound_port), f"{DELIVER_BATCH_PREFIX}{row.topic}", data, headers,
                timeout=float(ctx.settings.delivery_timeout), limit=BULK_VERDICT_BYTES,
                tls=ctx.identity.client_context,
                server_hostname=service_server_name(row.subscriber, info.address, info.inbound_port))
        except (TimeoutError, SidecarError, OSError, PeerRefused, ValueError) as e:
            if isinstance(e, PeerRefused):
                self._targets.pop(row.id, None)   # it could not show the service's certificate: choose again
            # no connection: the node may be restarting; the stream stays with it until the catalog says it is gone
            return self._failed(e, count)
        mesh_error = answer.header("x-sidecar-error")
        # the receiver stores the whole batch or none of it: one outcome for all (no message parsed here)
        stored = 200 <= answer.status < 300 and mesh_error is None
        outcomes = [Outcome.ACK if stored else classify(answer.status, mesh_error, answer.body)] * count
        if stored:
            return outcomes, None
        if mesh_error == "NOT_FOUND":
            self._targets.pop(row.id, None)   # that node no longer subscribes: choose again
        return outcomes, describe(answer.status, mesh_error, answer.body)

    async def withheld(self, node: str, host: str, port: int, topic: str) -> str | None:
        """For a scoped topic: why the sidecar at ``host:port`` may not get its messages for its stream readers, or
        None when its certificate names a service the scope lets subscribe. The catalog's word for which services
        a node hosts is not taken: the node proves its identity in a TLS handshake, kept for NODE_PROOF_TTL."""
        ctx = self.ctx
        if ctx.scopes.open:
            return None
        assert ctx.identity is not None
        key = (node, host, port)
        now = ctx.clock.monotonic()
        proof = self._node_proofs.get(key)
        if proof is None or now - proof[1] > NODE_PROOF_TTL:
            _, writer, peer = await ctx.identity.connect(host, port, timeout=float(ctx.settings.delivery_timeout))
            writer.close()
            if len(self._node_proofs) >= 4096:
                self._node_proofs.clear()
            proof = self._node_proofs[key] = (peer.service, now)
        if ctx.scopes.may_subscribe(proof[0], topic):
            return None
        return f"node {node}'s certificate names {proof[0]}, which may not subscribe to {topic}"
