"""The transmit-limited broadcast queue: what we piggyback on packets, and how often.

Each broadcast is sent ``retransmit_mult * ceil(log10(n + 1))`` times, enough for an epidemic to reach
every member with high probability, and then dropped. A newer broadcast about the same subject (a member's
name, a user key) replaces the older one, which is stale by definition. Packets are filled with the least
transmitted broadcasts first, newest first among equals, so fresh news spreads fastest.

Only sends to members that may not have the news count. Each broadcast remembers who is known to hold it
(``known_by``: the member we heard it from, the member it is about or comes from, everyone we sent it to
or heard it from since) and is never given to them. That matters most where the limit is smallest: in a
cluster of up to 9 members ``ceil(log10(n + 1))`` is 1, so with the ``local`` profile each member passes a
rumour on just twice, and a rumour that spends those sends on members that have it already dies out
before it reaches everyone (the rest then wait for a push-pull, 15 s or more). The exception is news that
no push-pull can repair, a member's own leave (it exits right after): every send of it counts, so it reaches
even a single remaining member its full number of times and survives a lost packet.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable

from sidecar.gossip.suspicion import retransmit_limit


class _Item:
    __slots__ = ("data", "every_send_counts", "id", "key", "known_by", "on_done", "transmits")

    def __init__(self, key: Hashable, data: bytes, item_id: int, on_done: Callable[[], None] | None,
                 known_by: set[Hashable], every_send_counts: bool) -> None:
        self.key = key
        self.data = data
        self.id = item_id
        self.transmits = 0
        self.on_done = on_done
        self.known_by = known_by
        self.every_send_counts = every_send_counts


class BroadcastQueue:
    """Broadcasts waiting for a ride; ``get`` takes what fits a packet and counts the transmission.

    Destinations (``known_by``, ``to``) are opaque hashables to the queue; the core uses addresses.
    """

    __slots__ = ("_buckets", "_by_key", "_limit", "_limit_for", "_next_id", "_widest", "max_items",
                 "num_nodes", "retransmit_mult")

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
        # no queued broadcast is known by more destinations than this (an upper bound; 0 when empty)
        self._widest = 0

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def limit(self) -> int:
        """How many times each broadcast is sent, for the current number of members."""
        n = self.num_nodes()
        if n != self._limit_for:
            self._limit_for, self._limit = n, retransmit_limit(self.retransmit_mult, n)
        return self._limit

    @property
    def widest_known_by(self) -> int:
        """At least the largest ``known_by`` of any queued broadcast (cheap; exact only when empty)."""
        return self._widest

    def queue(self, key: Hashable, data: bytes, on_done: Callable[[], None] | None = None,
              known_by: Iterable[Hashable] = (), every_send_counts: bool = False) -> None:
        """Queue ``data``; an older broadcast with the same key is dropped (and counts as done).

        ``known_by``: destinations that have this news already; it is never sent to them.
        ``every_send_counts``: whoever it was sent to may get it again, so it goes out its full number of
        times even to a single destination (for news that no later exchange can repair if a packet is lost).
        """
        old = self._by_key.pop(key, None)
        if old is not None:
            self._drop(old)
        self._next_id += 1
        item = _Item(key, data, self._next_id, on_done, set(known_by), every_send_counts)
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[item.id] = item
        self._widest = max(self._widest, len(item.known_by))
        if len(self._by_key) > self.max_items:
            self._prune()

    def get(self, overhead: int, limit: int, to: Hashable | None = None) -> list[bytes]:
        """Broadcasts whose sizes plus ``overhead`` each fit in ``limit`` bytes; each counts one transmission.

        With a destination ``to``, broadcasts it is known to have are left for others (and not counted),
        and it is remembered as having the ones returned.
        """
        if not self._by_key:
            return []
        max_transmits = self.limit
        chosen: list[_Item] = []
        used = 0
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item_id in sorted(bucket, reverse=True):
                item = bucket[item_id]
                if limit - used <= overhead:
                    break
                if to is not None and to in item.known_by:
                    continue
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
                if to is not None:
                    self._add_known(item, to)
        if not self._by_key:
            self._widest = 0
        return out

    def heard_from(self, key: Hashable, data: bytes, sender: Hashable) -> None:
        """``sender`` sent us ``data``: if that is what we spread under ``key``, it need not hear it from us."""
        item = self._by_key.get(key)
        if item is not None and item.data == data:
            self._add_known(item, sender)

    def drop_known_by_all(self, destinations: Collection[Hashable]) -> None:
        """Drop the broadcasts that all of ``destinations`` (everyone we could tell, at least one) have.

        Otherwise such a broadcast (in a cluster of two, the alive message about the other member) would
        wait for a ride that never comes, and keep the gossip timer running.
        """
        if not destinations or len(destinations) > self._widest:
            return
        for item in [i for i in self._by_key.values() if len(i.known_by) >= len(destinations)]:
            if all(d in item.known_by for d in destinations):
                del self._by_key[item.key]
                self._drop(item)
        if not self._by_key:
            self._widest = 0

    def reset(self) -> None:
        """Drop everything (after a leave, or on shutdown)."""
        for item in list(self._by_key.values()):
            self._drop(item)
        self._by_key.clear()
        self._widest = 0

    def _add_known(self, item: _Item, destination: Hashable) -> None:
        if item.every_send_counts:
            return
        item.known_by.add(destination)
        if len(item.known_by) > self._widest:
            self._widest = len(item.known_by)

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
