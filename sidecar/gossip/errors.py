"""Errors of the gossip layer, named for their cause; every one shares :class:`GossipError`."""

from __future__ import annotations

from sidecar.errors import InvalidArgument


class GossipError(Exception):
    """Something went wrong in the gossip layer."""


class GossipDecodeError(GossipError):
    """A peer sent bytes that are not a valid gossip message (the peer's fault, never ours)."""


class GossipMessageTooLarge(GossipError, ValueError):
    """A message does not fit the limit it is sent under (a UDP packet, the metadata cap)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class KeyringError(InvalidArgument, GossipError):
    """A keyring operation was refused: bad key, unknown key, or removing the key in use."""
