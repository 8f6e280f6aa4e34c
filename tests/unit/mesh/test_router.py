from __future__ import annotations

import pytest

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo, ServiceMetadata
from sidecar.errors import NotFound, Unavailable
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import LocalInbound, Router, endpoint_set

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def inst(name: str, node: str, status: HealthStatus = H, tags: tuple[str, ...] = ()) -> ServiceMetadata:
    return ServiceMetadata(f"{name}:{node}", name, "1", "127.0.0.1", 3000, tags=tags, status=status, node=node)


def snap(*instances: ServiceMetadata, version: int = 1, **states: str) -> CatalogSnapshot:
    nodes = {f"n{i}": NodeInfo(f"n{i}", f"10.0.0.{i}", 15006, state=states.get(f"n{i}", "alive")) for i in range(1, 6)}
    return CatalogSnapshot(version, nodes, instances)


PAY = ServiceName("pay")


def test_healthy_first_degraded_apart_unhealthy_never() -> None:
    s = snap(inst("pay", "n1", D), inst("pay", "n2"), inst("pay", "n3", U), inst("other", "n4"))
    found = endpoint_set(s, PAY)
    assert [e.node for e in found.healthy] == ["n2"]
    assert [e.node for e in found.degraded] == ["n1"]
    assert found.usable == found.healthy
    assert (found.total, found.unhealthy) == (3, 1)
    assert found.healthy[0].address == ("10.0.0.2", 15006)


def test_degraded_only_when_no_healthy() -> None:
    found = endpoint_set(snap(inst("pay", "n1", D), inst("pay", "n3", U)), PAY)
    assert [e.node for e in found.usable] == ["n1"]


@pytest.mark.parametrize(("state", "usable"), [("alive", 1), ("suspect", 1), ("dead", 0), ("left", 0)])
def test_node_state(state: str, usable: int) -> None:
    found = endpoint_set(snap(inst("pay", "n1"), n1=state), PAY)
    assert len(found.usable) == usable
    assert found.unreachable == 1 - usable


def test_unknown_node_or_unusable_address_is_unreachable() -> None:
    s = CatalogSnapshot(1, {"n1": NodeInfo("n1", "0.0.0.0", 15006), "n2": NodeInfo("n2", "10.0.0.2", 0)},
                        (inst("pay", "n1"), inst("pay", "n2"), inst("pay", "n9")))
    found = endpoint_set(s, PAY)
    assert found.usable == () and found.unreachable == 3


def test_local_instances_go_to_our_bound_inbound() -> None:
    s = CatalogSnapshot(1, {"me": NodeInfo("me", "10.0.0.9", 0)}, (inst("pay", "me"),))
    found = endpoint_set(s, PAY, LocalInbound("me", ("127.0.0.1", 40000)))
    assert found.usable[0].address == ("127.0.0.1", 40000)


def test_tags_filter() -> None:
    s = snap(inst("pay", "n1", tags=("v1",)), inst("pay", "n2", tags=("v2",)))
    assert [e.node for e in endpoint_set(s, ServiceName("pay", "v2")).usable] == ["n2"]
    found = endpoint_set(s, ServiceName("pay", "v3"))
    assert (found.total, found.tagged, found.usable) == (2, 0, ())


def test_errors_say_why() -> None:
    nf = endpoint_set(snap(), PAY).no_endpoint()
    assert isinstance(nf, NotFound) and nf.details == {"service": "pay"}
    un = endpoint_set(snap(inst("pay", "n1", U), inst("pay", "n2"), n2="dead"), PAY).no_endpoint()
    assert isinstance(un, Unavailable)
    assert un.details == {"service": "pay", "instances": 2, "unhealthy": 1, "unreachable": 1}
    assert un.message == ("no healthy instance of pay: 2 instances, 1 unhealthy, "
                          "1 on nodes that are down or have no address")
    tagged = endpoint_set(snap(inst("pay", "n1")), ServiceName("pay", "v9")).no_endpoint()
    assert isinstance(tagged, Unavailable) and "tag 'v9'" in tagged.message


def test_endpoint_sets_are_cached_per_snapshot_version() -> None:
    router = Router()
    s1 = snap(inst("pay", "n1"), version=1)
    assert router.endpoints(s1, PAY) is router.endpoints(s1, PAY)
    s2 = snap(inst("pay", "n1"), inst("pay", "n2"), version=2)
    assert len(router.endpoints(s2, PAY).usable) == 2


def test_an_unknown_service_is_503_until_the_catalog_has_synced() -> None:
    unsynced = CatalogSnapshot(1, {}, (inst("other", "n1"),), synced=False)
    error = endpoint_set(unsynced, PAY).no_endpoint()
    assert isinstance(error, Unavailable) and "has not joined the mesh" in str(error)
    assert isinstance(endpoint_set(snap(inst("other", "n1")), PAY).no_endpoint(), NotFound)


def test_a_service_whose_instances_are_all_on_dead_members_is_503_not_404() -> None:
    # after a partition heals, a stale "dead" verdict can take a service's last live instance for a moment: the
    # name is not unknown, and a client must be told to come again (503), not that nothing serves it (404)
    down = (inst("pay", "n1", tags=("v1",)), inst("pay", "n2"), inst("other", "n3"))
    s = CatalogSnapshot(1, {}, (), down=down)
    error = endpoint_set(s, PAY).no_endpoint()
    assert isinstance(error, Unavailable), error
    assert error.message == "no live instance of pay: 2 instances on members that are down"
    assert error.details == {"service": "pay", "instances": 0, "down": 2, "reason": "members-down"}
    assert isinstance(endpoint_set(s, ServiceName("pay", "v9")).no_endpoint(), Unavailable)
    assert isinstance(endpoint_set(s, ServiceName("nobody")).no_endpoint(), NotFound)
    live = CatalogSnapshot(1, snap().nodes, (inst("pay", "n4"),), down=down)
    assert [e.node for e in endpoint_set(live, PAY).usable] == ["n4"]   # the down ones never carry traffic
