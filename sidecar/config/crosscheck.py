"""Rules between configuration keys, checked after the typed objects are built (:mod:`sidecar.config.load`).

:data:`SECTION_CHECKS` run on every section of their type that built, so one bad key elsewhere hides no other
problem; :func:`check_raw` reads the raw data for rules across list entries and sections (unique names and
ports, policy and topic keys, listen addresses used twice); :func:`check_own_listeners` keeps services off the
sidecar's own listeners. Each problem is ``dotted.path: rule (got VALUE)``, with :func:`show` for the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.catalog.own import LOCALHOST, listener_named, loopback_or_any, parse_address
from sidecar.config.model import (
    BackoffConfig,
    CheckConfig,
    Config,
    GossipConfig,
    TlsIdentityConfig,
    TlsIssuerConfig,
    TracingConfig,
    dns_label,
    topic_name,
)
from sidecar.config.redact import REDACTED
from sidecar.config.values import HostPort


def show(value: Any) -> str:
    """A value as a problem shows it: JSON, cut at 80 characters."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# a fully-qualified protobuf service name: dot-separated identifiers
_GRPC_SERVICE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?")


def _check_check(check: CheckConfig, where: str, problems: list[str]) -> None:
    kinds = [k for k, on in (("http", check.http is not None), ("tcp", check.tcp), ("grpc", check.grpc is not None),
                             ("ttl", check.ttl is not None)) if on]
    if len(kinds) != 1:
        problems.append(f"{where}: needs exactly one of http, tcp, grpc or ttl (got {show(kinds)})")
    if check.grpc is not None and not _GRPC_SERVICE.fullmatch(check.grpc):
        problems.append(f"{where}.grpc: must be a gRPC service name like pkg.Service, or \"\" for the whole server"
                        f" (got {show(check.grpc)})")
    if check.http is not None and not (check.http.startswith("/") or check.http.startswith("http://")):
        problems.append(f"{where}.http: must be a path like /health or an http:// URL (got {show(check.http)})")
    if kinds != ["ttl"] and check.timeout > check.interval:
        problems.append(f"{where}.timeout: must not be longer than interval ({check.interval.to_text()})"
                        f" (got {show(check.timeout.to_text())})")


def _check_backoff(backoff: BackoffConfig, where: str, problems: list[str]) -> None:
    if backoff.base > backoff.max:
        problems.append(f"{where}.base: must not be longer than max ({backoff.max.to_text()})"
                        f" (got {show(backoff.base.to_text())})")


def _check_gossip(gossip: GossipConfig, where: str, problems: list[str]) -> None:
    for i, key in enumerate(gossip.encrypt_keys):
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{where}.encrypt_keys[{i}]: must be base64 (got {REDACTED})")
            continue
        if len(raw) not in (16, 24, 32):
            problems.append(f"{where}.encrypt_keys[{i}]: must decode to 16, 24 or 32 bytes for AES"
                            f" (got {len(raw)} bytes)")
    if gossip.rotate_every is not None and not gossip.encrypt_keys:
        problems.append(f"{where}.rotate_every: needs encrypt_keys, the key the rotation starts from"
                        f" (got {show(gossip.rotate_every.to_text())})")
    if gossip.rotate_every is not None and 0 < gossip.rotate_every < 1:
        # a rotation takes a few gossip rounds to reach every member; shorter epochs would never finish one
        problems.append(f"{where}.rotate_every: must be at least 1s (got {show(gossip.rotate_every.to_text())})")
    if gossip.rotate_command is not None and gossip.rotate_every is None:
        problems.append(f"{where}.rotate_command: is used only with rotate_every, which is not set (got {REDACTED})")


def _check_issuer(issuer: TlsIssuerConfig, where: str, problems: list[str]) -> None:
    if (issuer.ca_key is None) == (issuer.command is None):
        problems.append(f"{where}: needs exactly one of ca_key or command"
                        f" (got {show({'ca_key': issuer.ca_key, 'command': issuer.command})})")


