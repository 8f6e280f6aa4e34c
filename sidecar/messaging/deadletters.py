"""The dead-letter store's admin side: list, replay (back into their streams as new messages), purge."""

from __future__ import annotations

import json
from typing import Any

from sidecar.log import fields
from sidecar.messaging.context import MessagingContext, log
from sidecar.messaging.store import DeadLetterRow
from sidecar.messaging.streams import Streams
from sidecar.messaging.subscriptions import inbox_service


def dead_letter_json(row: DeadLetterRow) -> dict[str, Any]:
    try:
        message: Any = json.loads(row.body)
    except ValueError:
        message = row.body.decode("utf-8", "replace")
    # an inbox stream's letter names its service (the stream, which replay goes back into, stays in the store)
    subscriber = inbox_service(row.subscriber) or row.subscriber
    return {"id": row.id, "message": message, "topic": row.topic, "subscriber": subscriber, "path": row.path,
            "reason": row.reason, "attempts": row.attempts, "lastError": row.last_error, "timestamp": row.at_ms}


class DeadLetters:
    def __init__(self, ctx: MessagingContext, streams: Streams) -> None:
        self.ctx = ctx
        self.streams = streams

    async def page(self, limit: int = 100, after: int = 0, topic: str | None = None) -> dict[str, Any]:
        store, _ = self.ctx.require()
        rows = await self.ctx.read(store.r_dead_letters, limit, after, topic)
        return {"deadLetters": [dead_letter_json(r) for r in rows], "total": store.dead_letter_count}

    async def replay(self, ids: list[int] | None) -> dict[str, Any]:
        store, writer = self.ctx.require()
        now_ms = self.ctx.now_ms()
        queued: list[tuple[int, int]] = await writer.submit(lambda s: s.w_replay(ids, now_ms))
        rows = {r.id: r for r in store.streams()}
        for stream, _ in queued:
            if stream in rows:
                self.streams.worker(rows[stream])
        self.ctx.counters["replayed"] += len(queued)
        log.info("dead letters replayed", extra=fields(count=len(queued)))
        return {"replayed": len(queued)}

    async def purge(self, ids: list[int] | None) -> dict[str, Any]:
        _, writer = self.ctx.require()
        count: int = await writer.submit(lambda s: s.w_purge(ids))
        self.ctx.counters["purged"] += count
        log.info("dead letters purged", extra=fields(count=count))
        return {"purged": count}
