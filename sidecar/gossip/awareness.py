"""Lifeguard's local health awareness: a member that misses acks and nacks suspects itself first.

The score runs from 0 (healthy) to ``max_multiplier - 1``; the probe interval (and with it the time
allowed for indirect and TCP probes) is multiplied by ``score + 1``. A slow or overloaded member thus
probes less and waits longer before it accuses others, instead of flooding the cluster with false
suspicions. Failed probes without nacks and refutations of our own suspicion raise the score; acks lower it.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"awareness max multiplier must be at least 1 (got {max_multiplier})")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Move the score by ``delta``, clamped to [0, max_multiplier - 1]; returns the new score."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)
        return self.score

    def scale_timeout(self, timeout: float) -> float:
        return timeout * (self.score + 1)
