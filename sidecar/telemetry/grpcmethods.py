"""The name records and metrics give a gRPC call: its path ``/pkg.Service/Method``, with the number of distinct
names bounded per destination service.

Method names come from requests, not from configuration: a client can send any path. So each service keeps the
first ``MAX_METHODS_PER_SERVICE`` paths it saw, and every call to another path is named ``other`` (as Envoy's
stats do with request-derived names), which bounds the records' keys and the metrics' series whatever clients
send. Services are bounded by the caller (catalog names, else ``unknown``); at most ``MAX_SERVICES`` are kept.
A path that is not of gRPC's shape is ``other`` too.
"""

from __future__ import annotations

from sidecar.http2.grpc import service_method

MAX_METHODS_PER_SERVICE = 100
MAX_SERVICES = 1000
OTHER = "other"


class MethodNames:
    """See the module's doc. Not thread-safe: the event loop owns it."""

    __slots__ = ("_by_service", "max_methods", "max_services")

    def __init__(self, max_methods: int = MAX_METHODS_PER_SERVICE, max_services: int = MAX_SERVICES) -> None:
        self.max_methods = max_methods
        self.max_services = max_services
        self._by_service: dict[str, dict[bytes, str]] = {}

    def name(self, service: str, path: bytes) -> str:
        """``/pkg.Service/Method`` for the call to ``service`` at ``path`` (the request target), or ``other``."""
        known = self._by_service.get(service)
        if known is None:
            if len(self._by_service) >= self.max_services:
                return OTHER
            known = self._by_service[service] = {}
        name = known.get(path)
        if name is not None:
            return name
        if len(known) >= self.max_methods:
            return OTHER
        parsed = service_method(path.decode("latin-1"))
        if parsed is None:
            return OTHER
        name = known[path] = "/" + parsed
        return name

    def count(self, service: str) -> int:
        """Distinct names kept for ``service`` (at most ``max_methods``)."""
        return len(self._by_service.get(service, ()))
