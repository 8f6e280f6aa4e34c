"""The process's event stream: membership and health changes, numbered, with a short history.

Subscribers get their own bounded queue; one that falls too far behind is cut off (its iterator ends)
rather than growing memory, and reconnects with ``Last-Event-ID`` to resume from the history.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str           # e.g. service-registered, health-changed, member-joined
    at: int             # epoch milliseconds
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "timestamp": self.at, "data": self.data}


_CLOSED = object()


class BusSubscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = False

    def _offer(self, event: Event) -> None:
        if self.dropped:
            return
        if self._queue.full():
            self.dropped = True
            self._queue.get_nowait()  # make room for the end marker
            self._queue.put_nowait(_CLOSED)
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        if not self._queue.full():
            self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSED:
                    return
                assert isinstance(item, Event)
                yield item
        finally:
            self._bus._subscribers.discard(self)


class EventBus:
    def __init__(self, history: int = 1024) -> None:
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[BusSubscription] = set()
        self._next_id = 1

    def publish(self, type: str, at_ms: int, **data: Any) -> Event:
        event = Event(self._next_id, type, at_ms, data)
        self._next_id += 1
        self._history.append(event)
        for subscriber in list(self._subscribers):
            subscriber._offer(event)
        return event

    def subscribe(self, after_id: int | None = None, maxsize: int = 1024) -> BusSubscription:
        """A new subscription; with ``after_id`` it first replays the history after that id."""
        subscription = BusSubscription(self, maxsize)
        if after_id is not None:
            for event in self._history:
                if event.id > after_id:
                    subscription._offer(event)
        self._subscribers.add(subscription)
        return subscription

    def recent(self, limit: int = 100) -> list[Event]:
        return list(self._history)[-limit:]

    def close_all(self) -> None:
        for subscriber in list(self._subscribers):
            subscriber.close()
