"""A fixed catalog for the DNS answerer's unit tests (no sockets, no clock)."""

from __future__ import annotations

import pytest

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo, ServiceMetadata
from sidecar.dns.answerer import AnswerSettings, Zone

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def instance(id: str, name: str, node: str, status: HealthStatus = H, tags: tuple[str, ...] = ()) -> ServiceMetadata:
    return ServiceMetadata(id=id, name=name, version="1", host="127.0.0.1", port=8080, tags=tags, status=status,
                           node=node)


def catalog(version: int = 7) -> CatalogSnapshot:
    """web: n1 (blue), n2 (green) healthy, n3 degraded (blue), n4 unhealthy, nd on a dead node;
    api: one instance on an IPv6 node; down: only an unhealthy instance; n1 also runs a second web."""
    nodes = {
        "n1": NodeInfo("n1", "10.0.0.1", 15001),
        "n2": NodeInfo("n2", "10.0.0.2", 15002),
        "n3": NodeInfo("n3", "10.0.0.3", 15003),
        "n4": NodeInfo("n4", "10.0.0.4", 15004),
        "n6": NodeInfo("n6", "fd00::6", 15006),
        "nd": NodeInfo("nd", "10.0.0.9", 15009, state="dead"),
        "ns": NodeInfo("ns", "10.0.0.5", 15005, state="suspect"),
    }
    instances = (
        instance("web-1", "web", "n1", tags=("blue",)),
        instance("web-1b", "web", "n1", tags=("canary",)),
        instance("web-2", "web", "n2", tags=("green",)),
        instance("web-3", "web", "n3", D, tags=("blue",)),
        instance("web-4", "web", "n4", U, tags=("blue", "red")),
        instance("web-9", "web", "nd"),
        instance("api-6", "api", "n6"),
        instance("down-4", "down", "n4", U),
    )
    return CatalogSnapshot(version=version, nodes=nodes, instances=instances)


def big_catalog(count: int) -> CatalogSnapshot:
    """One service ``big`` with ``count`` instances on as many nodes: answers that need TCP."""
    nodes = {f"b{i}": NodeInfo(f"b{i}", f"10.2.{i // 250}.{i % 250 + 1}", 20000 + i) for i in range(count)}
    instances = tuple(instance(f"big-{i}", "big", f"b{i}") for i in range(count))
    return CatalogSnapshot(version=1, nodes=nodes, instances=instances)


@pytest.fixture
def settings() -> AnswerSettings:
    return AnswerSettings(domain="mesh", ttl=5)


@pytest.fixture
def zone(settings: AnswerSettings) -> Zone:
    return Zone(catalog(), settings)


@pytest.fixture
def make_catalog() -> type[_Catalogs]:
    return _Catalogs


class _Catalogs:
    base = staticmethod(catalog)
    big = staticmethod(big_catalog)
    instance = staticmethod(instance)
