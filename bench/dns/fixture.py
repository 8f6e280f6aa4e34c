"""The names both servers serve in the benchmark: SERVICES services with INSTANCES instances each."""

from __future__ import annotations

from sidecar.catalog.model import CatalogSnapshot, NodeInfo, ServiceMetadata

SERVICES = 50
INSTANCES = 3
NODES = 30
DOMAIN = "mesh"
TTL = 5
INBOUND_PORT = 15006


def node_name(n: int) -> str:
    return f"node-{n:02d}"


def node_address(n: int) -> str:
    return f"10.1.0.{n + 1}"


def service_name(s: int) -> str:
    return f"svc-{s:02d}"


def placement(s: int) -> list[int]:
    """The nodes the instances of service ``s`` run on: INSTANCES distinct ones."""
    return [(s * INSTANCES + k) % NODES for k in range(INSTANCES)]


def snapshot() -> CatalogSnapshot:
    nodes = {node_name(n): NodeInfo(node_name(n), node_address(n), INBOUND_PORT) for n in range(NODES)}
    instances = tuple(
        ServiceMetadata(
            id=f"{service_name(s)}-{k}", name=service_name(s), version="1", host="127.0.0.1", port=8080,
            node=node_name(n),
        )
        for s in range(SERVICES)
        for k, n in enumerate(placement(s))
    )
    return CatalogSnapshot(version=1, nodes=nodes, instances=instances)


def dnsmasq_records() -> list[str]:
    """dnsmasq options serving the same names: --host-record per address, --srv-host per instance."""
    out = [f"--host-record={node_name(n)}.node.{DOMAIN},{node_address(n)},{TTL}" for n in range(NODES)]
    for s in range(SERVICES):
        for n in placement(s):
            out.append(f"--host-record={service_name(s)}.service.{DOMAIN},{node_address(n)},{TTL}")
            out.append(
                f"--srv-host=_{service_name(s)}._tcp.service.{DOMAIN},{node_name(n)}.node.{DOMAIN},"
                f"{INBOUND_PORT},1,1"
            )
    return out


def queries() -> list[str]:
    """dnsperf's input: every service's A and SRV, every node's A, in one interleaved list."""
    out: list[str] = []
    for s in range(SERVICES):
        out.append(f"{service_name(s)}.service.{DOMAIN} A")
        out.append(f"_{service_name(s)}._tcp.service.{DOMAIN} SRV")
    out.extend(f"{node_name(n)}.node.{DOMAIN} A" for n in range(NODES))
    return out
