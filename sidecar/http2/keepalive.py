"""PING keepalive of one HTTP/2 connection, as Envoy's ``connection_keepalive``: a pure core, time passed in.

Theory of operation
-------------------
A connection that heard nothing from its peer for ``interval`` seconds sends a PING. It is dead when, ``timeout``
seconds after that PING, nothing at all has been heard: neither the PING's ack nor any other frame. Any frame
counts, as in Envoy, so an ack that waits behind a long run of DATA (head-of-line blocking) does not kill a busy
connection; a connection carrying traffic never pings, since its traffic already proves the peer alive.

A peer that stops (a frozen process, a cable pulled, a NAT entry dropped) is found within ``interval + timeout``
of the last thing it sent, instead of when the kernel's TCP retransmissions give up minutes later: its streams
fail over as a lost connection (a retriable reset) and new ones go to a new connection.

    keepalive = Keepalive(KeepalivePolicy(30.0, 5.0), now)
    keepalive.heard(now)                         # on every read from the peer
    action, wake_at = keepalive.tick(now)        # when the timer fires: PING (send one), DEAD (close) or WAIT
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    WAIT = "wait"   # nothing to do before ``wake_at``
    PING = "ping"   # send a PING now
    DEAD = "dead"   # the peer did not answer within the timeout: close the connection


@dataclass(frozen=True, slots=True)
class KeepalivePolicy:
    # Envoy's connection_keepalive figures: a PING after 30 s of silence, dead 5 s later without an answer
    interval: float = 30.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError(f"keepalive interval and timeout must be positive (got {self.interval}, {self.timeout})")


class Keepalive:
    """One connection's keepalive state: when the peer was last heard, whether a PING is out."""

    __slots__ = ("last_heard", "pinged_at", "policy")

    def __init__(self, policy: KeepalivePolicy, now: float) -> None:
        self.policy = policy
        self.last_heard = now
        self.pinged_at: float | None = None

    def heard(self, now: float) -> None:
        """Bytes came from the peer (a PING ack or any other frame)."""
        self.last_heard = now

    def tick(self, now: float) -> tuple[Action, float]:
        """What to do now, and when to be asked again."""
        policy = self.policy
        pinged = self.pinged_at
        if pinged is not None:
            if self.last_heard >= pinged:
                self.pinged_at = None   # answered (or at least alive) since the PING
            elif now >= pinged + policy.timeout:
                return Action.DEAD, now
            else:
                return Action.WAIT, pinged + policy.timeout
        due = self.last_heard + policy.interval
        if now >= due:
            self.pinged_at = now
            return Action.PING, now + policy.timeout
        return Action.WAIT, due
