"""This node's topic logs: the messages kept for its SSE readers, appended through the writer (one per message id
and topic: a redelivery is a duplicate, not a second event) and tailed by readers from an event id on.

    event_id = await log.append(topic, body)     # None: already there
    async for page in log.pages(topic, after): ...   # [(event id, the message's JSON as stored), ...]
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sidecar.messaging.context import MessagingContext
from sidecar.messaging.envelope import ServiceMessage

PAGE = 256   # events read from the log at once


class TopicLog:
    def __init__(self, ctx: MessagingContext) -> None:
        self.ctx = ctx
        self._appended: dict[str, asyncio.Event] = {}   # topic → set when something is appended to it

    async def append(self, topic: str, body: bytes) -> int | None:
        """Keep a received message for the topic's readers (durable when this returns); its event id, None when
        it was there already."""
        return (await self.append_many(topic, [body]))[0]

    async def append_many(self, topic: str, bodies: list[bytes]) -> list[int | None]:
        """Keep received messages, in order, in one commit (durable when this returns); their event ids, None for
        one that was there already."""
        return await self.append_items(topic, [(ServiceMessage.from_bytes(body).id, body) for body in bodies])

    async def append_items(self, topic: str, items: list[tuple[str, bytes]]) -> list[int | None]:
        """:meth:`append_many` of messages whose ids are known: (message id, ServiceMessage JSON)."""
        _, writer = self.ctx.require()
        now_ms = self.ctx.now_ms()
        event_ids: list[int | None] = await writer.submit(
            lambda s: [s.w_append_log(topic, message_id, body, now_ms) for message_id, body in items],
            size=sum(len(body) for _, body in items))
        duplicates = event_ids.count(None)
        self.ctx.counters["stream_received"] += len(event_ids) - duplicates
        self.ctx.counters["stream_duplicates"] += duplicates
        event = self._appended.pop(topic, None)
        if event is not None:
            event.set()
        return event_ids

    async def pages(self, topic: str, last_event_id: int | None) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Pages of (event id, ServiceMessage JSON as stored: one line) from after ``last_event_id`` (None: from
        now on), oldest first, until messaging stops: what was appended since the last page, up to PAGE events."""
        store = self.ctx.store
        assert store is not None
        after = last_event_id if last_event_id is not None else (await self.ctx.read(store.r_log_head, topic))[1]
        while not self.ctx.closing.is_set():
            event = self._appended.get(topic)
            if event is None:
                event = self._appended[topic] = asyncio.Event()
            rows = await self.ctx.read(store.r_log, topic, after, PAGE)
            if rows:
                after = rows[-1][0]
                yield rows
            else:
                await event.wait()

    def wake_all(self) -> None:
        """Let every tail see that messaging is closing."""
        for event in self._appended.values():
            event.set()
