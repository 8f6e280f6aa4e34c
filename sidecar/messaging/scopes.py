"""Topic scopes: which services may publish to a topic and which may subscribe to it. Pure: config in, answers out.

``messaging.topics: {orders: {publishers: [checkout], subscribers: [payments, audit]}}`` closes ``orders`` to
every other service; a topic not named is open unless ``messaging.default: deny``. The checks run where the
service can be proven:

* the publishing sidecar refuses a publish by a service not among the publishers (403);
* a subscribing sidecar refuses a push subscription or an SSE reader of a service not among the subscribers (403);
* a publishing sidecar creates no stream for, and delivers nothing to, a subscriber not among the subscribers
  (a node's stream readers count as the service the node's certificate names, proven in a TLS handshake);
* a subscribing sidecar refuses a push delivery (``x-sidecar-topic``) from a caller not among the publishers;
* a receiving sidecar accepts a delivery only from a caller whose SPIFFE ID names a publisher.
"""

from __future__ import annotations

from sidecar.config.model import MessagingConfig
from sidecar.errors import PermissionDenied


class TopicScopes:
    __slots__ = ("_default", "_topics")

    def __init__(self, config: MessagingConfig) -> None:
        self._default = config.default == "allow"
        self._topics = {name: (frozenset(scope.publishers), frozenset(scope.subscribers))
                        for name, scope in config.topics.items()}

    @property
    def open(self) -> bool:
        """True when no topic is scoped: every check passes."""
        return self._default and not self._topics

    def may_publish(self, service: str, topic: str) -> bool:
        scope = self._topics.get(topic)
        if scope is None:
            return self._default
        return "*" in scope[0] or service in scope[0]

    def may_subscribe(self, service: str, topic: str) -> bool:
        scope = self._topics.get(topic)
        if scope is None:
            return self._default
        return "*" in scope[1] or service in scope[1]

    def where(self, topic: str, side: str) -> str:
        """The config key that decided, for error messages."""
        return f"messaging.topics.{topic}.{side}" if topic in self._topics else "messaging.default"

    def check_publish(self, service: str, topic: str) -> None:
        if not self.may_publish(service, topic):
            where = self.where(topic, "publishers")
            raise PermissionDenied(f"{service} may not publish to {topic} ({where})",
                                   {"service": service, "topic": topic, "rule": where})

    def check_subscribe(self, service: str, topic: str) -> None:
        if not self.may_subscribe(service, topic):
            where = self.where(topic, "subscribers")
            raise PermissionDenied(f"{service} may not subscribe to {topic} ({where})",
                                   {"service": service, "topic": topic, "rule": where})