def _check_identity(identity: TlsIdentityConfig, where: str, problems: list[str]) -> None:
    for name in ("service", "cert", "key"):
        if not getattr(identity, name):
            problems.append(f"{where}.{name}: is required (got {show(getattr(identity, name))})")


def _check_tracing(tracing: TracingConfig, where: str, problems: list[str]) -> None:
    if tracing.exporter == "otlp" and not tracing.endpoint:
        problems.append(f"{where}.endpoint: is required when exporter is otlp (got null)")


SECTION_CHECKS: dict[Any, Callable[[Any, str, list[str]], None]] = {
    CheckConfig: _check_check,
    BackoffConfig: _check_backoff,
    GossipConfig: _check_gossip,
    TracingConfig: _check_tracing,
    TlsIssuerConfig: _check_issuer,
    TlsIdentityConfig: _check_identity,
}


def check_raw(data: Mapping[str, Any], problems: list[str]) -> None:
    """Rules across list entries and sections, read from the raw data so they hold even when a
    neighbouring key is invalid."""
    _check_unique(data.get("services"), "services", "name", "duplicate service name", problems)
    _check_unique(data.get("upstreams"), "upstreams", "local_port", "local port already used", problems)
    tls = data.get("tls")
    if isinstance(tls, dict):
        _check_unique(tls.get("identities"), "tls.identities", "service", "one certificate per service", problems)
    policies = data.get("policies")
    if isinstance(policies, dict):
        for name in policies:
            if name != "*" and not (isinstance(name, str) and dns_label(name) is None):
                problems.append(f"policies.{name}: the key must be \"*\" or a service name (got {show(name)})")
    messaging = data.get("messaging")
    topics = messaging.get("topics") if isinstance(messaging, dict) else None
    if isinstance(topics, dict):
        for name in topics:
            rule = topic_name(name) if isinstance(name, str) else "must be a topic name"
            if rule:
                problems.append(f"messaging.topics.{name}: the key {rule} (got {show(name)})")
    bound: dict[tuple[str, int], str] = {}
    for name in ("admin", "api", "outbound", "inbound", "dns", "gossip"):
        section = data.get(name)
        listen = section.get("listen") if isinstance(section, dict) else None
        try:
            address = HostPort.from_text(listen) if listen is not None else None
        except ValueError:
            continue
        if address is None or address.port == 0:
            continue
        key = (address.host, address.port)
        if key in bound:
            problems.append(f"{name}.listen: the same address as {bound[key]}.listen (got {show(listen)})")
        bound.setdefault(key, name)


def check_own_listeners(config: Config, problems: list[str]) -> None:
    """No service at one of the sidecar's own listeners (``sidecar.catalog.own``), as far as the file tells: IP
    literals and localhost against the listen addresses; the running sidecar checks again against the bound
    addresses, resolving names and knowing this host's interfaces."""
    listeners = {"admin": config.admin.listen, "api": config.api.listen, "outbound": config.outbound.listen,
                 "inbound": config.inbound.listen, "dns": config.dns.listen, "gossip": config.gossip.listen,
                 **{f"upstreams[{u.local_port}]": HostPort(u.bind, u.local_port) for u in config.upstreams}}
    for i, service in enumerate(config.services):
        lowered = service.host.lower().rstrip(".")
        addresses = [parse_address(h) for h in (LOCALHOST if lowered == "localhost" else (service.host,))]
        name = listener_named([a for a in addresses if a is not None], service.port, listeners, loopback_or_any)
        if name is not None:
            problems.append(f"services[{i}].port: {service.host}:{service.port} is this sidecar's own {name}"
                            f" listener ({listeners[name]}); register the address where the app itself listens"
                            f" (got {service.port})")


def _check_unique(items: Any, where: str, key: str, rule: str, problems: list[str]) -> None:
    if not isinstance(items, list):
        return
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item.get(key) if isinstance(item, dict) else None
        if value is None or not isinstance(value, str | int):
            continue
        if value in first:
            problems.append(f"{where}[{i}].{key}: {rule}, also {where}[{first[value]}] (got {show(value)})")
        first.setdefault(value, i)
