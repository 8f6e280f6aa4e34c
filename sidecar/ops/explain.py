"""``GET /debug/explain``: the decision a request would meet, step by step, in plain words and as JSON.

    explanation = explain(Question("echo", "GET", "/x"), Facts(...), now=loop_time, wall=epoch_seconds)
    explanation.to_json()   # {"service", "method", "path", "verdict", "summary", "steps": [...]}
    render_text(explanation.to_json())   # what ``sidecar explain`` prints

The steps follow the data plane's own order (see :mod:`sidecar.resilience.policy`): the name, the catalog's
instances and their nodes, outlier ejection, the balancer's pick, the resource caps, the policy (timeout,
retries, budget), the authorization rule at the destination and the identity it must prove, and this
sidecar's own certificate.

Read-only: nothing is sent and no decision state changes. The balancer's pick is a peek (round robin: the
next in turn; P2C: the costs it compares, without drawing), the breaker is read, not asked to admit; the
only thing that moves is what any reader moves: an ejection whose time is up is seen as over (the outlier
detector's lazy clock, as ``/clusters`` reads it).

Authorization is enforced by the destination's sidecar with its own copy of ``authorization``; the answer here
is this sidecar's copy (a mesh normally shares one), which the step says.

A gRPC call (``Question.grpc``: a POST to ``/pkg.Service/Method``) is explained as the data plane treats one: the
rules match its path, the policy's timeout is the deadline of the whole call (shortened by the call's
``grpc-timeout``), ``retry_on``'s gRPC status names are retried while nothing of the response reached the client,
and records name it by its path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo
from sidecar.config.model import Config
from sidecar.http2.grpc import RETRY_ON as GRPC_RETRY_ON
from sidecar.http2.grpc import service_method
from sidecar.mesh.authorization import Authorizer
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy.paths import InvalidPath, normalize_target
from sidecar.resilience.cluster import Cluster, ClusterEndpoint
from sidecar.resilience.outlier import EndpointState
from sidecar.tls.identity import PeerIdentity

OK = "ok"          # this step lets the request through
WARN = "warn"      # through, but something is off (ejections, panic, degraded, near a cap, expiring soon)
REFUSE = "refuse"  # the request would be refused here


@dataclass(frozen=True, slots=True)
class Question:
    """What an operator asks about: a request to ``service`` (a Host value: ``echo``, ``v2.echo.service.mesh``).
    ``caller`` is the calling service for the authorization step; None means this sidecar's own identity.
    ``grpc``: the request is a gRPC call (``content-type: application/grpc``) of the method ``path`` names."""

    service: str
    method: str = "GET"
    path: str = "/"
    caller: str | None = None
    grpc: bool = False


def looks_like_grpc(path: str) -> bool:
    """``/pkg.Service/Method``: two segments, the first a package-qualified service name."""
    name = service_method(path)
    return name is not None and "." in name.partition("/")[0]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the data plane knows now, gathered by :func:`facts_from` (or by hand in tests)."""

    config: Config
    snapshot: CatalogSnapshot
    name: ServiceName | None                 # the Host parsed; None: it names no service
    endpoints: EndpointSet | None
    destination: Cluster | None          # None: no request has gone to that service yet
    identity: PeerIdentity | None            # this sidecar's certificate; None without tls
    local_node: str = ""
    issued: float | None = None              # the certificate's notBefore, epoch seconds


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    verdict: str
    says: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.name, "verdict": self.verdict, "says": self.says, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class Explanation:
    question: Question
    steps: tuple[Step, ...]

    @property
    def verdict(self) -> str:
        verdicts = {s.verdict for s in self.steps}
        return REFUSE if REFUSE in verdicts else WARN if WARN in verdicts else OK

    @property
    def summary(self) -> str:
        q = self.question
        refused = [s for s in self.steps if s.verdict == REFUSE]
        if refused:
            first = refused[0]
            return f"{q.method} {q.path} to {q.service} would be refused at the {first.name} step: {first.says}"
        pick = next((s for s in self.steps if s.name == "balancer"), None)
        target = pick.data.get("pick") if pick is not None else None
        where = f" would go to {target['instance']} at {target['address']}" if isinstance(target, dict) else ""
        warnings = [s.name for s in self.steps if s.verdict == WARN]
        tail = f"; look at: {', '.join(warnings)}" if warnings else ""
        return f"{q.method} {q.path} to {q.service}{where}{tail}"

    def to_json(self) -> dict[str, Any]:
        q = self.question
        out: dict[str, Any] = {"service": q.service, "method": q.method, "path": q.path, "caller": q.caller,
                               "verdict": self.verdict, "summary": self.summary,
                               "steps": [s.to_json() for s in self.steps]}
        if q.grpc:
            out["grpc"] = True
        return out


