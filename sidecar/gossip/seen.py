"""The newest version of each user broadcast delivered so far, bounded in count and in age.

User broadcasts are delivered once per (origin, key, version): a copy at a version we already passed is
neither delivered nor passed on. The record must not grow with every origin a packet names (anyone who
can send us a packet can name new origins), so it holds at most ``limit`` entries and forgets an entry
not refreshed for ``ttl`` seconds. Forgetting is safe once every copy of the old broadcast has stopped
circulating: each member passes a broadcast on a few times within seconds of receiving it, and the ttl
is minutes. The oldest entries go first when the record is full.
"""

from __future__ import annotations

from collections import OrderedDict

USER_SEEN_FLOOR = 4096  # entries kept at least; more in big clusters (see ``limit`` of ``record``)
USER_SEEN_TTL = 600.0  # seconds; far beyond the life of a broadcast in flight


class SeenVersions:
    __slots__ = ("_entries", "evicted", "ttl")

    def __init__(self, ttl: float = USER_SEEN_TTL) -> None:
        self.ttl = ttl
        # (origin, key) -> (version, when recorded), least recently recorded first
        self._entries: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def is_new(self, origin: str, key: str, version: int) -> bool:
        entry = self._entries.get((origin, key))
        return entry is None or entry[0] < version

    def record(self, origin: str, key: str, version: int, now: float, limit: int = USER_SEEN_FLOOR) -> None:
        entries = self._entries
        entries[(origin, key)] = (version, now)
        entries.move_to_end((origin, key))
        self.expire(now, limit)

    def expire(self, now: float, limit: int = USER_SEEN_FLOOR) -> None:
        """Drop entries older than the ttl, and the oldest beyond ``limit``."""
        entries = self._entries
        horizon = now - self.ttl
        while entries:
            (_, at) = next(iter(entries.values()))
            if len(entries) <= limit and at >= horizon:
                break
            entries.popitem(last=False)
            self.evicted += 1

    def forget_origin(self, origin: str) -> None:
        for entry in [k for k in self._entries if k[0] == origin]:
            del self._entries[entry]
