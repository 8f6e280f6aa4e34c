"""Self-demotion: a node that Lifeguard says is struggling reports its own services degraded until it recovers.

Theory of operation
-------------------
Lifeguard's *local health awareness* score (``GossipNode.health_score``, 0 = fine, up to
``awareness_max_multiplier - 1``) rises when this node misses acks, has to refute suspicions, or gets no
answers to its ping-reqs: symptoms of a node that is overloaded, paused, or badly connected. Peers route around
a dead node by gossip; a node that is alive but struggling is still picked by their balancers. So it demotes
itself: its services are marked *degraded* in the catalog (DNS answers and balancers prefer healthy
instances, and use degraded ones only when no healthy one is left), and promoted back once it is well.

With hysteresis, so that one lost ack does not flap the catalog:

* ``NORMAL`` → ``STRUGGLING`` when the score reaches ``high``; → ``DEMOTED`` once it has stayed at or above
  ``high`` for ``hold`` seconds (a dip below ``high`` first goes back to ``NORMAL``);
* ``DEMOTED`` → ``RECOVERING`` when the score falls to ``low`` or under; → ``NORMAL`` (restored) once it has
  stayed there for ``recover_hold`` seconds (any rise above ``low`` first goes back to ``DEMOTED``).

Pure: ``on_score(score, now)`` returns events; :class:`SelfDemotion` is the driver (polls the score, applies
the events to the registry and the event bus).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.config.model import GossipTuning
from sidecar.events import EventBus
from sidecar.log import fields

log = logging.getLogger("sidecar.ops.demotion")


class Standing(enum.StrEnum):
    NORMAL = "normal"
    STRUGGLING = "struggling"    # the score is high, not yet for long enough
    DEMOTED = "demoted"
    RECOVERING = "recovering"    # the score is low again, not yet for long enough


class Reading(enum.Enum):
    HIGH = "high"    # score >= rules.high
    MID = "mid"      # between
    LOW = "low"      # score <= rules.low


# an input missing from the table raises and leaves the standing unchanged; timers are checked after the move
_TRANSITIONS: dict[tuple[Standing, Reading], Standing] = {
    (Standing.NORMAL, Reading.HIGH): Standing.STRUGGLING,
    (Standing.NORMAL, Reading.MID): Standing.NORMAL,
    (Standing.NORMAL, Reading.LOW): Standing.NORMAL,
    (Standing.STRUGGLING, Reading.HIGH): Standing.STRUGGLING,
    (Standing.STRUGGLING, Reading.MID): Standing.NORMAL,
    (Standing.STRUGGLING, Reading.LOW): Standing.NORMAL,
    (Standing.DEMOTED, Reading.HIGH): Standing.DEMOTED,
    (Standing.DEMOTED, Reading.MID): Standing.DEMOTED,
    (Standing.DEMOTED, Reading.LOW): Standing.RECOVERING,
    (Standing.RECOVERING, Reading.HIGH): Standing.DEMOTED,
    (Standing.RECOVERING, Reading.MID): Standing.DEMOTED,
    (Standing.RECOVERING, Reading.LOW): Standing.RECOVERING,
}


class MissingTransition(Exception):
    """A reading the standing table has no entry for (a bug in the table)."""


@dataclass(frozen=True, slots=True)
class DemotionRules:
    high: int            # a score at or above this is struggling
    low: int             # a score at or below this is well
    hold: float          # seconds of a high score before demotion
    recover_hold: float  # seconds of a low score before promotion

    @classmethod
    def from_tuning(cls, tuning: GossipTuning) -> DemotionRules:
        """Half of Lifeguard's range is struggling (4 of 8 on the LAN profile: several missed acks in a row, each
        failed probe adds one and each good one takes one off); well is 0. Demote after 5 probe intervals of it
        (a GC pause or one slow round does not count), restore after 15 (peers' balancers may then trust it)."""
        interval = float(tuning.probe_interval)
        return cls(high=max(1, math.ceil(tuning.awareness_max_multiplier / 2)), low=0,
                   hold=5 * interval, recover_hold=15 * interval)

    def read(self, score: int) -> Reading:
        if score >= self.high:
            return Reading.HIGH
        if score <= self.low:
            return Reading.LOW
        return Reading.MID


@dataclass(frozen=True, slots=True)
class Demoted:
    score: int
    since: float       # when the score first reached ``high`` in this episode

    @property
    def reason(self) -> str:
        return (f"gossip health score {self.score}: this node is struggling (missed acks, refuted suspicions); "
                "its services are degraded until it recovers")


@dataclass(frozen=True, slots=True)
class Restored:
    score: int
    demoted_for: float


Event = Demoted | Restored


class DemotionCore:
    __slots__ = ("demoted_at", "rules", "since", "standing")

    def __init__(self, rules: DemotionRules) -> None:
        self.rules = rules
        self.standing = Standing.NORMAL
        self.since = 0.0          # when the current STRUGGLING or RECOVERING stretch began
        self.demoted_at = 0.0

    @property
    def demoted(self) -> bool:
        return self.standing in (Standing.DEMOTED, Standing.RECOVERING)

    def on_score(self, score: int, now: float) -> list[Event]:
        before = self.standing
        try:
            after = _TRANSITIONS[before, self.rules.read(score)]
        except KeyError:
            raise MissingTransition(f"no transition from {before.value} on score {score}") from None
        if after is not before and after in (Standing.STRUGGLING, Standing.RECOVERING):
            self.since = now
        self.standing = after
        if after is Standing.STRUGGLING and now - self.since >= self.rules.hold:
            self.standing = Standing.DEMOTED
            self.demoted_at = now
            return [Demoted(score, self.since)]
        if after is Standing.RECOVERING and now - self.since >= self.rules.recover_hold:
            self.standing = Standing.NORMAL
            return [Restored(score, now - self.demoted_at)]
        return []


class SelfDemotion:
    """The driver: every ``interval`` seconds, read the score, and on an event tell ``demote`` (a reason, or None
    to restore: ``LocalRegistry.demote``) and the event bus (``self-demoted`` / ``self-restored``)."""

    def __init__(self, score: Callable[[], int], demote: Callable[[str | None, int], None], bus: EventBus,
                 clock: Clock, rules: DemotionRules, interval: float) -> None:
        self.score = score
        self.demote = demote
        self.bus = bus
        self.clock = clock
        self.core = DemotionCore(rules)
        self.interval = interval

    def poll(self) -> list[Event]:
        """One reading; returns the events it made (for tests)."""
        now = self.clock.monotonic()
        events = self.core.on_score(self.score(), now)
        now_ms = int(self.clock.wall() * 1000)
        for event in events:
            if isinstance(event, Demoted):
                log.warning("self-demotion: services reported degraded", extra=fields(score=event.score))
                self.demote(event.reason, now_ms)
                self.bus.publish("self-demoted", now_ms, score=event.score, reason=event.reason)
            else:
                log.info("self-demotion over: services reported as their checks say",
                         extra=fields(score=event.score, demoted_for=round(event.demoted_for, 3)))
                self.demote(None, now_ms)
                self.bus.publish("self-restored", now_ms, score=event.score,
                                 demotedForMs=int(event.demoted_for * 1000))
        return events

    async def run(self) -> None:
        """Poll until cancelled; a failing poll is logged and the next one tried."""
        while True:
            try:
                self.poll()
            except Exception:
                log.exception("self-demotion check failed; will try again")
            await self.clock.sleep(self.interval)

    def status(self) -> dict[str, object]:
        return {"standing": self.core.standing.value, "high": self.core.rules.high, "low": self.core.rules.low}
