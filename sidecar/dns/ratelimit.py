"""Per-client token buckets for the DNS responder; pure: the caller passes ``now``.

Each client address gets ``burst`` tokens that refill at ``qps`` per second; a query takes one. The table
is bounded: when it is full, the client seen first is forgotten. A forgotten client comes back with a
full bucket, which only ever errs towards answering; memory stays bounded whatever addresses arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

# a resolver host or a pod network rarely has more distinct clients than this; each costs ~150 bytes
DEFAULT_MAX_CLIENTS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, qps: float, burst: int, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        if qps <= 0:
            raise ValueError(f"qps must be greater than 0 (got {qps})")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 (got {burst})")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1 (got {max_clients})")
        self.qps = qps
        self.burst = float(burst)
        self.max_clients = max_clients
        self.limited = 0  # queries refused since start
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str, now: float) -> bool:
        """Take one token from ``client``'s bucket; False (and counted) when it is empty."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                del self._buckets[next(iter(self._buckets))]
            self._buckets[client] = _Bucket(self.burst - 1.0, now)
            return True
        # a clock that stepped back refills nothing rather than draining the bucket
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.qps)
        bucket.updated = max(now, bucket.updated)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.limited += 1
        return False
