"""The envelope around every gossip packet and stream frame: cluster name, then plain or sealed body.

    magic:u8 (0x5C)  cluster_length:u8  cluster:bytes  body

``body`` starts with 0 for plaintext, or is the keyring's AES-GCM output (starting with 1) whose
associated data is the header, cluster name included. A packet of another cluster is refused on its
header (and would fail authentication anyway), a plaintext packet is refused by an encrypting member
and vice versa; each refusal is counted by reason, and nothing refused ever reaches the protocol.
"""

from __future__ import annotations

import enum

from sidecar.gossip.errors import GossipError
from sidecar.gossip.keyring import OVERHEAD, DecryptionFailed, Keyring

MAGIC = 0x5C
PLAINTEXT = 0
MAX_CLUSTER_NAME = 64  # bytes; the header rides in every packet


class GossipRefusal(enum.StrEnum):
    MALFORMED = "malformed"  # not an envelope, or a body that does not decode
    CLUSTER = "cluster"  # another cluster's name in the header
    KEY = "key"  # encrypted under no key we hold
    PLAINTEXT = "plaintext"  # unencrypted, but we require encryption
    ENCRYPTED = "encrypted"  # encrypted, but we have no keys


class PacketRefused(GossipError):
    """A packet or frame was refused before reaching the protocol; ``reason`` says why."""

    def __init__(self, reason: GossipRefusal, detail: str) -> None:
        super().__init__(f"gossip packet refused ({reason.value}): {detail}")
        self.reason = reason


class Envelope:
    __slots__ = ("_header", "cluster", "keyring", "overhead")

    def __init__(self, cluster: str, keyring: Keyring | None = None) -> None:
        raw = cluster.encode()
        if len(raw) > MAX_CLUSTER_NAME:
            raise ValueError(f"cluster name is {len(raw)} bytes, over {MAX_CLUSTER_NAME}")
        self.cluster = cluster
        self.keyring = keyring
        self._header = bytes((MAGIC, len(raw))) + raw
        self.overhead = len(self._header) + (OVERHEAD if keyring is not None else 1)

    def seal(self, payload: bytes) -> bytes:
        if self.keyring is None:
            return self._header + b"\x00" + payload
        return self._header + self.keyring.encrypt(payload, self._header)

    def open(self, data: bytes) -> bytes:
        """The payload of a packet of our cluster; raises PacketRefused otherwise."""
        header = self._header
        if not data.startswith(header):
            if len(data) < 2 or data[0] != MAGIC or len(data) < 2 + data[1]:
                raise PacketRefused(GossipRefusal.MALFORMED, "no gossip envelope")
            other = data[2 : 2 + data[1]].decode(errors="replace")
            raise PacketRefused(GossipRefusal.CLUSTER, f"cluster {other!r} is not {self.cluster!r}")
        size = len(header)
        if len(data) <= size:
            raise PacketRefused(GossipRefusal.MALFORMED, "empty body")
        encrypted = data[size] != PLAINTEXT
        if self.keyring is None:
            if encrypted:
                raise PacketRefused(GossipRefusal.ENCRYPTED, "the packet is encrypted and we hold no keys")
            return data[size + 1 :]
        if not encrypted:
            raise PacketRefused(GossipRefusal.PLAINTEXT, "the packet is not encrypted")
        try:
            return self.keyring.decrypt(data[size:], header)
        except DecryptionFailed as exc:
            raise PacketRefused(GossipRefusal.KEY, str(exc)) from None
