"""``GET /metrics``: the Prometheus text format, from a per-process ``CollectorRegistry`` whose collectors read
the parts' plain counters when scraped. Nothing here runs per request.

Every family is named ``sidecar_*`` and has HELP and TYPE. What each part must expose is typed in
:mod:`sidecar.telemetry.sources` (one Protocol per part); a part that is None (not configured, not started)
contributes nothing. Resilience samples are ``(name, labels, value)``; counters' names end in ``_total``
(retries, retries denied by reason -- ``budget`` is budget exhaustion --, overflow by cap -- the breaker's
rejections --, ejections, ejected hosts, active resources, budget available).

Process CPU, memory and file descriptors come from :class:`~sidecar.telemetry.exposition.ProcessCollector`;
open sockets are counted from ``/proc/self/fd``. The text format is written by :mod:`sidecar.telemetry.exposition`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

from sidecar.telemetry.exposition import (
    CONTENT_TYPE,
    MetricFamily,
    ProcessCollector,
    Registry,
    counter,
    gauge,
    histogram,
    render,
)
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.sources import (
    CatalogSource,
    DataPlaneSource,
    DnsSource,
    GossipSource,
    IdentitySource,
    MessagingSource,
    ReplicationSource,
    Sources,
)

__all__ = ["CONTENT_TYPE", "SidecarCollector", "Sources", "build_registry", "exposition"]

log = logging.getLogger("sidecar.telemetry")

# resilience.samples() names → HELP; an unknown name still gets a generic HELP
_RESILIENCE_HELP = {
    "sidecar_upstream_requests_total": "Requests admitted to each destination service by its circuit breaker.",
    "sidecar_upstream_retries_total": "Retries made, per destination service.",
    "sidecar_upstream_retries_denied_total": "Retries not made, by reason (budget: the retry budget was exhausted).",
    "sidecar_upstream_overflow_total": "Requests rejected by a circuit-breaker resource cap, by cap.",
    "sidecar_upstream_ejections_total": "Outlier ejections of instances, per destination service.",
    "sidecar_upstream_ejections_refused_total": "Ejections not made because of max_ejection_percent.",
    "sidecar_upstream_panic_total": "Picks made among ejected instances because all were ejected.",
    "sidecar_upstream_ejected_hosts": "Instances ejected now, per destination service.",
    "sidecar_upstream_active": "Circuit-breaker resources in use now (connections, pending, requests, retries).",
    "sidecar_upstream_retry_budget_available": "Retries the budget allows now, per destination service.",
}

_GOSSIP_COUNTERS = {
    "packets_in": ("sidecar_gossip_packets_received", "Gossip UDP packets received."),
    "packets_out": ("sidecar_gossip_packets_sent", "Gossip UDP packets sent."),
    "bytes_in": ("sidecar_gossip_received_bytes", "Gossip UDP bytes received."),
    "bytes_out": ("sidecar_gossip_sent_bytes", "Gossip UDP bytes sent."),
    "streams_in": ("sidecar_gossip_streams_accepted", "Gossip TCP streams accepted (push-pull, fallback probes)."),
    "streams_out": ("sidecar_gossip_streams_opened", "Gossip TCP streams opened."),
    "probes": ("sidecar_gossip_probes", "SWIM direct probes sent."),
    "indirect_probes": ("sidecar_gossip_indirect_probes", "SWIM indirect probes requested."),
    "probe_failures": ("sidecar_gossip_probe_failures", "SWIM probes that got no ack."),
    "tcp_fallback_saves": ("sidecar_gossip_tcp_fallback_saves", "Probes answered only over the TCP fallback."),
    "suspicions": ("sidecar_gossip_suspicions", "Members this node started to suspect."),
    "refutations": ("sidecar_gossip_refutations", "Suspicions of this node it refuted."),
    "deaths": ("sidecar_gossip_deaths", "Members declared dead."),
    "push_pulls": ("sidecar_gossip_push_pulls", "Full state exchanges done."),
    "push_pull_failures": ("sidecar_gossip_push_pull_failures", "Full state exchanges that failed."),
    "address_conflicts": ("sidecar_gossip_address_conflicts", "Members seen claiming another's name or address."),
    "events_dropped": ("sidecar_gossip_events_dropped", "Membership events dropped by a slow subscriber."),
    "udp_send_errors": ("sidecar_gossip_udp_send_errors", "Gossip UDP sends that failed."),
    "key_rotations": ("sidecar_gossip_key_rotations", "Gossip key rotations: a new epoch key made primary once "
                      "every member held it (gossip.rotate_every)."),
    "keys_installed": ("sidecar_gossip_keys_installed", "Gossip keys installed by the key rotation."),
    "keys_removed": ("sidecar_gossip_keys_removed", "Old gossip keys removed by the key rotation."),
    "key_fetch_failures": ("sidecar_gossip_key_fetch_failures", "Runs of gossip.rotate_command that gave no key."),
    "user_seen_evicted": ("sidecar_gossip_user_seen_evicted", "Records of delivered user broadcasts forgotten "
                          "for age or room."),
}

_GOSSIP_GAUGES = {
    "unconfirmed_members": ("sidecar_gossip_unconfirmed_members", "Members heard of only from others, not yet "
                            "confirmed by answering a probe."),
    "user_seen_entries": ("sidecar_gossip_user_seen_entries", "Records of delivered user broadcasts held."),
    "streams_open": ("sidecar_gossip_streams_open", "Inbound gossip TCP streams open now."),
    "stream_bytes_buffered": ("sidecar_gossip_stream_buffered_bytes", "Bytes reserved for inbound gossip frames "
                              "being read now."),
    "plaintext_exposed": ("sidecar_gossip_plaintext_exposed", "1 when gossip listens beyond loopback without "
                          "gossip.encrypt_keys."),
    "cannot_refute": ("sidecar_gossip_cannot_refute", "1 when this member's incarnation is at its maximum and it "
                      "can no longer refute a suspicion (/ready is 503)."),
}

_DNS_COUNTERS = {
    "cache_hits": "DNS answers served from the wire-format cache.",
    "cache_misses": "DNS questions answered without the cache.",
    "rate_limited": "DNS queries dropped or truncated by the rate limit.",
    "malformed": "DNS queries that did not parse.",
    "dropped": "DNS queries dropped.",
    "forwarded": "DNS queries forwarded to dns.upstreams.",
    "forward_failed": "DNS forwards that got no answer.",
    "forward_limited": "DNS queries to forward answered with TC=1 instead, over the per-client forwarding limit.",
    "internal_errors": "DNS queries that failed inside the responder.",
}

_MESSAGING_COUNTERS = {
    "published": "Messages published by this node's apps and stored.",
    "delivered": "Messages delivered to a subscriber app (acknowledged).",
    "redelivered": "Deliveries that were not the first attempt.",
    "retries": "Delivery attempts retried after a 429, 5xx or timeout.",
    "requests": "Request-response messages sent.",
    "request_errors": "Request-response messages that failed.",
    "request_timeouts": "Request-response messages that timed out.",
    "publish_rejected": "Publishes refused by backpressure (429).",
    "replayed": "Dead letters replayed.",
    "purged": "Dead letters purged.",
}


# HTTP/2 to peer sidecars: (count name, family, kind, help), one sample per (peer, service)
_H2_PEER_FAMILIES = (
    ("connections", "sidecar_upstream_h2_connections", "gauge", "HTTP/2 connections open to a peer sidecar for a "
     "service (one carries every stream until the peer's max concurrent streams is reached)."),
    ("streams", "sidecar_upstream_h2_streams", "gauge", "Streams open on the HTTP/2 connections to a peer sidecar."),
    ("waiting", "sidecar_upstream_h2_waiting", "gauge", "Requests waiting for a stream to a peer sidecar: every "
     "connection is at the peer's max concurrent streams, or the next one is being dialed."),
    ("dialed", "sidecar_upstream_h2_connections_opened", "counter", "HTTP/2 connections dialed to a peer sidecar."),
    ("pings_sent", "sidecar_upstream_h2_pings", "counter", "Keepalive PINGs sent on idle HTTP/2 connections to a "
     "peer sidecar."),
    ("pings_acked", "sidecar_upstream_h2_ping_acks", "counter", "Keepalive PINGs a peer sidecar answered."),
    ("ping_timeouts", "sidecar_upstream_h2_ping_timeouts", "counter", "HTTP/2 connections closed because the "
     "peer sidecar did not answer a PING within the keepalive timeout."),
    ("goaways", "sidecar_upstream_h2_goaways", "counter", "GOAWAYs received from a peer sidecar (it drains)."),
    ("http1_fallbacks", "sidecar_upstream_h2_http1_fallbacks", "counter", "Dials whose TLS handshake did not "
     "select h2 (a peer sidecar without HTTP/2): its requests went over HTTP/1.1."),
)


def _h2_peers(counts: Mapping[tuple[str, str], Mapping[str, int]]) -> Iterator[MetricFamily]:
    for name, family_name, kind, text in _H2_PEER_FAMILIES:
        labels = ("peer", "service")
        family = gauge(family_name, text, labels) if kind == "gauge" else counter(family_name, text, labels)
        for (peer, service), values in sorted(counts.items()):
            family.add_metric([peer, service], values.get(name, 0))
        yield family


class SidecarCollector:
    """Every ``sidecar_*`` family but the process ones; see the module's doc."""

    def __init__(self, telemetry: Telemetry, sources: Sources | Callable[[], Sources]) -> None:
        self.telemetry = telemetry
        self._sources = sources

    def sources(self) -> Sources:
        return self._sources() if callable(self._sources) else self._sources

    def collect(self) -> Iterator[MetricFamily]:
        sources = self.sources()
        parts: list[Callable[[], Iterable[MetricFamily]]] = [
            self._requests, self._telemetry,
            lambda: self._dataplane(sources.dataplane), lambda: self._resilience(sources.dataplane),
            lambda: self._tls(sources.identity, sources.dataplane), lambda: self._renewal(sources),
            lambda: self._gossip(sources.gossip),
            lambda: self._dns(sources.dns), lambda: self._messaging(sources.messaging),
            lambda: self._catalog(sources.catalog), lambda: self._claims(sources.replication), self._sockets,
        ]
        for part in parts:
            try:
                yield from part()
            except Exception:  # one part's surprise must not cost the scrape everything else
                log.exception("a metrics collector part failed")

    # ------------------------------------------------------------------------------------ requests

    def _requests(self) -> list[MetricFamily]:
        labels = ("direction", "source", "destination", "method", "code")
        requests = counter("sidecar_requests", "Proxied HTTP requests, by direction (outbound: this node's app "
                            "called destination; inbound: a peer called our destination), method and status code "
                            "(0: the client got none).", labels)
        failed = counter("sidecar_requests_failed", "Proxied requests that failed: no answer from the app "
                          "(connect failure, reset, timeout, refused by the sidecar) or a 5xx.", labels)
        duration = histogram("sidecar_request_duration_seconds", "Time from the request head's arrival to the "
                             "response's end, per hop.", labels)
        sent = counter("sidecar_request_body_bytes", "Request body bytes received from clients.", labels[:3])
        received = counter("sidecar_response_body_bytes", "Response body bytes sent to clients.", labels[:3])
        body_in: Counter[tuple[str, str, str]] = Counter()
        body_out: Counter[tuple[str, str, str]] = Counter()
        for view in self.telemetry.requests.views():
            key = list(view.key)
            requests.add_metric(key, view.requests)
            failed.add_metric(key, view.errors)
            duration.add_histogram(key, view.buckets, view.sum)
            body_in[view.key[:3]] += view.request_bytes
            body_out[view.key[:3]] += view.response_bytes
        for trio, value in sorted(body_in.items()):
            sent.add_metric(list(trio), value)
        for trio, value in sorted(body_out.items()):
            received.add_metric(list(trio), value)
        grpc = counter("sidecar_grpc_requests", "Proxied gRPC calls, by direction, method (the call's path "
                        "/pkg.Service/Method; at most 100 per destination, then other) and gRPC status (0-16; "
                        "none: the call ended without one).",
                        ("direction", "source", "destination", "method", "grpc_status"))
        for labels, count in self.telemetry.grpc_calls.views():
            grpc.add_metric(list(labels), count)
        return [requests, failed, duration, sent, received, grpc]

    def _telemetry(self) -> Iterator[MetricFamily]:
        t = self.telemetry
        records = gauge("sidecar_performance_records", "Performance records held for /v1/metrics.")
        records.add_metric([], len(t.records))
        yield records
        spans = counter("sidecar_trace_spans", "Spans handed to the trace exporter.")
        unsampled = counter("sidecar_trace_spans_unsampled", "Requests left out of tracing by sampling.")
        spans.add_metric([], t.tracer.spans if t.tracer else 0)
        unsampled.add_metric([], t.tracer.unsampled if t.tracer else 0)
        yield spans
        yield unsampled
        lines = counter("sidecar_access_log_lines", "Access log lines written.")
        lines.add_metric([], t.access.lines if t.access else 0)
        yield lines
        lag = t.lag
        lags = histogram("sidecar_event_loop_lag_seconds", "How late the event loop ran a timer (sampled every "
                         "250ms): time every connection waited for the loop.")
        lags.add_histogram([], lag.cumulative(), lag.sum)
        yield lags
        last = gauge("sidecar_event_loop_lag_last_seconds", "The event loop's latest measured lag.")
        last.add_metric([], lag.last)
        yield last

    # ------------------------------------------------------------------------------------ data plane

    def _dataplane(self, dataplane: DataPlaneSource | None) -> Iterator[MetricFamily]:
        if dataplane is None:
            return
        stats = dataplane.stats
        errors = counter("sidecar_request_errors", "Requests that did not end cleanly, by listener, service "
                          "and cause (connect-failure, reset, timeout, protocol-error, local, client-reset, "
                          "reset-after-response, deadline).", ("listener", "service", "error"))
        for (listener, service, error), n in sorted(stats.errors.items()):
            errors.add_metric([listener, service, error], n)
        yield errors
        denials = counter("sidecar_authorization_denied", "Inbound requests refused by authorization, by "
                           "service, caller service and rule.", ("service", "caller", "rule"))
        for (service, caller, rule), n in sorted(stats.denials.items()):
            denials.add_metric([service, caller, rule], n)
        yield denials
        tunnels = counter("sidecar_tunnels", "TCP tunnels ended, by listener, service and outcome.",
                           ("listener", "service", "outcome"))
        for key, n in sorted(stats.tunnels.items()):
            tunnels.add_metric(list(key), n)
        yield tunnels
        tunnel_bytes = counter("sidecar_tunnel_bytes", "Bytes carried by TCP tunnels, by direction (up: to "
                                "the service).", ("listener", "service", "direction"))
        for key, n in sorted(stats.tunnel_bytes.items()):
            tunnel_bytes.add_metric(list(key), n)
        yield tunnel_bytes
        protections = counter("sidecar_http2_protections", "HTTP/2 protections that fired on a listener's "
                               "client connections, by listener and protection (refused_streams, rapid_reset, "
                               "continuation_flood, header_list_too_large, control_flood, closed_stream_frames, "
                               "flow_control, bad_preface, protocol_error, ...).", ("listener", "protection"))
        for (listener, protection), n in sorted(dataplane.h2_protections().items()):
            protections.add_metric([listener, protection], n)
        yield protections
        no_tls = counter("sidecar_requests_no_tls", "Outbound requests refused because mTLS is not configured.")
        no_tls.add_metric([], stats.no_tls)
        yield no_tls
        connections = gauge("sidecar_upstream_connections", "Pooled connections to peer sidecars and local "
                             "apps, HTTP/1.1 and HTTP/2, by state: idle, or busy (a request, or at least one "
                             "HTTP/2 stream, in flight).", ("state",))
        dialed = counter("sidecar_upstream_connections_dialed", "Connections dialed by the pools.")
        idle = busy = dials = 0
        for pool in list(dataplane.pools):
            idle += pool.idle
            busy += pool.busy
            dials += pool.dialed
        h2 = dataplane.h2_connections()
        idle += h2.get("idle", 0)
        busy += h2.get("busy", 0)
        connections.add_metric(["idle"], idle)
        connections.add_metric(["busy"], busy)
        dialed.add_metric([], dials)
        yield connections
        yield dialed
        yield from _h2_peers(dataplane.h2_peer_counts())
        inbound = dataplane.inbound
        if inbound is not None:
            handshakes = counter("sidecar_tls_handshakes", "Verified inbound mTLS connections, by caller SPIFFE "
                                  "ID.", ("peer",))
            for peer, n in sorted(inbound.handshakes.items()):
                handshakes.add_metric([str(peer)], n)
            yield handshakes
            for value, name, text in (
                    (inbound.refused, "sidecar_inbound_connections_refused", "Inbound connections refused at the "
                     "TLS handshake or identity check."),
                    (inbound.shed, "sidecar_inbound_connections_shed", "Pending inbound TLS handshakes closed to "
                     "make room for new connections (the per-source and total caps)."),
                    (inbound.tunnel_refused, "sidecar_inbound_tunnels_refused", "Inbound TCP tunnels refused.")):
                family = counter(name, text)
                family.add_metric([], value)
                yield family

    def _resilience(self, dataplane: DataPlaneSource | None) -> Iterator[MetricFamily]:
        if dataplane is None:
            return
        grouped: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for name, labels, value in dataplane.resilience.samples(self.telemetry.now()):
            grouped[name].append((labels, value))
        for name, samples in sorted(grouped.items()):
            label_names = sorted({k for labels, _ in samples for k in labels})
            documentation = _RESILIENCE_HELP.get(name, "Resilience state per destination service (see /clusters).")
            if name.endswith("_total"):
                family = counter(name[:-len("_total")], documentation, label_names)
            else:
                family = gauge(name, documentation, label_names)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in label_names], value)
            yield family

    def _tls(self, identity: IdentitySource | None, dataplane: DataPlaneSource | None) -> Iterator[MetricFamily]:
        if identity is None and dataplane is not None:
            identity = dataplane.store
        if identity is None:
            return
        failures = counter("sidecar_tls_handshake_failures", "mTLS handshakes or peer checks that failed, by "
                            "reason (unknown-ca, expired, wrong-service, plaintext...).", ("reason",))
        for reason, n in sorted((k.value, v) for k, v in identity.refusals.counts.items()):
            failures.add_metric([reason], n)
        yield failures
        family = counter("sidecar_tls_certificate_reloads", "Certificate changes picked up without a restart.")
        family.add_metric([], identity.rotations)
        yield family
        expiry = gauge("sidecar_tls_certificate_expiry_timestamp_seconds", "When our current certificate "
                        "expires (Unix time); alert on time() > this - margin.")
        expiry.add_metric([], identity.identity.not_after.timestamp())
        yield expiry

    def _renewal(self, sources: Sources) -> Iterator[MetricFamily]:
        if sources.renewal is None:
            return
        results = sources.renewal.results
        family = counter("sidecar_tls_certificate_renewals", "Renewals of our own certificate (tls.issuer), by "
                          "result: success, or failure (the current certificate kept serving; retried).", ("result",))
        for result, n in sorted(results.items()):
            family.add_metric([result], n)
        yield family

    # ------------------------------------------------------------------------------------ gossip, DNS

    def _gossip(self, gossip: GossipSource | None) -> Iterator[MetricFamily]:
        if gossip is None:
            return
        counters: dict[str, int] = gossip.counters()
        for key, (name, text) in _GOSSIP_COUNTERS.items():
            if key in counters:
                family = counter(name, text)
                family.add_metric([], counters[key])
                yield family
        refused = counter("sidecar_gossip_refused", "Gossip packets or streams refused, by reason.", ("reason",))
        for key, n in sorted(counters.items()):
            if key.startswith("refused_"):
                refused.add_metric([key.removeprefix("refused_")], n)
        yield refused
        members = gauge("sidecar_gossip_members", "Members of the gossip pool known to this node, by state.",
                         ("state",))
        by_state = Counter(str(m.state) for m in gossip.members())
        for state in ("alive", "suspect", "dead", "left"):
            by_state.setdefault(state, 0)
        for state, n in sorted(by_state.items()):
            members.add_metric([state], n)
        yield members
        for key, (name, text) in _GOSSIP_GAUGES.items():
            if key in counters:
                level = gauge(name, text)
                level.add_metric([], counters[key])
                yield level
        if "health_score" in counters:
            score = gauge("sidecar_gossip_health_score", "Lifeguard's local health multiplier (0 is healthy).")
            score.add_metric([], counters["health_score"])
            yield score

    def _dns(self, dns: DnsSource | None) -> Iterator[MetricFamily]:
        if dns is None:
            return
        data = dns.counters.as_dict()
        responses = counter("sidecar_dns_responses", "DNS responses sent, by rcode.", ("rcode",))
        for rcode, n in sorted(data.get("queries_by_rcode", {}).items()):
            responses.add_metric([rcode], n)
        yield responses
        for key, text in _DNS_COUNTERS.items():
            if isinstance(data.get(key), int):
                family = counter(f"sidecar_dns_{key}", text)
                family.add_metric([], data[key])
                yield family

    # ------------------------------------------------------------------------------------ messaging, catalog

    def _messaging(self, messaging: MessagingSource | None) -> Iterator[MetricFamily]:
        if messaging is None:
            return
        counters = dict(messaging.counters)
        for key, text in _MESSAGING_COUNTERS.items():
            family = counter(f"sidecar_messages_{key}", text)
            family.add_metric([], counters.get(key, 0))
            yield family
        dead = counter("sidecar_messages_dead_lettered", "Messages dead-lettered, by reason.", ("reason",))
        for key, n in sorted(counters.items()):
            if key.startswith("dead_lettered:"):
                dead.add_metric([key.partition(":")[2]], n)
        yield dead
        status = messaging.status()
        backlog = gauge("sidecar_messages_backlog", "Messages stored and not yet settled by every subscriber.")
        backlog.add_metric([], status.get("pending", 0))
        yield backlog
        fsyncs = counter("sidecar_messages_store_fsyncs", "fsyncs of the message store (one per group commit "
                          "that wrote, two per checkpoint); divided by sidecar_messages_stored, the cost of "
                          "durability per message.")
        fsyncs.add_metric([], status.get("fsyncs", 0))
        yield fsyncs
        stored = counter("sidecar_messages_stored", "Messages made durable in the message store: published by "
                          "this node's apps, or received for its stream readers.")
        stored.add_metric([], status.get("durableMessages", 0))
        yield stored
        letters = gauge("sidecar_messages_dead_letters", "Dead letters stored now.")
        letters.add_metric([], status.get("deadLetters", 0))
        yield letters
        letter_bytes = gauge("sidecar_messages_dead_letter_bytes", "Bytes of the message bodies of the dead letters "
                              "stored now.")
        letter_bytes.add_metric([], status.get("deadLetterBytes", 0))
        yield letter_bytes
        dropped = counter("sidecar_messages_dead_letters_dropped", "Dead letters purged, oldest first, to keep "
                           "within messaging.max_dead_letters and max_dead_letter_bytes.")
        dropped.add_metric([], status.get("deadLettersDropped", 0))
        yield dropped
        refused = counter("sidecar_messages_deliveries_refused", "Deliveries from peers refused by this node's "
                           "receiver, by reason (sender: the message's sender is not the caller; scope: the caller "
                           "may not publish the topic).", ("reason",))
        for key, n in sorted(counters.items()):
            if key.startswith("deliveries_refused:"):
                refused.add_metric([key.partition(":")[2]], n)
        yield refused

    def _catalog(self, catalog: CatalogSource | None) -> Iterator[MetricFamily]:
        if catalog is None:
            return
        instances = gauge("sidecar_catalog_instances", "Service instances in the mesh-wide catalog, by service "
                           "and health.", ("service", "status"))
        counts: Counter[tuple[str, str]] = Counter()
        for instance in catalog.snapshot().instances:
            counts[instance.name, instance.status.value] += 1
        for key, n in sorted(counts.items()):
            instances.add_metric(list(key), n)
        yield instances

    def _claims(self, replication: ReplicationSource | None) -> Iterator[MetricFamily]:
        if replication is None:
            return
        refused = counter("sidecar_catalog_claims_refused", "Peers' catalog claims not kept, by reason (unsigned,"
                           " bad-signature, bad-certificate, wrong-service, foreign-entry, foreign-cluster,"
                           " unknown-certificate, too-many).", ("reason",))
        for reason, n in sorted(replication.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        large = counter("sidecar_catalog_claims_push_pull_only", "Our catalog claims too large for a gossip packet,"
                         " left to push-pull.")
        large.add_metric([], replication.left_to_push_pull)
        yield large

    def _sockets(self) -> Iterator[MetricFamily]:
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            return
        sockets = 0
        for name in names:
            try:
                if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
        family = gauge("sidecar_process_open_sockets", "Open sockets of the process: listeners, client and "
                        "upstream connections, gossip and DNS sockets.")
        family.add_metric([], sockets)
        yield family


def build_registry(telemetry: Telemetry, sources: Sources | Callable[[], Sources]) -> Registry:
    """A registry of its own per sidecar (tests run several sidecars in one process)."""
    registry = Registry()
    registry.register(SidecarCollector(telemetry, sources))
    registry.register(ProcessCollector(namespace="sidecar"))
    return registry


def exposition(registry: Registry) -> bytes:
    return render(registry)
