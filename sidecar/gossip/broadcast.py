"""The transmit-limited broadcast queue: what we piggyback on packets, and how often.

Each broadcast is sent ``retransmit_mult * ceil(log10(n + 1))`` times, enough for an epidemic to reach
every member with high probability, and then dropped. A newer broadcast about the same subject (a member's
name, a user key) replaces the older one, which is stale by definition. Packets are filled with the least
transmitted broadcasts first, newest first among equals, so fresh news spreads fastest.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from sidecar.gossip.suspicion import retransmit_limit


class _Item:
    __slots__ = ("data", "id", "key", "on_done", "transmits")

    def __init__(self, key: Hashable, data: bytes, item_id: int, on_done: Callable[[], None] | None) -> None:
        self.key = key
        self.data = data
        self.id = item_id
        self.transmits = 0
        self.on_done = on_done


class BroadcastQueue:
    """Broadcasts waiting for a ride; ``get`` takes what fits a packet and counts the transmission."""

    __slots__ = ("_buckets", "_by_key", "_limit", "_limit_for", "_next_id", "max_items", "num_nodes",
                 "retransmit_mult")

    def __init__(self, retransmit_mult: int, num_nodes: Callable[[], int], max_items: int = 4096) -> None:
        self.retransmit_mult = retransmit_mult
        self.num_nodes = num_nodes
        # beyond this the oldest broadcasts are dropped: push-pull repairs whatever they would have said
        self.max_items = max_items
        self._by_key: dict[Hashable, _Item] = {}
        # transmits -> items by id, in queueing order
        self._buckets: dict[int, dict[int, _Item]] = {}
        self._next_id = 0
        self._limit_for = -1
        self._limit = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: Hashable, data: bytes, on_done: Callable[[], None] | None = None) -> None:
        """Queue ``data``; an older broadcast with the same key is dropped (and counts as done)."""
        old = self._by_key.pop(key, None)
        if old is not None:
            self._drop(old)
        self._next_id += 1
        item = _Item(key, data, self._next_id, on_done)
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[item.id] = item
        if len(self._by_key) > self.max_items:
            self._prune()

    def get(self, overhead: int, limit: int) -> list[bytes]:
        """Broadcasts whose sizes plus ``overhead`` each fit in ``limit`` bytes; each counts one transmission."""
        if not self._by_key:
            return []
        n = self.num_nodes()
        if n != self._limit_for:
            self._limit_for, self._limit = n, retransmit_limit(self.retransmit_mult, n)
        max_transmits = self._limit
        chosen: list[_Item] = []
        used = 0
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item_id in sorted(bucket, reverse=True):
                item = bucket[item_id]
                if limit - used <= overhead:
                    break
                size = overhead + len(item.data)
                if used + size > limit:
                    continue
                used += size
                chosen.append(item)
            if limit - used <= overhead:
                break
        out = []
        for item in chosen:
            out.append(item.data)
            bucket = self._buckets[item.transmits]
            del bucket[item.id]
            if not bucket:
                del self._buckets[item.transmits]
            item.transmits += 1
            if item.transmits >= max_transmits:
                del self._by_key[item.key]
                if item.on_done is not None:
                    item.on_done()
            else:
                self._buckets.setdefault(item.transmits, {})[item.id] = item
        return out

    def reset(self) -> None:
        """Drop everything (after a leave, or on shutdown)."""
        for item in list(self._by_key.values()):
            self._drop(item)
        self._by_key.clear()

    def _drop(self, item: _Item) -> None:
        bucket = self._buckets.get(item.transmits)
        if bucket is not None:
            bucket.pop(item.id, None)
            if not bucket:
                del self._buckets[item.transmits]
        if item.on_done is not None:
            item.on_done()

    def _prune(self) -> None:
        excess = len(self._by_key) - self.max_items
        # the most transmitted go first: they have done most of their work already
        for transmits in sorted(self._buckets, reverse=True):
            for item in sorted(self._buckets[transmits].values(), key=lambda i: i.id):
                if excess <= 0:
                    return
                del self._by_key[item.key]
                self._drop(item)
                excess -= 1
