"""What a peer's request or tunnel may reach: the caller (verified once per connection), the local service its
Host or tunnel header names, the authorization decision, and the mesh's own headers (``x-sidecar-caller`` is set
by the destination's sidecar only; paths under ``/.sidecar/`` are between sidecars only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

from sidecar.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from sidecar.mesh.authorization import Decisions
from sidecar.mesh.local_apps import LocalServices
from sidecar.mesh.naming import Names, ServiceName
from sidecar.mesh.stats import MeshStats
from sidecar.proxy import ConnectionInfo, RequestHead, Target
from sidecar.tls.context import selected_service
from sidecar.tls.errors import PeerRefused
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reloader import IdentityStore

CALLER_HEADER: Final = b"x-sidecar-caller"
TOPIC_HEADER: Final = b"x-sidecar-topic"  # a push delivery of a published message names its topic
INTERNAL_PREFIX: Final = b"/.sidecar/"  # paths between sidecars (messaging deliveries); never an app's
CALLER_KEY: Final = "caller"  # ConnectionInfo.data: the verified caller's PeerIdentity
_CALLER_VALUE: Final = "caller-header"
_SELECTED_KEY: Final = "selected-service"  # ConnectionInfo.data: the service the caller's SNI named, or ""


def refuse_internal(head: RequestHead) -> None:
    """Outbound: paths under ``/.sidecar/`` are for peer sidecars only; an app that sends one through its own
    sidecar would otherwise reach a peer's internal receiver with this sidecar's identity."""
    if head.target.startswith(INTERNAL_PREFIX):
        raise PermissionDenied(f"{head.path} is sidecar-internal: apps cannot call paths under /.sidecar/",
                               {"path": head.path})


def no_service_named(host: str) -> InvalidArgument:
    return InvalidArgument(
        f"Host {host!r} names no service: use Host: SERVICE or SERVICE.service.DOMAIN, "
        "or http://SERVICE/path with this listener as HTTP proxy", {"host": host})


class InboundRoutes:
    """The inbound route callbacks: who calls (verified once per connection), which local app, may it."""

    def __init__(self, store: IdentityStore, local: LocalServices, decisions: Decisions, names: Names,
                 stats: MeshStats) -> None:
        self.store = store
        self.local = local
        self.decisions = decisions
        self.names = names
        self.stats = stats
        # sidecar-internal requests (path under INTERNAL_PREFIX) from verified peers: messaging's receiver
        # (wire: ``dataplane.routes.internal = messaging.internal_route``); never routed to an app. It is given
        # the authorization check, to apply to the local services the request is for
        self.internal: Callable[[RequestHead, PeerIdentity, Callable[[PeerIdentity, str, str, str], None]],
                                Target] | None = None
        # topic scopes, when any topic is scoped (wire: ``routes.may_publish = messaging.scopes.may_publish``): a
        # request that says it delivers a topic (x-sidecar-topic) must come from a service that may publish it
        self.may_publish: Callable[[str, str], bool] | None = None

    def caller(self, conn: ConnectionInfo) -> PeerIdentity:
        data = conn.data
        caller = data.get(CALLER_KEY)
        if caller is None:
            if conn.ssl_object is None:
                raise Unauthenticated("peer presented no client certificate")
            try:
                caller = self.store.verify_peer(conn.ssl_object)
            except PeerRefused as exc:
                raise Unauthenticated(exc.reason.message, {"reason": exc.reason.kind.value}) from None
            data[CALLER_KEY] = caller
        return cast(PeerIdentity, caller)

    def _authorize(self, caller: PeerIdentity, service: str, method: str, path: str) -> None:
        decision = self.decisions.decide(caller.service, service, method, path)
        if not decision.allowed:
            self.stats.denied(service, caller.service, decision.rule or "authorization")
            raise PermissionDenied(
                f"{caller.service} may not call {service}: {decision.reason}",
                {"rule": decision.rule, "caller": caller.spiffe_id, "service": service, "method": method,
                 "path": path})

    def http(self, head: RequestHead, conn: ConnectionInfo) -> Target:
        caller = self.caller(conn)
        if head.target.startswith(INTERNAL_PREFIX):
            if self.internal is None:
                raise NotFound(f"no such sidecar-internal resource: {head.path}", {"path": head.path})
            return self.internal(head, caller, self._authorize)
        name = self.names.parse(head.host)
        if name is None:
            raise no_service_named(head.host)
        _require_selected(conn, name)
        # 404, then 403, then 503: which services live here is no secret, their health is the callers' business
        self._require_registered(name)
        self._authorize(caller, name.service, head.method, head.path)
        if self.may_publish is not None:
            self._check_topic(caller, head)
        target = self.local.pick(name)
        value = conn.data.get(_CALLER_VALUE)
        if value is None:
            value = conn.data[_CALLER_VALUE] = caller.spiffe_id.encode("latin-1")
        set_caller(head, value)
        return target

    def _check_topic(self, caller: PeerIdentity, head: RequestHead) -> None:
        may_publish = self.may_publish
        topic = head.headers.get(TOPIC_HEADER)
        if topic is not None and may_publish is not None and not may_publish(caller.service, topic):
            raise PermissionDenied(f"{caller.service} may not publish to {topic}: the topic's scope does not list it",
                                   {"caller": caller.spiffe_id, "topic": topic, "header": TOPIC_HEADER.decode()})

    def tunnel(self, info: ConnectionInfo) -> Target:
        caller = self.caller(info)
        name: ServiceName = info.data["service"]
        _require_selected(info, name)
        self._require_registered(name)
        self._authorize(caller, name.service, "CONNECT", "")
        return self.local.pick(name)

    def _require_registered(self, name: ServiceName) -> None:
        if not self.local.known(name.service):
            raise NotFound(f"{name.service} is not registered on node {self.local.node}",
                           {"service": name.service, "node": self.local.node})


def _require_selected(conn: ConnectionInfo, name: ServiceName) -> None:
    """A connection whose SNI named a service (the caller checked our certificate for it) carries that service's
    requests only; one that named none (``openssl s_client``, node-level dials) goes by Host alone."""
    data = conn.data
    selected = data.get(_SELECTED_KEY)
    if selected is None:   # read once a connection: the handshake settled its SNI
        selected = data[_SELECTED_KEY] = selected_service(conn.ssl_object) or ""
    if selected and selected != name.service.lower():
        raise InvalidArgument(f"this connection was opened for {selected} (TLS server name); {name.service} needs its"
                              " own connection", {"service": name.service, "connection": selected})


def set_caller(head: RequestHead, value: bytes | None) -> None:
    """Remove every ``x-sidecar-caller`` the client sent; add ours when ``value`` is given."""
    items = head.headers.items
    for item in items:
        if item[0] == CALLER_HEADER:
            items = head.headers.items = [i for i in items if i[0] != CALLER_HEADER]
            break
    if value is not None:
        items.append((CALLER_HEADER, CALLER_HEADER, value))

