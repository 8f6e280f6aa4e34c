"""What a ``/metrics`` scrape reads from each part of the sidecar: one Protocol per part, naming the counters the
exposition (:mod:`sidecar.telemetry.prometheus`) turns into families.

The parts are described structurally rather than imported: the data plane, gossip, DNS, messaging and the
catalog all sit above telemetry in the import graph (they report requests to it), so naming their classes here
would tie the layers into a cycle. Each Protocol is the narrow read-only view the exporter needs; the concrete
classes satisfy it as they are, and mypy checks that they do where :class:`Sources` is built (``sidecar.app``).
Members are read-only properties so that a plain attribute, a property or a ``Counter`` all fit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sidecar.catalog.model import HealthStatus
    from sidecar.tls.reasons import Refusal

Key3 = tuple[str, str, str]


class MeshCounters(Protocol):
    """The data plane's counters since start (``sidecar.mesh.stats.MeshStats``)."""

    @property
    def errors(self) -> Mapping[Key3, int]: ...       # (listener, service, error)
    @property
    def denials(self) -> Mapping[Key3, int]: ...      # (service, caller service, rule)
    @property
    def tunnels(self) -> Mapping[Key3, int]: ...      # (listener, service, outcome)
    @property
    def tunnel_bytes(self) -> Mapping[Key3, int]: ...  # (listener, service, direction)
    @property
    def no_tls(self) -> int: ...


class PoolCounts(Protocol):
    """One upstream pool (``sidecar.proxy.pool.UpstreamPool``)."""

    @property
    def idle(self) -> int: ...
    @property
    def busy(self) -> int: ...
    @property
    def dialed(self) -> int: ...


class InboundCounts(Protocol):
    """The mTLS inbound listener (``sidecar.mesh.inbound.InboundListener``)."""

    @property
    def handshakes(self) -> Mapping[str, int]: ...  # verified connections by caller SPIFFE ID
    @property
    def refused(self) -> int: ...
    @property
    def shed(self) -> int: ...
    @property
    def tunnel_refused(self) -> int: ...


class ResilienceSamples(Protocol):
    """Every destination's resilience state (``sidecar.resilience.Resilience``)."""

    def samples(self, now: float) -> Iterable[tuple[str, dict[str, str], float]]: ...


class RefusalCounts(Protocol):
    """TLS refusals by kind (``sidecar.tls.handshake.RefusalLog``)."""

    @property
    def counts(self) -> Mapping[Refusal, int]: ...


class CertificateIdentity(Protocol):
    @property
    def not_after(self) -> dt.datetime: ...


class IdentitySource(Protocol):
    """The identity store (``sidecar.tls.reloader.IdentityStore``)."""

    @property
    def refusals(self) -> RefusalCounts: ...
    @property
    def rotations(self) -> int: ...
    @property
    def identity(self) -> CertificateIdentity: ...


class DataPlaneSource(Protocol):
    """The data plane (``sidecar.mesh.dataplane.DataPlane``): its counters, pools, inbound and resilience."""

    @property
    def stats(self) -> MeshCounters: ...
    @property
    def pools(self) -> Iterable[PoolCounts]: ...
    def h2_connections(self) -> Mapping[str, int]: ...
    def h2_peer_counts(self) -> Mapping[tuple[str, str], Mapping[str, int]]: ...
    @property
    def inbound(self) -> InboundCounts | None: ...  # None without a tls section
    @property
    def resilience(self) -> ResilienceSamples: ...
    @property
    def store(self) -> IdentitySource | None: ...
    def h2_protections(self) -> Mapping[tuple[str, str], int]: ...  # (listener, protection) -> times fired


class MemberStateView(Protocol):
    @property
    def state(self) -> str: ...


class GossipSource(Protocol):
    """The gossip node (``sidecar.gossip.node.GossipNode``)."""

    def counters(self) -> dict[str, int]: ...
    def members(self) -> Iterable[MemberStateView]: ...


class DnsCounterSource(Protocol):
    def as_dict(self) -> Mapping[str, Any]: ...  # "queries_by_rcode": {rcode: n}, scalar counters by name


class DnsSource(Protocol):
    """The DNS server (``sidecar.dns.server.DnsServer``)."""

    @property
    def counters(self) -> DnsCounterSource: ...


class MessagingSource(Protocol):
    """The messaging service (``sidecar.messaging.service.Messaging``)."""

    @property
    def counters(self) -> Mapping[str, int]: ...  # "published", "dead_lettered:REASON", ...
    def status(self) -> Mapping[str, Any]: ...    # "pending", "deadLetters", "deadLetterBytes", ...


class InstanceView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> HealthStatus: ...


class CatalogSnapshotView(Protocol):
    @property
    def instances(self) -> Iterable[InstanceView]: ...


class CatalogSource(Protocol):
    """The mesh-wide catalog (``sidecar.catalog.mesh.MeshCatalog``)."""

    def snapshot(self) -> CatalogSnapshotView: ...


class RenewalSource(Protocol):
    """Certificate renewal (``sidecar.tls.renewer.Renewer``), when tls.issuer is set."""

    @property
    def results(self) -> Mapping[str, int]: ...  # by outcome: "success", "failure"


class ReplicationSource(Protocol):
    """Catalog replication (``sidecar.catalog.replication``)."""

    @property
    def refused(self) -> Mapping[str, int]: ...  # claims not kept, by reason
    @property
    def left_to_push_pull(self) -> int: ...


@dataclass
class Sources:
    """The parts a scrape reads; any may be None (not configured, not started, not built yet)."""

    dataplane: DataPlaneSource | None = None
    gossip: GossipSource | None = None
    dns: DnsSource | None = None
    identity: IdentitySource | None = None
    messaging: MessagingSource | None = None
    catalog: CatalogSource | None = None
    renewal: RenewalSource | None = None
    replication: ReplicationSource | None = None
