"""The configuration as typed, frozen objects. Every default is written here once, with its reason.

Field metadata read by the loader (``sidecar.config.load``):
  ``key``          the YAML key when it differs from the field name (``from`` is a Python keyword);
  ``check``        a function of the value returning a rule it breaks, or None;
  ``secret``       never shown whole on ``/config`` or in config errors: True, ``"command"`` (the program only)
                   or ``"url"`` (no user info or query); see ``sidecar.config.redact``;
  ``default_port`` for addresses that may omit the port;
  ``file``         the path must name a readable file.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sidecar.config.values import Duration, HostPort

# --------------------------------------------------------------------------------------------- rules


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _ratio(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _percent(value: float) -> str | None:
    return None if 0 <= value <= 100 else "must be in [0, 100]"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port in [1, 65535]"


_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dns_label(value: str) -> str | None:
    # service and node names become DNS labels (NAME.service.mesh, NODE.node.mesh)
    if _NAME.match(value.lower()):
        return None
    return "must be a DNS label: letters, digits and '-', 1 to 63 characters, not starting or ending with '-'"


def _domain(value: str) -> str | None:
    labels = value.strip(".").split(".")
    if value and all(_NAME.match(label.lower()) for label in labels):
        return None
    return "must be a DNS domain like mesh or mesh.local"


def _url_path(value: str) -> str | None:
    return None if value.startswith("/") else "must be a path starting with '/'"


def _spiffe_trust_domain(value: str) -> str | None:
    if re.match(r"^[a-z0-9._-]+$", value):
        return None
    return "must be a SPIFFE trust domain: lower-case letters, digits, '.', '_' and '-'"


RETRY_ON_TOKENS = ("connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx", "refused-stream",
                   # gRPC statuses (SPEC), as sidecar.http2.grpc.RETRY_ON names them
                   "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")


def _retry_on(values: list[str]) -> str | None:
    for value in values:
        if value not in RETRY_ON_TOKENS and not (value.isdigit() and 100 <= int(value) <= 599):
            return f"entries must be one of {', '.join(RETRY_ON_TOKENS)} or an HTTP status code"
    return None


_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "*"}


def _methods(values: list[str]) -> str | None:
    bad = [v for v in values if v.upper() not in _HTTP_METHODS]
    return f"unknown HTTP method {bad[0]!r}" if bad else None


# ------------------------------------------------------------------------------------------ sections


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # the node name is this sidecar's identity in gossip and DNS (NODE.node.mesh); the host name is what
    # a person would guess, and it is unique on most networks
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].lower(),
                      metadata={"check": dns_label})
    # members of another cluster are refused, so prod and staging never merge by accident
    cluster: str = "default"
    # durable state (message outbox, logs); None means data/NODE_NAME
    data_dir: str | None = None

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir if self.data_dir is not None else f"data/{self.name}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # loopback by default: the admin port can drain and reconfigure the sidecar
    listen: HostPort = HostPort("127.0.0.1", 9901)
    # when set, mutating endpoints need "Authorization: Bearer TOKEN" with the file's content
    token_file: str | None = field(default=None, metadata={"file": True})


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: HostPort = HostPort("127.0.0.1", 3500)
    # when set, every app API request needs "Authorization: Bearer TOKEN" with the file's content (Dapr's API
    # token): it keeps out the host's other users, which loopback alone does not
    token_file: str | None = field(default=None, metadata={"file": True})


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """PINGs on HTTP/2 connections to peer sidecars (Envoy's ``connection_keepalive``)."""

    # a PING after this much silence from the peer; Envoy's usual figure, far below NAT and firewall idle timers
    interval: Duration = field(default=Duration(30), metadata={"check": _positive})
    # no answer (nor any other frame) this long after a PING: the connection is closed, its streams fail over
    timeout: Duration = field(default=Duration(5), metadata={"check": _positive})


@dataclass(frozen=True, slots=True)
class OutboundHttp2Config:
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    listen: HostPort = HostPort("127.0.0.1", 15001)
    # HTTP/2 to peer sidecars (requests that arrive over HTTP/2 go on over it)
    http2: OutboundHttp2Config = field(default_factory=OutboundHttp2Config)


@dataclass(frozen=True, slots=True)
class InboundHttp2Config:
    # offer ALPN h2 to peer sidecars; off, they send everything over HTTP/1.1 (as to a sidecar without HTTP/2)
    enabled: bool = True
    # SETTINGS_MAX_CONCURRENT_STREAMS: streams one caller may have open at once on one connection; 100 is RFC
    # 9113's floor recommendation and what Envoy, nginx and Go advertise. A caller opens another connection
    # when its connection is full
    max_concurrent_streams: int = field(default=100, metadata={"check": _at_least_one})


@dataclass(frozen=True, slots=True)
class InboundConfig:
    # peers reach this one over mTLS; all interfaces by default, because peers are on other hosts
    listen: HostPort = HostPort("0.0.0.0", 15006)
    # the address peers dial; None means the gossip advertise host with the listen port
    advertise: HostPort | None = None
    http2: InboundHttp2Config = field(default_factory=InboundHttp2Config)


@dataclass(frozen=True, slots=True)
class DnsRateLimit:
    # every query, per client address; 0 turns the limit off, as most meshes have a handful of trusted clients
    # (forwarded queries have their own limit, on by default: forward_rate_limit)
    qps: float = field(default=0.0, metadata={"check": _non_negative})
    burst: int = field(default=100, metadata={"check": _at_least_one})


@dataclass(frozen=True, slots=True)
class DnsForwardRateLimit:
    """Per client address, on queries forwarded to ``dns.upstreams`` over UDP; names of the mesh are not counted.

    A forwarded answer can be 80 times the query (48 bytes in, ~3,900 out for a large TXT set), and a UDP
    source address can be forged: without a limit, a listener reachable from outside reflects amplified
    floods onto whoever the forged address names. Over the limit the reply is an empty one with TC=1, no
    larger than the query, so a real client retries over TCP (whose handshake a forger cannot complete, and
    which is not limited) and loses only a round trip; a forger gains nothing (the "slip" of BIND's response
    rate limiting). 0 turns the limit off.
    """

    # an app's resolver asks a few names a second (A and AAAA each); 20/s with a burst of 40 (a start-up
    # that resolves its dependencies at once) leaves it untouched and caps what one forged source can
    # draw at ~80 KB/s of answers
    qps: float = field(default=20.0, metadata={"check": _non_negative})
    burst: int = field(default=40, metadata={"check": _at_least_one})


@dataclass(frozen=True, slots=True)
class DnsConfig:
    # 8600 as Consul: an unprivileged port, so the sidecar never needs root
    listen: HostPort = HostPort("127.0.0.1", 8600)
    domain: str = field(default="mesh", metadata={"check": _domain})
    # short, because instances come and go; resolvers re-ask soon after a change
    ttl: Duration = Duration(5)
    upstreams: list[HostPort] = field(default_factory=list, metadata={"default_port": 53})
    upstream_timeout: Duration = field(default=Duration(2), metadata={"check": _positive})
    rate_limit: DnsRateLimit = field(default_factory=DnsRateLimit)
    forward_rate_limit: DnsForwardRateLimit = field(default_factory=DnsForwardRateLimit)


@dataclass(frozen=True, slots=True)
class GossipTuning:
    """Every timing of SWIM and Lifeguard; a profile gives them all, single YAML keys override."""

    probe_interval: Duration        # time between failure probes
    probe_timeout: Duration         # wait for a direct ack before indirect probes; about one RTT
    indirect_checks: int            # members asked to probe for us (ping-req)
    suspicion_mult: int             # suspicion timeout = mult * log10(max(1, n)) * probe_interval
    suspicion_max_timeout_mult: int  # Lifeguard: the timeout starts at max = this * min, shrinks with confirmations
    retransmit_mult: int            # each broadcast is sent mult * log10(n + 1) times
    gossip_interval: Duration       # time between piggyback gossip rounds
    gossip_nodes: int               # members gossiped to each round
    gossip_to_the_dead_time: Duration  # keep telling dead members for this long, so they learn and refute
    push_pull_interval: Duration    # full-state anti-entropy over TCP
    tcp_timeout: Duration           # TCP push-pull and fallback probe
    awareness_max_multiplier: int   # Lifeguard: probe interval stretches up to this when we are unhealthy
    dead_reap_time: Duration        # a dead or left member is forgotten after this


# memberlist's DefaultLANConfig: members in one data centre, round trips well under a millisecond
_LAN = GossipTuning(
    probe_interval=Duration(1),            # a failure check every second: a dead member is noticed in seconds
    probe_timeout=Duration(0.5),           # a generous round trip on a LAN, so a slow ack is not a failure
    indirect_checks=3,                     # three others probe a silent member: one lossy path cannot condemn it
    suspicion_mult=4,                      # suspect at least 4 * log10(n) probe intervals (4 s at most 10 members)
    suspicion_max_timeout_mult=6,          # Lifeguard: start at 6x that (96 s at 10k), shrink as others confirm
    retransmit_mult=4,                     # each update is sent 4 * ceil(log10(n + 1)) times: reaches all, margin
    gossip_interval=Duration(0.2),         # gossip often: UDP is cheap on a LAN and news spreads in rounds
    gossip_nodes=3,                        # to three members per round: epidemic spread in O(log n) rounds
    gossip_to_the_dead_time=Duration(30),  # as push-pull: a member wrongly declared dead hears it and refutes
    push_pull_interval=Duration(30),       # full-state sync is TCP and heavy, so rare; gossip does the rest
    tcp_timeout=Duration(10),              # a push-pull or fallback probe that takes 10 s has failed
    awareness_max_multiplier=8,            # an unhealthy member probes at most every 8 s instead of accusing
    dead_reap_time=Duration(30),           # forget the dead once the refutation window above has passed
)

GOSSIP_PROFILES: dict[str, GossipTuning] = {
    "lan": _LAN,
    # memberlist's DefaultWANConfig: members across data centres, round trips of tens to hundreds of ms
    "wan": replace(
        _LAN,
        probe_interval=Duration(5),            # probing across the WAN costs more; check less often
        probe_timeout=Duration(3),             # a WAN round trip, with loss and retransmission, can take seconds
        suspicion_mult=6,                      # more patience before dead: WAN loss is more often transient
        gossip_interval=Duration(0.5),         # gossip less often...
        gossip_nodes=4,                        # ...but to one more member, so spread stays about as fast
        gossip_to_the_dead_time=Duration(60),  # as push-pull
        push_pull_interval=Duration(60),       # full-state sync over a WAN is expensive: half as often
        tcp_timeout=Duration(30),              # TCP over a WAN connects and transfers slower
        dead_reap_time=Duration(60),           # as gossip_to_the_dead_time
    ),
    # memberlist's DefaultLocalConfig: members on one host or a loopback network (tests, demos, one machine)
    "local": replace(
        _LAN,
        probe_timeout=Duration(0.2),           # loopback answers in microseconds; 200 ms is already very late
        indirect_checks=1,                     # paths do not differ on one host: one helper is enough
        suspicion_mult=3,                      # loopback does not lose packets by chance: decide sooner
        retransmit_mult=2,                     # nor updates: fewer copies suffice
        gossip_interval=Duration(0.1),         # gossip is nearly free locally: spread faster
        gossip_to_the_dead_time=Duration(15),  # as push-pull
        push_pull_interval=Duration(15),       # cheap locally: sync twice as often as on a LAN
        tcp_timeout=Duration(1),               # a local TCP exchange that takes a second has failed
        dead_reap_time=Duration(15),           # as gossip_to_the_dead_time
    ),
}


@dataclass(frozen=True, slots=True)
class GossipConfig:
    listen: HostPort = HostPort("0.0.0.0", 7946)
    # the host:port peers use to reach us, for NAT and containers; None means the listen address, or the
    # address of the interface that routes to the first peer when listening on all interfaces
    advertise: HostPort | None = field(default=None, metadata={"default_port": 0})
    # host:port or DNS names; every A/AAAA record of a name is tried (a Kubernetes headless Service)
    join: list[HostPort] = field(default_factory=list, metadata={"default_port": 7946})
    # base64 AES keys of 16, 24 or 32 bytes; the first encrypts, all decrypt
    encrypt_keys: list[str] = field(default_factory=list, metadata={"secret": True})
    profile: Literal["lan", "wan", "local"] = "lan"
    probe_interval: Duration | None = field(default=None, metadata={"check": _positive})
    probe_timeout: Duration | None = field(default=None, metadata={"check": _positive})
    indirect_checks: int | None = field(default=None, metadata={"check": _non_negative})
    suspicion_mult: int | None = field(default=None, metadata={"check": _at_least_one})
    suspicion_max_timeout_mult: int | None = field(default=None, metadata={"check": _at_least_one})
    retransmit_mult: int | None = field(default=None, metadata={"check": _at_least_one})
    gossip_interval: Duration | None = field(default=None, metadata={"check": _positive})
    gossip_nodes: int | None = field(default=None, metadata={"check": _at_least_one})
    gossip_to_the_dead_time: Duration | None = None
    push_pull_interval: Duration | None = None
    tcp_timeout: Duration | None = field(default=None, metadata={"check": _positive})
    awareness_max_multiplier: int | None = field(default=None, metadata={"check": _at_least_one})
    dead_reap_time: Duration | None = None
    # failed members are offered a push-pull join this often (None: the push-pull interval), for this long
    # after they failed, so that a partition outlasting dead_reap_time still heals (Serf's reconnect_*)
    reconnect_interval: Duration | None = field(default=None, metadata={"check": _positive})
    reconnect_timeout: Duration = field(default=Duration(86400), metadata={"check": _positive})
    # automatic key rotation: every this long (epochs of wall time, the same on every member) a new key is
    # installed everywhere, made primary once every member reports holding it (through gossip), then the old
    # one is removed. encrypt_keys stay installed, so a member restarted with this config can always rejoin.
    # At least 1s; None: keys change by hand (admin /keys)
    rotate_every: Duration | None = field(default=None, metadata={"check": _positive})
    # prints the epoch's base64 key on stdout (e.g. a vault read), run by the shell with SIDECAR_GOSSIP_EPOCH,
    # SIDECAR_GOSSIP_CLUSTER and SIDECAR_GOSSIP_ROTATE_EVERY set; it must print the same key on every member.
    # Without it the key is HKDF-derived from the first configured key, the cluster and the epoch, so every
    # member computes the same key on its own
    rotate_command: str | None = field(default=None, metadata={"secret": "command"})

    def tuning(self) -> GossipTuning:
        """The profile's values with this config's overrides applied."""
        base = GOSSIP_PROFILES[self.profile]
        values = {name: getattr(self, name) for name in GossipTuning.__dataclass_fields__}
        return GossipTuning(**{k: (v if v is not None else getattr(base, k)) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class TlsConfig:
    trust_domain: str = field(default="mesh.local", metadata={"check": _spiffe_trust_domain})
    ca: str = field(default="certs/ca.pem", metadata={"file": True})
    cert: str = field(default="certs/node.pem", metadata={"file": True})
    key: str = field(default="certs/node-key.pem", metadata={"file": True, "secret": False})
    # None: the files are reloaded when another tool (cert-manager, a script) rewrites them
    issuer: TlsIssuerConfig | None = None
    # more services hosted on this node, one SVID each (cert names spiffe://TD/service/SERVICE); tls.cert is the
    # first identity: the one the outbound presents and the inbound answers with when a caller names no service
    identities: list[TlsIdentityConfig] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TlsIdentityConfig:
    """One more hosted service's certificate and key."""

    service: str = field(default="", metadata={"check": dns_label})
    cert: str = field(default="", metadata={"file": True})
    key: str = field(default="", metadata={"file": True, "secret": False})


def _renew_fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1, exclusive"


@dataclass(frozen=True, slots=True)
class TlsIssuerConfig:
    """The sidecar renews its own certificate (same identity) at ``renew_at`` of its lifetime."""

    # development: a local CA key signs the new certificate; its certificate is tls.ca unless given
    ca_key: str | None = field(default=None, metadata={"file": True, "secret": False})
    ca_cert: str | None = field(default=None, metadata={"file": True})
    # or a command (run by the shell) that writes a new certificate to $SIDECAR_CERT and its key to
    # $SIDECAR_KEY and exits 0; it also gets SIDECAR_SPIFFE_ID, SIDECAR_SERVICE, SIDECAR_TTL_SECONDS and
    # SIDECAR_CA. The sidecar checks the pair, then moves it into tls.cert and tls.key (sidecar.tls.issuers)
    command: str | None = field(default=None, metadata={"secret": "command"})
    # lifetime asked of the issuer for each new certificate (a command's CA may grant another)
    ttl: Duration = field(default=Duration(86400), metadata={"check": _positive})
    # renew at this fraction of the lifetime: the remaining 30% is time for retries if the issuer fails
    renew_at: float = field(default=0.7, metadata={"check": _renew_fraction})


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """One health check: exactly one of ``http``, ``tcp``, ``grpc`` or ``ttl``."""

    # a path on the app's port (/health) or a full http:// URL; 2xx healthy, 429 degraded, else unhealthy
    http: str | None = field(default=None, metadata={"secret": "url"})
    # connect to the app's port; success is healthy
    tcp: bool = False
    # grpc.health.v1.Health/Check over h2c on the app's port for this service ("" asks about the whole
    # server, as Consul's gRPC check does); SERVING is healthy, anything else unhealthy
    grpc: str | None = None
    # the app must send a heartbeat within this time, else unhealthy
    ttl: Duration | None = field(default=None, metadata={"check": _positive})
    interval: Duration = field(default=Duration(10), metadata={"check": _positive})
    timeout: Duration = field(default=Duration(1), metadata={"check": _positive})
    # a service unhealthy this long is removed; None keeps it forever
    deregister_after: Duration | None = field(default=None, metadata={"check": _positive})
    # consecutive results before the status flips (Consul's success_before_passing and
    # failures_before_critical); 1 flips on the first result
    success_before_healthy: int = field(default=1, metadata={"check": _at_least_one})
    failures_before_unhealthy: int = field(default=1, metadata={"check": _at_least_one})

    @property
    def kind(self) -> Literal["http", "tcp", "grpc", "ttl"]:
        if self.http is not None:
            return "http"
        if self.grpc is not None:
            return "grpc"
        if self.ttl is not None:
            return "ttl"
        return "tcp"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str = field(metadata={"check": dns_label})
    port: int = field(metadata={"check": _port})
    version: str = "0.0.0"
    # where the app listens, as seen from this sidecar
    host: str = "127.0.0.1"
    id: str | None = None
    tags: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    # where the app receives ServiceMessages (POST)
    messages_path: str = field(default="/messages", metadata={"check": _url_path})
    check: CheckConfig | None = None
    # how the inbound reaches the app: HTTP/1.1 (http, tcp) or h2c with prior knowledge (grpc, http2)
    protocol: Literal["http", "http2", "grpc", "tcp"] = "http"

    @property
    def h2c(self) -> bool:
        """The inbound speaks h2c (prior knowledge) to this app."""
        return self.protocol in ("grpc", "http2")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    service: str = field(metadata={"check": dns_label})
    local_port: int = field(metadata={"check": _port})
    protocol: Literal["http", "tcp"] = "http"
    # loopback: the app on this host is the only one meant to use the port
    bind: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    base: Duration = field(default=Duration(0.025), metadata={"check": _positive})
    max: Duration = field(default=Duration(0.25), metadata={"check": _positive})


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    # retries may add at most this share of live traffic (Linkerd's default is 0.2)
    ratio: float = field(default=0.2, metadata={"check": _ratio})
    # ... but a trickle of retries is always allowed, so low-traffic services still retry
    min_per_second: float = field(default=10.0, metadata={"check": _non_negative})


@dataclass(frozen=True, slots=True)
class RetryConfig:
    # attempts after the first
    attempts: int = field(default=2, metadata={"check": _non_negative})
    # what bounds one try; None: a try may use all that is left of the policy's timeout (Envoy's route timeout),
    # so a slow answer inside the timeout is not cut and run again. A value at or above the timeout bounds nothing
    # more than the timeout does (a named policy may shorten the timeout below the per-try timeout of "*")
    per_try_timeout: Duration | None = field(default=None, metadata={"check": _positive})
    retry_on: list[str] = field(default_factory=lambda: ["connect-failure", "reset", "503"],
                                metadata={"check": _retry_on})
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # retry POST and other non-idempotent requests too (only when nothing was sent is always safe)
    retry_non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    # Envoy's resource caps, with Envoy's default of 1024 for each but retries
    max_connections: int = field(default=1024, metadata={"check": _at_least_one})
    max_pending_requests: int = field(default=1024, metadata={"check": _at_least_one})
    max_requests: int = field(default=1024, metadata={"check": _at_least_one})
    max_retries: int = field(default=3, metadata={"check": _non_negative})


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    consecutive_failures: int = field(default=5, metadata={"check": _at_least_one})
    interval: Duration = field(default=Duration(10), metadata={"check": _positive})
    base_ejection_time: Duration = field(default=Duration(30), metadata={"check": _positive})
    max_ejection_time: Duration = field(default=Duration(300), metadata={"check": _positive})
    max_ejection_percent: float = field(default=10.0, metadata={"check": _percent})


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    timeout: Duration = field(default=Duration(15), metadata={"check": _positive})
    retries: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    outlier_detection: OutlierDetectionConfig = field(default_factory=OutlierDetectionConfig)
    load_balancer: Literal["round_robin", "least_request", "ewma"] = "ewma"


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """Who may call a service. Like Istio's ALLOW policies: once any allow rule names a service, callers that
    match none of its rules are refused; ``action: deny`` rules (Consul's deny intentions) are checked first."""

    to: str
    from_: list[str] = field(default_factory=lambda: ["*"], metadata={"key": "from"})
    methods: list[str] = field(default_factory=lambda: ["*"], metadata={"check": _methods})
    paths: list[str] = field(default_factory=lambda: ["*"])
    action: Literal["allow", "deny"] = "allow"


@dataclass(frozen=True, slots=True)
class AuthorizationConfig:
    default: Literal["allow", "deny"] = "allow"
    rules: list[AuthorizationRule] = field(default_factory=list)


def topic_name(value: str) -> str | None:
    # topics name URL path segments (/v1/publish/TOPIC) and rows of the outbox: keep them plain
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", value):
        return None
    return "must be a topic name: letters, digits, '.', '_' and '-', 1 to 200 characters"


def _service_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if v != "*" and dns_label(v) is not None]
    return f"entries must be service names or \"*\" (got {bad[0]!r})" if bad else None


@dataclass(frozen=True, slots=True)
class TopicScope:
    """Who may publish to one topic and who may subscribe to it, by service name (``*``: any service). Checked
    on the publishing sidecar, on subscribe (push and SSE), and on every delivery by the caller's SPIFFE ID."""

    # a list left out is open to every service; an empty list closes that side of the topic
    publishers: list[str] = field(default_factory=lambda: ["*"], metadata={"check": _service_patterns})
    subscribers: list[str] = field(default_factory=lambda: ["*"], metadata={"check": _service_patterns})


MAX_BULK_MESSAGES = 1000


def _bulk_size(value: int) -> str | None:
    return None if 1 <= value <= MAX_BULK_MESSAGES else f"must be in [1, {MAX_BULK_MESSAGES}]"


@dataclass(frozen=True, slots=True)
class BulkDeliveryConfig:
    """Opt-in bulk delivery (as Dapr's bulk subscribe): the app gets a JSON array of ServiceMessages per POST and
    answers a status per message (SUCCESS, RETRY, DROP)."""

    enabled: bool = False
    # Dapr's default maxMessagesCount: enough to amortize a request, small enough to answer within a timeout
    max_messages: int = field(default=100, metadata={"check": _bulk_size})


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    topic: str = field(metadata={"check": topic_name})
    path: str = field(metadata={"check": _url_path})
    # which local service receives the messages; None means the first service of this node
    service: str | None = field(default=None, metadata={"check": dns_label})
    bulk: BulkDeliveryConfig = field(default_factory=BulkDeliveryConfig)

    @property
    def bulk_size(self) -> int:
        """Messages per POST with bulk delivery; 0 without (one ServiceMessage per POST)."""
        return self.bulk.max_messages if self.bulk.enabled else 0


@dataclass(frozen=True, slots=True)
class MessagingRetention:
    """How much a publisher keeps for subscribers that are behind (down, slow); the oldest beyond either
    bound is dead-lettered (reason ``retention-age`` or ``retention-bytes``), logged and counted."""

    # a day covers a subscriber down over a night or a weekend deploy freeze's first day
    age: Duration = field(default=Duration(86400), metadata={"check": _positive})
    # message bodies kept in the outbox (bytes); 256 MiB fits any laptop's disk and most volumes
    bytes: int = field(default=256 << 20, metadata={"check": _at_least_one})


@dataclass(frozen=True, slots=True)
class MessagingQueue:
    """Backpressure: beyond either bound, publish answers 429 RESOURCE_EXHAUSTED instead of growing."""

    # messages in the outbox not yet settled (acked or dead-lettered) by every subscriber, plus publishes
    # waiting for the disk; Dapr/NATS-style flow control rather than unbounded buffering
    max_pending: int = field(default=100_000, metadata={"check": _at_least_one})
    # bytes of publishes waiting for their group commit (memory, not disk)
    max_write_bytes: int = field(default=64 << 20, metadata={"check": _at_least_one})


def _messaging_backoff() -> BackoffConfig:
    # redelivery is not an RPC retry: start at 100ms, cap at 10s so a recovered subscriber is found quickly
    return BackoffConfig(base=Duration(0.1), max=Duration(10))


@dataclass(frozen=True, slots=True)
class MessagingConfig:
    # deliveries the subscriber app answered with 429/5xx or timed out on, before a message is dead-lettered;
    # attempts that found no live instance do not count (the stream waits, within retention)
    max_attempts: int = field(default=10, metadata={"check": _at_least_one})
    retry_backoff: BackoffConfig = field(default_factory=_messaging_backoff)
    # one delivery to a subscriber app, to its response head
    delivery_timeout: Duration = field(default=Duration(10), metadata={"check": _positive})
    # request-response (POST /v1/messages/SERVICE) to the target app's answer
    request_timeout: Duration = field(default=Duration(30), metadata={"check": _positive})
    retention: MessagingRetention = field(default_factory=MessagingRetention)
    queue: MessagingQueue = field(default_factory=MessagingQueue)
    # dead letters kept; beyond either bound, the oldest are purged (logged and counted). Bytes count the copies of
    # the message bodies: a quarter of the outbox's retention.bytes, so dead letters cannot outgrow the outbox
    max_dead_letters: int = field(default=100_000, metadata={"check": _at_least_one})
    max_dead_letter_bytes: int = field(default=64 << 20, metadata={"check": _at_least_one})
    # topic scopes: {orders: {publishers: [checkout], subscribers: [payments, audit]}}
    topics: dict[str, TopicScope] = field(default_factory=dict)
    # a topic not named in topics: allow (open to every service) or deny (nobody publishes or subscribes)
    default: Literal["allow", "deny"] = "allow"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: Literal["none", "console", "otlp"] = "none"
    # the collector's base URL (http://host:4318); /v1/traces is appended
    endpoint: str | None = field(default=None, metadata={"secret": "url"})
    sample_ratio: float = field(default=1.0, metadata={"check": _ratio})


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    # off unless asked for, as Envoy's: one line per request is the costliest thing the proxy can do per request
    enabled: bool = False
    # json: one object per line for collectors; text: key=value, for people
    format: Literal["text", "json"] = "json"
    # a file the lines are appended to (written in batches, off the request path); null: stderr
    path: str | None = None


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    retention: Duration = field(default=Duration(900), metadata={"check": _positive})
    max_samples: int = field(default=100_000, metadata={"check": _at_least_one})
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # logger sidecar.access: to access_log.path, else on stderr like every other log line
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """Shed new requests with 503 before the process degrades (Envoy's overload manager, simplified): see
    sidecar/overload. Shedding stops once the value is under 90% of its limit and 1 s has passed since it was
    last over. The admin port is never shed."""

    enabled: bool = True
    # resident memory (what the OOM killer counts) at which new requests and new connections are refused; 0
    # turns the memory check off. A fresh sidecar is ~42 MiB and CPython keeps part of a spike's memory after
    # it (the guard then runs a full GC and malloc_trim), so leave room above the steady state
    max_memory_bytes: int = field(default=1 << 30, metadata={"check": _non_negative})
    # event-loop lag (a timer's lateness) at which new requests are refused; 0 turns the lag check off. Half a
    # second of lag is added to every request in flight: shedding lets the loop catch up
    max_loop_lag: Duration = field(default=Duration(0.5), metadata={"check": _non_negative})
    # how often memory and lag are sampled: one timer callback and one read of /proc/self/statm each time
    check_interval: Duration = field(default=Duration(0.1), metadata={"check": _positive})
    # open client connections per data-plane listener (outbound, inbound, each upstream port); at the cap an
    # idle keep-alive connection is closed to make room, else the new one gets 503. It keeps one listener from
    # taking every file descriptor (the admin port's included); memory is max_memory_bytes' job: an idle plain
    # connection costs ~4 KiB resident (16384: ~64 MiB), an idle mTLS one ~46 KiB (16384: ~740 MiB)
    max_connections_per_listener: int = field(default=16384, metadata={"check": _at_least_one})


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    """POST /reload and SIGHUP (``sidecar.ops.reload``): every key here applies live, from the next reload."""

    # versions kept for GET /config/history and POST /config/rollback; 20 covers a day of busy hand edits
    history: int = field(default=20, metadata={"check": _at_least_one})
    # canary: after a reload, watch the error rate this long and roll back to the previous version if it rises
    # past the threshold; None turns the canary off (POST /reload?canary=30s asks for one reload, ?canary=off
    # skips it). Off by default: a low-traffic sidecar has too few requests to judge (at least 20 are needed)
    canary_window: Duration | None = field(default=None, metadata={"check": _positive})
    # roll back when the error ratio in the window exceeds the ratio over the same length of time before the
    # reload by more than this (absolute: 0.05 is five points); errors are 5xx, no answer, or the sidecar's
    # own refusals (authorization, caps), as telemetry counts them
    canary_max_error_rate: float = field(default=0.05, metadata={"check": _ratio})


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    # optional: without it the sidecar registers, gossips and answers DNS, but carries no traffic
    tls: TlsConfig | None = None
    services: list[ServiceConfig] = field(default_factory=list)
    upstreams: list[UpstreamConfig] = field(default_factory=list)
    # per destination service; "*" is the default, and a named entry overrides only the keys it gives
    policies: dict[str, PolicyConfig] = field(default_factory=lambda: {"*": PolicyConfig()})
    authorization: AuthorizationConfig = field(default_factory=AuthorizationConfig)
    subscriptions: list[SubscriptionConfig] = field(default_factory=list)
    messaging: MessagingConfig = field(default_factory=MessagingConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)

    def policy_for(self, service: str) -> PolicyConfig:
        return self.policies.get(service) or self.policies.get("*") or PolicyConfig()


def listeners(config: Config) -> dict[str, HostPort]:
    """The TCP/UDP listeners by SPEC name, in the order they start."""
    return {
        "admin": config.admin.listen,
        "api": config.api.listen,
        "outbound": config.outbound.listen,
        "inbound": config.inbound.listen,
        "dns": config.dns.listen,
        "gossip": config.gossip.listen,
    }


Raw = dict[str, Any]
