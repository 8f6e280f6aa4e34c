"""This node's SSE readers, by topic and service. The node's stream subscription to a topic is made with its
first reader and removed when its last reader leaves (publishers' streams then wait, within retention, for a
reader to come back: a reader resuming with ``Last-Event-ID`` loses nothing).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from sidecar.catalog.model import NODE_STREAM, Subscription
from sidecar.log import fields
from sidecar.messaging.context import MessagingContext, log
from sidecar.messaging.envelope import check_topic
from sidecar.messaging.local_subs import LocalSubscriptions
from sidecar.messaging.topic_log import TopicLog


class StreamReaders:
    def __init__(self, ctx: MessagingContext, local: LocalSubscriptions, topic_log: TopicLog) -> None:
        self.ctx = ctx
        self.local = local
        self.topic_log = topic_log
        self.by_topic: dict[str, Counter[str]] = {}   # topic → service → open streams

    @contextlib.asynccontextmanager
    async def stream(self, topic: str, last_event_id: int | None, sender_header: str | None = None
                     ) -> AsyncIterator[AsyncIterator[list[tuple[int, bytes]]]]:
        """One SSE reader: yields this node's log of ``topic`` in pages of (event id, ServiceMessage JSON), from
        after ``last_event_id`` (None: from now on), until messaging stops. The reader's service (as
        :meth:`MessagingContext.sender` says) must be among the topic's subscribers."""
        self.ctx.require()
        check_topic(topic)
        service = self.ctx.sender(sender_header)
        self.ctx.scopes.check_subscribe(service, topic)
        readers = self.by_topic.setdefault(topic, Counter())
        readers[service] += 1
        try:
            await self.local.add(Subscription(NODE_STREAM, topic, ""))
            yield self.topic_log.pages(topic, last_event_id)
        finally:
            readers[service] -= 1
            if readers[service] <= 0:
                del readers[service]
            if not readers and self.by_topic.get(topic) is readers:
                del self.by_topic[topic]
                try:
                    await self.local.remove(NODE_STREAM, topic)
                except Exception as e:  # closing: the next start drops the row
                    log.info("stream subscription not removed: %s", e, extra=fields(topic=topic))

    def to_json(self) -> dict[str, dict[str, int]]:
        return {topic: dict(sorted(readers.items())) for topic, readers in sorted(self.by_topic.items())}
