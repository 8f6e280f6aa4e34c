"""Publish: the message is queued for the writer (group commit) with one delivery row per stream of its topic;
the 202 waits for that commit, and the committed message is handed to its streams' workers (they need not read it
back from the store). Beyond ``messaging.queue`` the publish is refused with 429."""

from __future__ import annotations

from sidecar.errors import ResourceExhausted
from sidecar.messaging.context import MessagingContext
from sidecar.messaging.envelope import MessageBody, ServiceMessage, check_topic
from sidecar.messaging.store import Store
from sidecar.messaging.streams import Streams


async def publish(ctx: MessagingContext, streams: Streams, topic: str, body: MessageBody,
                  sender_header: str | None = None) -> ServiceMessage:
    """Store the message durably for every subscriber of ``topic``; returns once committed."""
    store, writer = ctx.require()
    check_topic(topic)
    queue = ctx.settings.queue
    if store.pending + writer.queued >= queue.max_pending or writer.queued_bytes >= queue.max_write_bytes:
        ctx.counters["publish_rejected"] += 1
        raise ResourceExhausted(
            f"the outbox is full ({store.pending} messages pending, {writer.queued} queued; "
            f"messaging.queue.max_pending is {queue.max_pending})",
            {"pending": store.pending, "queued": writer.queued, "maxPending": queue.max_pending})
    sender = ctx.sender(sender_header)
    ctx.scopes.check_publish(sender, topic)
    message = ServiceMessage.new(sender, body, ctx.now_ms())
    raw = message.to_bytes()
    now_ms = message.timestamp

    def op(s: Store) -> int:
        seq, wanting, tails = s.w_publish(message.id, topic, raw, now_ms)
        if wanting:
            # once on disk, the message goes to its streams' workers from memory (in commit order, whether or not
            # this publish is still waited for)
            s.after_commit(lambda: streams.offer(wanting, tails, (seq, raw)))
        return seq
    seq = await writer.submit(op, size=len(raw))
    ctx.counters["published"] += 1
    if not seq:
        ctx.counters["published_unsubscribed"] += 1
    return message
