"""Lifeguard's dynamic suspicion timeout, and the timing formulas the rest of gossip uses.

A suspect member is declared dead when its suspicion timer runs out. The timer starts at
``max = suspicion_max_timeout_mult * min`` and shrinks towards ``min`` as independent members confirm the
suspicion (each confirmation is another member that could not reach it either); a member that is merely
slow gets the long timeout and time to refute, a crashed one is declared quickly because many confirm.
"""

from __future__ import annotations

import math

from sidecar.config.model import GossipTuning

PUSH_PULL_SCALE_THRESHOLD = 32  # members before push-pull slows down: log2(n) - log2(32) more intervals


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """The minimum suspicion timeout: ``mult * max(1, log10(max(1, n))) * interval``.

    The log keeps the timeout growing with the time gossip needs to reach everyone; the floor of one keeps
    small clusters from declaring death faster than a single probe round (memberlist's suspicionTimeout).
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * interval


def confirmations_wanted(suspicion_mult: int, n: int) -> int:
    """k, the confirmations that drive the timer to its minimum.

    Two short of the multiplier, so the nominal timeout is reached two probe intervals early; zero when the
    cluster is too small to give that many (n minus ourselves and the suspect).
    """
    k = suspicion_mult - 2
    return 0 if n - 2 < k else k


def remaining_suspicion_time(n: int, k: int, elapsed: float, minimum: float, maximum: float) -> float:
    """Seconds left on a suspicion timer after ``n`` of ``k`` confirmations and ``elapsed`` seconds.

    The timeout falls logarithmically from max (n = 0) to min (n >= k); the result is negative when
    the timer is already overdue (memberlist's remainingSuspicionTime, to the millisecond).
    """
    if k <= 0:
        timeout = maximum
    else:
        frac = math.log(n + 1.0) / math.log(k + 1.0)
        raw = maximum - frac * (maximum - minimum)
        timeout = max(math.floor(1000.0 * raw) / 1000.0, minimum)
    return timeout - elapsed


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each broadcast is sent: ``mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """The push-pull interval for ``n`` members: one more interval per doubling past 32 members."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval


def expected_detection_time(t: GossipTuning, n: int) -> float:
    """The typical time from a crash to its declaration: one interval until someone probes it, the probe
    itself, then the suspicion timeout driven to its minimum by confirmations."""
    return 2 * t.probe_interval + suspicion_timeout(t.suspicion_mult, n, t.probe_interval)


def detection_time_bound(t: GossipTuning, n: int) -> float:
    """The time within which everyone declares a crashed member dead, from the formula's parts.

    A probe of the member starts within a few intervals (each interval, each of n - 1 members probes
    someone; missing the member for k intervals has probability about e^-k, so 5 covers 99%), the
    probe takes one interval, and the suspicion timer runs at most ``max``. The dead message then spreads
    in O(log n) gossip rounds, but every member holding the suspicion also times out on its own.
    """
    timeout_min = suspicion_timeout(t.suspicion_mult, n, t.probe_interval)
    return 6 * t.probe_interval + t.suspicion_max_timeout_mult * timeout_min


class Suspicion:
    """The timer on one suspect member; ``deadline`` moves earlier with each new confirmation."""

    __slots__ = ("_confirmations", "deadline", "k", "maximum", "minimum", "n", "start")

    def __init__(self, sender: str, k: int, minimum: float, maximum: float, now: float) -> None:
        self.k = k
        self.n = 0
        self.minimum = minimum
        self.maximum = maximum
        self.start = now
        self.deadline = now + maximum
        # the accuser does not count: our own suspicion may come back to us through gossip
        self._confirmations = {sender}

    def confirm(self, sender: str, now: float) -> bool:
        """Count an independent confirmation; True when it was new (and worth gossiping on)."""
        if self.n >= self.k or sender in self._confirmations:
            return False
        self._confirmations.add(sender)
        self.n += 1
        elapsed = now - self.start
        self.deadline = now + remaining_suspicion_time(self.n, self.k, elapsed, self.minimum, self.maximum)
        return True
