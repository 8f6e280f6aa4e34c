"""The Targets that reach peer sidecars: one per endpoint of a destination service, over mTLS, with the destination's
policy timeouts and a pool per (peer, service, TLS context); what the resilience layers dial through. One set for
HTTP/1.1, one for HTTP/2 (its pools multiplex streams, each knowing the HTTP/1.1 Target to fall back to), one for
raw tunnels."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Hashable

from sidecar.catalog.mesh import MeshCatalog
from sidecar.config.model import Config
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet, Router
from sidecar.proxy import Target
from sidecar.proxy.target import H2PeerKey
from sidecar.resilience import deadline
from sidecar.tls.context import service_server_name


class PeerTargets:
    """Targets to peer sidecars, one per endpoint, kept until the catalog snapshot or our context changes.

    Pools are keyed by (kind, peer address, service, context generation): after a rotation new connections use new
    pools (a TLS session made with one context cannot be offered by another); the old pools' idle
    connections are closed by the pool sweeper, and requests on them finish undisturbed.
    """

    __slots__ = ("_config", "_context", "_fallback", "_generation", "_peer_check", "_targets", "_version", "kind")

    def __init__(self, config: Config, kind: str,
                 peer_check: Callable[[Endpoint], Callable[[ssl.SSLObject], object]] | None = None,
                 fallback: Callable[[Endpoint], Target] | None = None) -> None:
        """``fallback``: HTTP/2 Targets (an :class:`H2PeerKey` pool per peer and service) whose peer may turn out
        to speak HTTP/1.1 only; it gives the HTTP/1.1 Target of the same endpoint."""
        self._config = config
        self._peer_check = peer_check
        self._fallback = fallback
        self.kind = kind
        self._version = -1
        self._context: ssl.SSLContext | None = None
        self._generation = 0
        # by the Endpoint's identity (its dataclass hash runs in Python, on every request); the Endpoint is kept in
        # the value, so its id is not reused while the entry lives. Within one catalog version the router hands
        # out the same Endpoint objects; an equal copy only costs a second Target on the same pool.
        self._targets: dict[int, tuple[Endpoint, Target]] = {}

    def get(self, endpoint: Endpoint, version: int, context: ssl.SSLContext) -> Target:
        if version != self._version or context is not self._context:
            if context is not self._context:
                self._generation += 1
                self._context = context
            self._version = version
            self._targets = {}
        entry = self._targets.get(id(endpoint))
        if entry is not None and entry[0] is endpoint:
            return entry[1]
        if len(self._targets) >= 4096:
            self._targets = {}
        target = self._build(endpoint, context)
        self._targets[id(endpoint)] = (endpoint, target)
        return target

    def reconfigure(self, config: Config) -> None:
        """Reloaded policies: Targets are rebuilt on next use with the new timeouts; pool keys do not change, so
        pooled connections to peers are kept."""
        self._config = config
        self._version = -1

    def _build(self, endpoint: Endpoint, context: ssl.SSLContext) -> Target:
        policy = self._config.policy_for(endpoint.service)
        timeout = float(policy.timeout)
        per_try = policy.retries.per_try_timeout
        try_timeout = deadline.try_timeout(None if per_try is None else float(per_try), policy.retries.attempts,
                                           timeout)
        host, port = endpoint.address
        # the SNI asks the peer for the destination service's certificate, and the pool is per service: a
        # connection verified as service A is never reused for service B on the same peer
        key: Hashable = (self.kind, endpoint.address, endpoint.service, self._generation)
        if self._fallback is not None:
            key = H2PeerKey(endpoint.address, endpoint.service, self._generation, self._fallback(endpoint))
        return Target(endpoint.address, ssl=context, server_hostname=service_server_name(endpoint.service, host, port),
                      pool_key=key, timeout=timeout,
                      try_timeout=try_timeout, tag=endpoint,
                      verify=self._peer_check(endpoint) if self._peer_check is not None else None)


class CatalogPeers:
    """The resilience layers' ``Peers``, from the catalog: a name's endpoints now, an endpoint's Target."""

    __slots__ = ("_catalog", "_context", "_router", "_targets")

    def __init__(self, catalog: MeshCatalog, router: Router, targets: PeerTargets,
                 context: Callable[[], ssl.SSLContext]) -> None:
        self._catalog = catalog
        self._router = router
        self._targets = targets
        self._context = context

    def endpoints(self, name: ServiceName) -> EndpointSet:
        return self._router.endpoints(self._catalog.snapshot(), name)

    def target(self, endpoint: Endpoint) -> Target:
        return self._targets.get(endpoint, self._catalog.snapshot().version, self._context())
