"""How high an incarnation number may be: a ceiling that follows the wall clock.

An incarnation only grows, and a member refutes an accusation by taking the accused incarnation plus
one. Nothing on the wire proves who sent a suspect or alive message (without gossip keys anyone can send
one; with keys, any key holder can), so an accusation at the top of the 32-bit space would leave the
accused unable to refute it ever again: every peer would end up holding it dead at an incarnation it can
never pass.

Incarnations legitimately grow by one per refutation or metadata change, far slower than one per second
on average, and a restarted member starts again at 1 and climbs just above what its previous life reached.
So a received incarnation may never exceed :func:`incarnation_ceiling`: the seconds since
:data:`INCARNATION_EPOCH` plus :data:`INCARNATION_HEADROOM`. Anything above it is forged or from a member
whose clock is far ahead, and is dropped. An attacker can therefore push a member's incarnation at most
to the ceiling, and the member can always refute it (the ceiling grows by one every second); the 32-bit
space lasts until 2156. Members disagree on the ceiling only by their clock skew, which the headroom
covers.
"""

from __future__ import annotations

INCARNATION_MAX = 0xFFFF_FFFF  # the wire field is u32
INCARNATION_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z; a clock before it still gets the headroom
INCARNATION_HEADROOM = 86_400  # a day of clock skew between members, and room for simulated time near 0


def incarnation_ceiling(wall_seconds: float) -> int:
    """The highest incarnation anyone may claim at ``wall_seconds`` (Unix time)."""
    since_epoch = max(0, int(wall_seconds) - INCARNATION_EPOCH)
    return min(INCARNATION_MAX, since_epoch + INCARNATION_HEADROOM)
