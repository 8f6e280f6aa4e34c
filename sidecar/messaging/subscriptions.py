"""The mesh-wide subscription book: this node's subscriptions plus every peer's, as gossip reports them.

Pure: changes in, the set of wanted streams out. A stream is (topic, subscriber): the subscriber is a service
(competing consumers: one stream per service however many instances or nodes subscribe; its path is the
smallest path any of them gave, with its bulk size, so every publisher picks the same) or ``node:NAME`` for a
node's stream readers (SSE).

A subscriber's sidecar keeps what publishers' sidecars send it for a local app in *inbox* streams, one per
(publisher, topic, service): their subscriber is ``inbox:ORIGIN:SERVICE`` (ORIGIN: the publishing sidecar's
certificate's service, node and store epoch), never in the book; they live while the local subscription does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.catalog.model import NODE_STREAM, Subscription

NODE_PREFIX = "node:"
INBOX_PREFIX = "inbox:"


def node_subscriber(node: str) -> str:
    return NODE_PREFIX + node


def subscriber_node(subscriber: str) -> str | None:
    """The node of a ``node:NAME`` subscriber; None for a service."""
    return subscriber[len(NODE_PREFIX):] if subscriber.startswith(NODE_PREFIX) else None


def inbox_subscriber(origin: str, service: str) -> str:
    return f"{INBOX_PREFIX}{origin}:{service}"


def inbox_service(subscriber: str) -> str | None:
    """The local service of an ``inbox:ORIGIN:SERVICE`` subscriber; None for any other."""
    if not subscriber.startswith(INBOX_PREFIX):
        return None
    return subscriber.rpartition(":")[2]


@dataclass(frozen=True, slots=True)
class Wanted:
    topic: str
    subscriber: str
    path: str
    bulk: int = 0   # messages per POST with bulk delivery; 0: one per POST


class SubscriptionBook:
    def __init__(self, node: str) -> None:
        self.node = node
        self.local: dict[tuple[str, str], Subscription] = {}  # (service, topic) → subscription
        self.remote: dict[str, tuple[Subscription, ...]] = {}
        self.version = 0

    def add_local(self, subscription: Subscription) -> bool:
        """True when this changed the book (new, or a new path)."""
        key = (subscription.service, subscription.topic)
        if self.local.get(key) == subscription:
            return False
        self.local[key] = subscription
        self.version += 1
        return True

    def remove_local(self, service: str, topic: str) -> bool:
        """True when this changed the book (the subscription was there)."""
        if self.local.pop((service, topic), None) is None:
            return False
        self.version += 1
        return True

    def local_tuple(self) -> tuple[Subscription, ...]:
        return tuple(sorted(self.local.values(), key=lambda s: (s.service, s.topic)))

    def set_remote(self, node: str, subscriptions: Iterable[Subscription]) -> bool:
        if node == self.node:
            return False
        items = tuple(subscriptions)
        if self.remote.get(node, ()) == items:
            return False
        if items:
            self.remote[node] = items
        else:
            self.remote.pop(node, None)
        self.version += 1
        return True

    def wanted(self) -> dict[tuple[str, str], Wanted]:
        """Every stream the mesh wants now, keyed by (topic, subscriber)."""
        out: dict[tuple[str, str], Wanted] = {}
        sources = [(self.node, s) for s in self.local.values()]
        sources += [(node, s) for node, subs in self.remote.items() for s in subs]
        for node, sub in sources:
            subscriber = node_subscriber(node) if sub.service == NODE_STREAM else sub.service
            key = (sub.topic, subscriber)
            held = out.get(key)
            if held is None or (sub.path, sub.bulk) < (held.path, held.bulk):
                out[key] = Wanted(sub.topic, subscriber, sub.path, sub.bulk)
        return out

    def nodes_of(self, service: str, topic: str) -> list[str]:
        """The nodes where ``service`` subscribes to ``topic`` (sorted)."""
        nodes = [self.node] if (service, topic) in self.local else []
        nodes += [node for node, subs in self.remote.items()
                  if any(s.service == service and s.topic == topic for s in subs)]
        return sorted(nodes)

    def to_json(self) -> list[dict[str, Any]]:
        rows = [(self.node, s) for s in self.local.values()]
        rows += [(n, s) for n, subs in self.remote.items() for s in subs]
        out = [{"node": n, "service": s.service, "topic": s.topic, "path": s.path,
                **({"bulk": {"enabled": True, "maxMessages": s.bulk}} if s.bulk else {})} for n, s in rows]
        return sorted(out, key=lambda r: (r["topic"], r["service"], r["node"]))
