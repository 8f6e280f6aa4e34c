"""Gossip membership: SWIM with Lifeguard, as HashiCorp's memberlist does it.

One mechanism per module: ``messages`` (wire format), ``envelope`` and ``keyring`` (cluster name and
AES-GCM), ``state`` (member table), ``suspicion`` and ``awareness`` (Lifeguard), ``broadcast`` (the
transmit-limited queue), ``core`` (the pure protocol), ``transport`` and ``node`` (the asyncio driver),
``simnet`` (many cores on a simulated network), ``rotation`` and ``rotator`` (automatic key rotation: the
pure core and its driver).
"""

from sidecar.gossip.core import GossipCore
from sidecar.gossip.errors import GossipDecodeError, GossipError, GossipMessageTooLarge, KeyringError
from sidecar.gossip.keyring import Keyring, generate_key
from sidecar.gossip.node import GossipNode
from sidecar.gossip.outputs import (
    Event,
    GossipCounters,
    MemberAlive,
    MemberDead,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspect,
    MemberUpdated,
    RemoteState,
    SyncCompleted,
    UserMessage,
)
from sidecar.gossip.state import MemberState, MemberView

__all__ = [
    "Event",
    "GossipCore",
    "GossipCounters",
    "GossipDecodeError",
    "GossipError",
    "GossipMessageTooLarge",
    "GossipNode",
    "Keyring",
    "KeyringError",
    "MemberAlive",
    "MemberDead",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberState",
    "MemberSuspect",
    "MemberUpdated",
    "MemberView",
    "RemoteState",
    "SyncCompleted",
    "UserMessage",
    "generate_key",
]