# ------------------------------------------------------------------------------------------ the steps


def explain(question: Question, facts: Facts, now: float, wall: float) -> Explanation:
    """``now`` is the data plane's loop clock (its outlier and balancer times), ``wall`` epoch seconds."""
    steps: list[Step] = []
    name = facts.name
    if name is None:
        steps.append(Step("name", REFUSE, f"{question.service!r} names no service: use NAME, NAME.service.DOMAIN "
                                          "or TAG.NAME.service.DOMAIN"))
        return Explanation(question, tuple(steps))
    tag = f" with tag {name.tag!r}" if name.tag else ""
    steps.append(Step("name", OK, f"{question.service!r} names the service {name.service}{tag}",
                      {"service": name.service, "tag": name.tag}))
    endpoints = facts.endpoints
    assert endpoints is not None
    steps.append(_catalog(name, facts.snapshot, endpoints))
    dest = facts.destination
    if endpoints.usable:
        hosts = _hosts(endpoints, dest, now)
        steps.append(_ejection(name.service, hosts, dest, now, wall))
        steps.append(_balancer(name.service, hosts, dest, now))
    steps.append(_caps(name.service, facts.config, dest))
    steps.append(_policy(name.service, facts.config, dest, now, question.grpc))
    steps.append(_authorization(question, name.service, facts))
    steps.append(_identity(facts.identity, facts.issued, wall))
    return Explanation(question, tuple(steps))


def _node_state(nodes: Mapping[str, NodeInfo], node: str) -> str:
    info = nodes.get(node)
    return info.state if info is not None else "unknown"


def _catalog(name: ServiceName, snapshot: CatalogSnapshot, endpoints: EndpointSet) -> Step:
    usable = {e.instance: e for e in (*endpoints.healthy, *endpoints.degraded)}
    instances = []
    for i in sorted(snapshot.service(name.service), key=lambda i: (i.status.rank, i.node, i.id)):
        tagged = name.tag is None or name.tag in i.tags
        endpoint = usable.get(i.id)
        if not tagged:
            why = f"lacks the tag {name.tag!r}"
        elif i.status is HealthStatus.UNHEALTHY:
            why = "unhealthy: no traffic"
        elif endpoint is None:
            why = f"its node is {_node_state(snapshot.nodes, i.node)} or has no inbound address: no traffic"
        elif endpoint.status is HealthStatus.DEGRADED and endpoints.healthy:
            why = "degraded: used only when no instance is healthy"
        else:
            why = "usable"
        instances.append({"instance": i.id, "node": i.node, "nodeState": _node_state(snapshot.nodes, i.node),
                          "health": i.status.value, "address": endpoint.authority if endpoint else None,
                          "version": i.version, "tags": list(i.tags), "why": why})
    down = sorted((i for i in snapshot.down if i.name == name.service), key=lambda i: (i.node, i.id))
    for i in down:
        instances.append({"instance": i.id, "node": i.node, "nodeState": "dead", "health": i.status.value,
                          "address": None, "version": i.version, "tags": list(i.tags),
                          "why": "its member was declared dead (held until it refutes or is reaped): no traffic"})
    counts = {"total": endpoints.total, "healthy": len(endpoints.healthy), "degraded": len(endpoints.degraded),
              "unhealthy": endpoints.unhealthy, "unreachable": endpoints.unreachable, "down": len(down)}
    if not endpoints.usable:
        return Step("catalog", REFUSE, endpoints.no_endpoint().message, {"instances": instances, "counts": counts})
    parts = [f"{len(endpoints.healthy)} healthy"]
    if endpoints.degraded:
        parts.append(f"{len(endpoints.degraded)} degraded")
    if endpoints.unhealthy:
        parts.append(f"{endpoints.unhealthy} unhealthy")
    if endpoints.unreachable:
        parts.append(f"{endpoints.unreachable} on nodes down or without an address")
    n = endpoints.total
    says = f"the catalog has {n} instance{'s' if n != 1 else ''} of {name.service}: {', '.join(parts)}"
    verdict = OK if endpoints.healthy and not (endpoints.unhealthy or endpoints.unreachable) else WARN
    return Step("catalog", verdict, says, {"instances": instances, "counts": counts})


