"""One delivery attempt of one stored message to its stream's subscriber, and whether the subscriber can be
tried at all. The answer is an :class:`~sidecar.messaging.delivery.Outcome` for the redelivery core.

* A service is reached through this sidecar's own outbound listener with ``Host: SERVICE`` and the subscription's
  path, so mTLS, authorization, balancing among the service's instances (competing consumers), retries and
  tracing apply.
* A node's stream readers (``node:NAME``) are reached over mTLS straight at that node's inbound listener at
  :data:`~sidecar.messaging.context.DELIVER_BATCH_PREFIX`, many messages per request, which the node stores
  before it answers (:mod:`sidecar.messaging.receiver`); for a scoped topic the node first proves, by its certificate,
  that it hosts a service the scope lets subscribe. This node's own readers get the message in its topic log.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from sidecar.messaging.context import DELIVER_BATCH_PREFIX, DELIVER_PREFIX, MessagingContext, log
from sidecar.messaging.delivery import Outcome, classify, classify_bulk
from sidecar.messaging.store import StreamRow
from sidecar.messaging.subscriptions import subscriber_node
from sidecar.messaging.topic_log import TopicLog
from sidecar.tls.context import peer_server_name, service_server_name
from sidecar.tls.errors import PeerRefused

VERDICT_BYTES = 64 << 10     # of a subscriber's answer, enough to find {"status": "DROP"}
BULK_VERDICT_BYTES = 1 << 20  # of a bulk answer: a status per message, up to 1000 of them
NODE_PROOF_TTL = 60.0        # seconds a node's proven identity is trusted before its certificate is asked again


def trace_of(raw: bytes) -> dict[str, str]:
    """A stored message's trace context (``metadata.traceparent``/``tracestate``), as request headers."""
    if b'"traceparent"' not in raw:
        return {}
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return {}
    return {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate") and isinstance(v, str)}


def _message_id(body: bytes) -> str:
    try:
        value = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def describe(status: int, mesh_error: str | None, body: bytes) -> str:
    where = f"mesh {mesh_error}" if mesh_error else "app"
    text = body[:200].decode("utf-8", "replace")
    return f"HTTP {status} from the {where}: {text}"


def consume(future: asyncio.Future[Any]) -> None:
    """Done-callback of a future no one awaits: its failure is logged, not lost."""
    if not future.cancelled() and future.exception() is not None:
        log.warning("messaging: an ack was not stored: %s", future.exception())


class Courier:
    def __init__(self, ctx: MessagingContext, topic_log: TopicLog) -> None:
        self.ctx = ctx
        self.topic_log = topic_log
        self._node_proofs: dict[tuple[str, str, int], tuple[str, float]] = {}  # (node, host, port) → (service, when)

    def reachable(self, row: StreamRow) -> bool:
        ctx = self.ctx
        if not ctx.may_receive(row.topic, row.subscriber):
            return False  # a scope made after the stream: it waits, and is forgotten after retention.age
        node = subscriber_node(row.subscriber)
        snapshot = ctx.catalog.snapshot()
        if node is None:
            return bool(snapshot.routable(row.subscriber))
        if node == ctx.node:
            return True
        info = snapshot.nodes.get(node)
        return (ctx.identity is not None and info is not None and info.state in ("alive", "suspect")
                and info.inbound_port > 0)

    async def bounded_attempt(self, row: StreamRow, batch: list[tuple[int, bytes]], number: int, bulk: bool
                              ) -> tuple[list[Outcome], str | None]:
        """:meth:`attempt` in its own task with a hard deadline of our own besides the client's timeout: if the
        attempt does not end (a cancellation swallowed somewhere below), the stream still moves on."""
        task = asyncio.ensure_future(self.attempt(row, batch, number, bulk))
        done, _ = await asyncio.wait({task}, timeout=float(self.ctx.settings.delivery_timeout) + 1.0)
        if not done:
            task.cancel()
            task.add_done_callback(consume)
            self.ctx.counters["hard_timeouts"] += 1
            return [Outcome.FAILED] * len(batch), "no answer (hard deadline)"
        return task.result()

    async def attempt(self, row: StreamRow, batch: list[tuple[int, bytes]], number: int, bulk: bool
                      ) -> tuple[list[Outcome], str | None]:
        """One POST of one message (``bulk`` False: ``batch`` holds one) or of a JSON array of the batch's
        ServiceMessages, whose answer gives each its outcome (:func:`classify_bulk`); an outcome per message."""
        ctx = self.ctx
        node = subscriber_node(row.subscriber)
        count = len(batch)
        if node == ctx.node:
            await self.topic_log.append_many(row.topic, [body for _, body in batch])
            return [Outcome.ACK] * count, None
        timeout = aiohttp.ClientTimeout(total=float(ctx.settings.delivery_timeout))
        headers = {"Content-Type": "application/json", "x-sidecar-topic": row.topic,
                   "x-sidecar-delivery-attempt": str(number), **trace_of(batch[0][1])}
        if bulk:
            headers["x-sidecar-bulk"] = str(count)
        data = b"[" + b",".join(body for _, body in batch) + b"]" if bulk else batch[0][1]
        try:
            if node is None:
                assert ctx.http is not None and ctx.outbound is not None
                request = ctx.http.post(f"http://{ctx.outbound}{row.path}", data=data,
                                        headers={**headers, "Host": row.subscriber}, timeout=timeout)
            else:
                info = ctx.catalog.snapshot().nodes[node]
                assert ctx.mtls is not None and ctx.identity is not None
                withheld = await self.withheld(node, info.address, info.inbound_port, row.topic)
                if withheld is not None:
                    ctx.counters["deliveries_withheld:scope"] += 1
                    return [Outcome.UNREACHABLE] * count, withheld
                host = f"[{info.address}]" if ":" in info.address else info.address
                # a node's stream subscription names the service whose certificate must answer (its claim is
                # signed by it); the handshake refuses any other before the message is written
                name = (service_server_name(row.path, info.address, info.inbound_port) if row.path
                        else peer_server_name(info.address, info.inbound_port))
                prefix = DELIVER_BATCH_PREFIX if bulk else DELIVER_PREFIX
                request = ctx.mtls.post(f"https://{host}:{info.inbound_port}{prefix}{row.topic}", data=data,
                                        headers=headers, timeout=timeout, ssl=ctx.identity.client_context,
                                        server_hostname=name)
            async with request as response:
                verdict = await response.content.read(BULK_VERDICT_BYTES if bulk else VERDICT_BYTES)
                mesh_error = response.headers.get("x-sidecar-error")
                if bulk:
                    outcomes = classify_bulk(response.status, mesh_error, verdict,
                                             [_message_id(body) for _, body in batch])
                else:
                    outcomes = [classify(response.status, mesh_error, verdict)]
                failed = any(o is not Outcome.ACK for o in outcomes)
                return outcomes, describe(response.status, mesh_error, verdict) if failed else None
        except TimeoutError:
            return [Outcome.FAILED] * count, f"no answer within {float(ctx.settings.delivery_timeout):.3f}s"
        except (aiohttp.ClientConnectionError, KeyError, OSError) as e:
            return [Outcome.UNREACHABLE] * count, f"{type(e).__name__}: {e}"
        except aiohttp.ClientError as e:
            return [Outcome.FAILED] * count, f"{type(e).__name__}: {e}"
        except PeerRefused as e:
            return [Outcome.UNREACHABLE] * count, str(e)

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
