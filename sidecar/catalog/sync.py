"""The catalog's wire form for gossip: each node's full list of services with a version, newest wins.

A node broadcasts its own state after every registration or status change (the broadcast queue keeps only
the newest per node), and push-pull carries every state a node knows, so a missed broadcast heals within a
push-pull interval. Versions are epoch milliseconds made strictly increasing, so a restarted node's states
are newer than anything it said before it died. Decoding never raises anything but :class:`SyncDecodeError`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.catalog.model import ServiceMetadata, Subscription

_FORMAT = 1
MAX_DECODED = 4 << 20  # a node state larger than 4 MiB decompressed is refused, not inflated


class SyncDecodeError(ValueError):
    """A catalog state from a peer could not be read; the peer is at fault."""


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str
    version: int
    instances: tuple[ServiceMetadata, ...]
    # the node's push and stream subscriptions (messaging); an optional 4th item on the wire, so states
    # from nodes without any (or from before subscriptions existed) keep the 3-item form
    subscriptions: tuple[Subscription, ...] = ()


def next_version(previous: int, now_ms: int) -> int:
    """Strictly increasing, and close to wall time so it survives restarts."""
    return max(previous + 1, now_ms)


def _state_json(state: NodeState) -> list[object]:
    out: list[object] = [state.node, state.version,
                         [dict(i.to_json(), messagesPath=i.messages_path) for i in state.instances]]
    if state.subscriptions:
        out.append([s.to_json() for s in state.subscriptions])
    return out


def encode_states(states: Iterable[NodeState]) -> bytes:
    body = json.dumps([_FORMAT, [_state_json(s) for s in states]], separators=(",", ":")).encode()
    return zlib.compress(body, 6)


def decode_states(data: bytes) -> list[NodeState]:
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(data, MAX_DECODED)
        if inflater.unconsumed_tail:
            raise SyncDecodeError(f"catalog state larger than {MAX_DECODED} bytes")
        doc = json.loads(body)
        if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == _FORMAT and isinstance(doc[1], list)):
            raise SyncDecodeError("not a catalog state of a known format")
        states = []
        for item in doc[1]:
            if not isinstance(item, list) or len(item) not in (3, 4):
                raise SyncDecodeError("malformed node state")
            node, version, instances = item[:3]
            subscriptions = item[3] if len(item) == 4 else []
            if (not isinstance(node, str) or not isinstance(version, int) or not isinstance(instances, list)
                    or not isinstance(subscriptions, list)):
                raise SyncDecodeError("malformed node state")
            parsed = tuple(ServiceMetadata.from_json(i) for i in instances)
            subs = tuple(Subscription.from_json(s) for s in subscriptions)
            states.append(NodeState(node, version, parsed, subs))
        return states
    except SyncDecodeError:
        raise
    # RecursionError: JSON nested deeper than the interpreter's stack; OverflowError: a port of Infinity
    except (zlib.error, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as e:
        raise SyncDecodeError(f"malformed catalog state: {type(e).__name__}: {e}") from None