@dataclass(frozen=True, slots=True)
class _Seen:
    """One usable endpoint and what the destination's layers hold about it (nothing if never used)."""

    endpoint: Endpoint
    host: ClusterEndpoint | None
    ejected: bool
    state: str
    times: int
    ejections: int
    consecutive: int
    until: float


def _hosts(endpoints: EndpointSet, dest: Cluster | None, now: float) -> list[_Seen]:
    out = []
    for endpoint in (*endpoints.healthy, *endpoints.degraded):
        host = dest.hosts.get((endpoint.instance, endpoint.address)) if dest is not None else None
        if dest is None or host is None:
            out.append(_Seen(endpoint, None, False, EndpointState.ACTIVE.value, 0, 0, 0, 0.0))
            continue
        rec = dest.outlier.record(host.key, now)   # a known host: its record exists, only its clock advances
        ejected = rec.state is EndpointState.EJECTED
        out.append(_Seen(endpoint, host, ejected, rec.state.value, rec.times, rec.ejections, rec.consecutive,
                         rec.until))
    return out


def _clock(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%H:%M:%S")


def _ejection(service: str, hosts: Sequence[_Seen], dest: Cluster | None, now: float, wall: float) -> Step:
    offset = wall - now
    rows = []
    lines = []
    for seen in hosts:
        e = seen.endpoint
        row: dict[str, Any] = {"instance": e.instance, "address": e.authority, "state": seen.state,
                               "ejected": seen.ejected, "times": seen.times, "ejections": seen.ejections,
                               "consecutiveFailures": seen.consecutive}
        if seen.ejected:
            remaining = seen.until - now
            row["until"] = int((seen.until + offset) * 1000)
            row["remainingS"] = round(remaining, 3)
            lines.append(f"{e.instance} at {e.authority} is ejected until {_clock(seen.until + offset)} UTC "
                         f"({remaining:.1f}s more): ejection {seen.times} in a row, after "
                         f"{_threshold(dest)} consecutive failures ({seen.ejections} ejections in all)")
        elif seen.state == EndpointState.PROBATION.value:
            lines.append(f"{e.instance} at {e.authority} is on probation: its next failure ejects it again")
        rows.append(row)
    ejected = sum(1 for s in hosts if s.ejected)
    if dest is None:
        return Step("ejection", OK, f"no request has gone to {service} yet: no instance is ejected",
                    {"endpoints": rows})
    if not lines:
        return Step("ejection", OK, f"no instance of {service} is ejected", {"endpoints": rows})
    if ejected == len(hosts):
        lines.append("every instance is ejected: the balancer uses them all anyway (panic routing)")
    return Step("ejection", WARN, "; ".join(lines), {"endpoints": rows, "ejected": ejected})


def _threshold(dest: Cluster | None) -> int:
    return dest.outlier.rules.consecutive_failures if dest is not None else 0


def _balancer(service: str, hosts: Sequence[_Seen], dest: Cluster | None, now: float) -> Step:
    """Which tier the pick is made in, every candidate's cost, and the pick the balancer would make now."""
    healthy = [s for s in hosts if s.endpoint.status is HealthStatus.HEALTHY]
    degraded = [s for s in hosts if s.endpoint.status is not HealthStatus.HEALTHY]
    if dest is None:   # nothing sent yet: no host is ejected or held
        tier, candidates = ("healthy", healthy) if healthy else ("degraded", degraded)
    else:
        # the cluster's own rules; an endpoint it has not met yet is looked at as a new host, not added to it
        by_key = {(s.endpoint.instance, s.endpoint.address): s for s in hosts}
        as_hosts = [[s.host or ClusterEndpoint(s.endpoint, now) for s in tier] for tier in (healthy, degraded)]
        tier, picked = dest.candidates(as_hosts[0], as_hosts[1], now)
        candidates = [by_key[h.key] for h in picked]
    kind = dest.balancer.name if dest is not None else "none yet"
    rows = []
    for seen in candidates:
        load = seen.host.load if seen.host is not None else None
        rows.append({"instance": seen.endpoint.instance, "address": seen.endpoint.authority,
                     "health": seen.endpoint.status.value,
                     "inFlight": load.in_flight if load else 0,
                     "latencyEwmaMs": round(load.latency(now) * 1000.0, 3) if load else None,
                     "samples": load.samples if load else 0,
                     "cost": _cost(load, now)})
    pick, how = _peek(kind, candidates, dest, now)
    chosen = rows[candidates.index(pick)]
    ewma = chosen["latencyEwmaMs"]
    score = f"EWMA {ewma:.2f} ms, {chosen['inFlight']} in flight" if ewma is not None else "no latency sample yet"
    says = (f"among {len(candidates)} {tier} candidate{'s' if len(candidates) != 1 else ''}, {how} "
            f"{pick.endpoint.instance} at {pick.endpoint.authority} ({score})")
    verdict = OK if tier == "healthy" else WARN
    data = {"loadBalancer": kind, "tier": tier, "candidates": rows, "pick": chosen}
    return Step("balancer", verdict, says, data)


def _cost(load: Any, now: float) -> float | None:
    if load is None:
        return 0.0
    cost = load.cost(now)
    return None if cost == float("inf") else round(cost * 1000.0, 3)


def _peek(kind: str, candidates: Sequence[_Seen], dest: Cluster | None, now: float) -> tuple[_Seen, str]:
    if len(candidates) == 1:
        return candidates[0], "the only one is"
    if kind == "round_robin" and dest is not None:
        turn = int(getattr(dest.balancer, "_turn", 0))   # read, not advanced
        return candidates[turn % len(candidates)], "round robin's next in turn is"
    if kind == "least_request":
        best = min(candidates, key=lambda s: s.host.load.in_flight if s.host else 0)
        return best, "least request draws two at random and takes the one with fewer in flight; the fewest has"
    # ewma, or no destination yet (the default balancer): P2C on cost, and an unsampled idle host costs 0
    best = min(candidates, key=lambda s: s.host.load.cost(now) if s.host else 0.0)
    return best, "peak EWMA draws two at random and takes the cheaper (latency * (in flight + 1)); the cheapest is"


def _caps(service: str, config: Config, dest: Cluster | None) -> Step:
    caps = config.policy_for(service).circuit_breaker
    if dest is None:
        data = {"connections": {"active": 0, "max": caps.max_connections},
                "pendingRequests": {"active": 0, "max": caps.max_pending_requests},
                "requests": {"active": 0, "max": caps.max_requests},
                "retries": {"active": 0, "max": caps.max_retries}}
        return Step("caps", OK, f"nothing in flight to {service}: every resource cap has room", data)
    snapshot = dest.breaker.snapshot()
    requests, connections, pending = snapshot["requests"], snapshot["connections"], snapshot["pendingRequests"]
    if requests["active"] >= requests["max"]:
        says = (f"max_requests is reached ({requests['active']} of {requests['max']} in progress): "
                "the request would be refused with 429")
        return Step("caps", REFUSE, says, snapshot)
    if connections["active"] >= connections["max"]:
        if pending["active"] >= pending["max"]:
            says = (f"max_connections ({connections['max']}) are in use and max_pending_requests "
                    f"({pending['max']}) wait: the request would be refused with 429")
            return Step("caps", REFUSE, says, snapshot)
        says = (f"max_connections ({connections['max']}) are in use: the request would wait for one "
                f"({pending['active']} of {pending['max']} already waiting)")
        return Step("caps", WARN, says, snapshot)
    parts = [f"{v['active']}/{v['max']} {k}" for k, v in snapshot.items()]
    rejected = sum(v["rejected"] for v in snapshot.values())
    tail = f"; {rejected} refused by a cap so far" if rejected else ""
    return Step("caps", OK, f"the caps have room ({', '.join(parts)}){tail}", snapshot)


def _policy(service: str, config: Config, dest: Cluster | None, now: float, grpc: bool = False) -> Step:
    policy = config.policy_for(service)
    source = f"policies.{service}" if service in config.policies else "policies.*"
    retries = policy.retries
    per_try = None if retries.per_try_timeout is None else float(retries.per_try_timeout)
    data: dict[str, Any] = {"source": source, "timeout": float(policy.timeout), "attempts": retries.attempts,
                            "perTryTimeout": per_try, "retryOn": list(retries.retry_on),
                            "retryNonIdempotent": retries.retry_non_idempotent,
                            "budget": {"ratio": retries.budget.ratio, "minPerSecond": retries.budget.min_per_second},
                            "loadBalancer": policy.load_balancer}
    budget_words = f"a budget of {retries.budget.ratio:g} of requests + {retries.budget.min_per_second:g}/s"
    verdict = OK
    if dest is not None:
        state = dest.budget.state(now)
        data["budget"]["available"] = round(state.available, 3)
        data["budget"]["requests"] = state.requests
        data["budget"]["retries"] = state.retries
        budget_words += f" ({state.available:.1f} retries available now)"
        if state.available < 1 and retries.attempts > 0:
            verdict = WARN
            budget_words += ": a failure now would not be retried"
    grpc_names = [token for token in retries.retry_on if token in GRPC_RETRY_ON]
    if retries.attempts == 0:
        retry_words = "no retries"
    else:
        retry_words = (f"up to {retries.attempts} retr{'ies' if retries.attempts != 1 else 'y'} on "
                       f"{', '.join(retries.retry_on)}, {_try_bound(per_try, float(policy.timeout))}, "
                       f"{budget_words}")
    deadline_words = f"a {float(policy.timeout):g}s deadline"
    if grpc:
        data["grpcRetryOn"] = grpc_names
        data["deadline"] = "the whole call, shortened by the call's grpc-timeout"
        deadline_words += (" for the whole call (or the call's grpc-timeout if smaller; the app gets what is "
                           "left in grpc-timeout)")
        if retries.attempts > 0:
            retry_words += ("; gRPC statuses " + ", ".join(grpc_names) + " retried while nothing of the response "
                            "reached the client" if grpc_names else "; no gRPC status is retried")
    says = f"{source} applies: {deadline_words}, {retry_words}"
    return Step("policy", verdict, says, data)


def _try_bound(per_try: float | None, timeout: float) -> str:
    if per_try is None or per_try >= timeout:
        return "each try within what is left of the deadline"
    return f"each try within {per_try:g}s"


def _authorization(question: Question, service: str, facts: Facts) -> Step:
    config = facts.config
    identity = facts.identity
    caller = question.caller or (identity.service if identity is not None else None)
    trust_domain = config.tls.trust_domain if config.tls is not None else "mesh.local"
    expected = f"spiffe://{trust_domain}/service/{service}"
    data: dict[str, Any] = {"caller": caller, "callerSpiffeId": _spiffe(trust_domain, caller),
                            "destinationSpiffeId": expected, "default": config.authorization.default}
    if caller is None:
        return Step("authorization", REFUSE, "this sidecar has no tls section: it has no identity, so it carries "
                                             "no traffic between services", data)
    try:  # rules see the canonical path, as the proxy makes it
        path = normalize_target(question.path.encode("latin-1")).decode("latin-1").split("?", 1)[0]
    except (InvalidPath, UnicodeEncodeError) as e:
        return Step("authorization", REFUSE, f"the proxy refuses this path with 400: {e}", data)
    data["canonicalPath"] = path
    decision = Authorizer(config.authorization).decide(caller, service, question.method, path)
    data.update({"allowed": decision.allowed, "rule": decision.rule, "reason": decision.reason})
    whose = "" if question.caller is None else " (the caller asked about)"
    peer = (f"; the destination's sidecar must prove {expected} (or the ID of another service on its node), "
            f"and sees this caller as {_spiffe(trust_domain, caller)}{whose}")
    rule = decision.rule or "authorization"
    if decision.allowed:
        says = f"{rule} allows {caller} → {service} {question.method} {path}: {decision.reason}{peer}"
        return Step("authorization", OK, says, data)
    return Step("authorization", REFUSE, f"{rule} refuses it with 403: {decision.reason}{peer} "
                                         "(as this sidecar's copy of authorization has it)", data)


def _spiffe(trust_domain: str, service: str | None) -> str | None:
    return None if service is None else f"spiffe://{trust_domain}/service/{service}"


EXPIRING_SOON = 0.2   # of the lifetime left (the rotation watcher's warning threshold)


def _identity(identity: PeerIdentity | None, issued: float | None, wall: float) -> Step:
    if identity is None:
        return Step("identity", REFUSE, "no certificate: tls is not configured")
    remaining = identity.not_after.timestamp() - wall
    data = {"spiffeId": identity.spiffe_id, "notAfter": identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expiresInS": round(remaining, 3)}
    if remaining <= 0:
        return Step("identity", REFUSE, f"this sidecar's certificate ({identity.spiffe_id}) expired "
                                        f"{_duration(-remaining)} ago: peers refuse its handshakes", data)
    says = f"this sidecar is {identity.spiffe_id}; its certificate expires in {_duration(remaining)}"
    lifetime = identity.not_after.timestamp() - issued if issued is not None else None
    if lifetime is not None and lifetime > 0 and remaining < EXPIRING_SOON * lifetime:
        return Step("identity", WARN, says + f" (less than {EXPIRING_SOON:.0%} of its lifetime left: renew it)", data)
    return Step("identity", OK, says, data)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------------------------------ text


def render_text(data: Mapping[str, Any]) -> str:
    """An explanation's JSON (or a failed request's) as the lines ``sidecar explain`` prints."""
    if "requestId" in data:
        lines = list(data.get("says", []))
        return "\n".join(lines)
    marks = {OK: "ok  ", WARN: "WARN", REFUSE: "NO  "}
    lines = [str(data.get("summary", ""))]
    for step in data.get("steps", []):
        lines.append(f"  [{marks.get(step.get('verdict'), '?   ')}] {step.get('step')}: {step.get('says')}")
        if step.get("step") == "catalog":
            for i in step.get("data", {}).get("instances", []):
                lines.append(f"           {i['instance']} on {i['node']} ({i['nodeState']}), {i['health']}, "
                             f"{i['address'] or 'no address'}: {i['why']}")
        elif step.get("step") == "balancer":
            for c in step.get("data", {}).get("candidates", []):
                ewma = "-" if c["latencyEwmaMs"] is None else f"{c['latencyEwmaMs']:.2f} ms"
                lines.append(f"           {c['instance']} {c['address']}: EWMA {ewma}, {c['inFlight']} in flight, "
                             f"cost {c['cost']}")
    return "\n".join(lines)
