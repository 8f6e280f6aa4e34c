"""Admission of members we only heard of from someone else, until we hear back from them ourselves.

A member is *unconfirmed* while the only evidence of it is a message from a third party: an alive message
gossiped over UDP, or an entry of a push-pull that someone sent us or that we exchanged on our own
initiative. It is confirmed once it answers one of our probes (a direct, indirect or TCP ack to a ping
naming it), or when it reached us in the push-pull of a join, whose seeds the operator chose.

Without gossip keys nothing authenticates an alive message, so one socket could otherwise fill the member
table with made-up members (each then costs a probe, a suspicion and a death to get rid of). Unconfirmed
members are therefore capped per source address (the sender of the packet, or the peer host of the stream)
and in total; an introduction over a cap is dropped and counted. A member joining through us over TCP
(the join push-pull's entry at the peer's own host) is held to its host's cap only, so that a flood of
forged members cannot lock real ones out. A real member that was dropped is introduced
again by another member, by a later push-pull, or when it joins us itself, so the caps delay it at worst.
"""

from __future__ import annotations

from sidecar.gossip.state import Address

UNCONFIRMED_PER_SOURCE = 128  # more new members than any one relayer passes on in a mass join
UNCONFIRMED_FLOOR = 1024  # the total cap is this, or twice the confirmed members when that is more


class MemberAdmission:
    """Who introduced each unconfirmed member, and how many each source has outstanding."""

    __slots__ = ("_by_source", "_unconfirmed", "floor", "per_source")

    def __init__(self, per_source: int = UNCONFIRMED_PER_SOURCE, floor: int = UNCONFIRMED_FLOOR) -> None:
        self.per_source = per_source
        self.floor = floor
        self._unconfirmed: dict[str, Address] = {}  # member name -> the source that introduced it
        self._by_source: dict[Address, int] = {}

    def __len__(self) -> int:
        return len(self._unconfirmed)

    def __contains__(self, name: str) -> bool:
        return name in self._unconfirmed

    def admits(self, source: Address, known: int, joiner: bool = False) -> bool:
        """Whether ``source`` may introduce one more member while we know ``known`` members in all.

        ``joiner``: a member introducing itself over TCP (a join through us): only the per-source cap
        applies, so that a flood from elsewhere cannot keep real members out.
        """
        if self._by_source.get(source, 0) >= self.per_source:
            return False
        if joiner:
            return True
        confirmed = known - len(self._unconfirmed)
        return len(self._unconfirmed) < max(self.floor, 2 * confirmed)

    def add(self, name: str, source: Address) -> None:
        if name in self._unconfirmed:
            return
        self._unconfirmed[name] = source
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def confirm(self, name: str) -> None:
        """``name`` answered us, or is gone: it no longer counts against its introducer."""
        source = self._unconfirmed.pop(name, None)
        if source is None:
            return
        left = self._by_source[source] - 1
        if left:
            self._by_source[source] = left
        else:
            del self._by_source[source]

    forget = confirm
