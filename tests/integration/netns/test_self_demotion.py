"""Self-demotion for real: three `sidecar run` processes in network namespaces; one host's incoming packets are
mostly dropped by nftables, so its probes go unanswered and Lifeguard's health score rises. That sidecar marks its
own service degraded, its peers see it degraded in their catalogs, and once the loss is lifted it restores
itself and its peers see it healthy again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.integration.netns.netns import (
    Lab,
    admin_get,
    members,
    run,
    sidecars_on_hosts,
    start_sidecar,
    why_not_available,
)

REASON = why_not_available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

NODES = ("node-a", "node-b", "node-c")
STRUGGLER = "node-c"


def start(the_lab: Lab, name: str, tmp: Path, join: list[str]) -> subprocess.Popen[str]:
    # a probe every 500 ms: demotion after 5 intervals of a high score, restoration after 15 of a low one
    return start_sidecar(the_lab, name, tmp, "demotion",
                         {"profile": "lan", "join": join, "probe_interval": "500ms", "probe_timeout": "250ms"},
                         services=[{"name": f"svc-{name}", "port": 8080}])


def status_seen_by(the_lab: Lab, tmp: Path, observer: str) -> str | None:
    instances = (admin_get(the_lab, tmp, observer, "/catalog") or {}).get(f"svc-{STRUGGLER}", [])
    return str(instances[0]["status"]) if instances else None


def standing(the_lab: Lab, tmp: Path) -> str:
    return str(admin_get(the_lab, tmp, STRUGGLER, "/gossip")["selfDemotion"]["standing"])


def lift_loss(the_lab: Lab, name: str) -> None:
    run(*the_lab.exec_args(name), "nft", "delete", "table", "inet", "loss")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Lab]:
    with sidecars_on_hosts(tmp_path, NODES, "node-a", start) as the_lab:
        yield the_lab


def test_a_struggling_node_demotes_itself_and_recovers(mesh: Lab, tmp_path: Path) -> None:
    everyone = dict.fromkeys(NODES, "alive")
    wait_for(lambda: all(members(mesh, tmp_path, n) == everyone for n in NODES), timeout=60, interval=0.5,
             what="3 members alive everywhere")
    wait_for(lambda: status_seen_by(mesh, tmp_path, "node-a") == "healthy", timeout=30, interval=0.5,
             what="node-a sees node-c's service healthy")
    assert standing(mesh, tmp_path) == "normal"

    mesh.drop_incoming(STRUGGLER, 70)
    wait_for(lambda: standing(mesh, tmp_path) == "demoted", timeout=60, interval=0.5,
             what="node-c demotes itself while its probes go unanswered")
    assert admin_get(mesh, tmp_path, STRUGGLER, "/gossip")["counters"]["health_score"] >= 1
    local = admin_get(mesh, tmp_path, STRUGGLER, "/v1/services")
    assert [s["status"] for s in local] == ["degraded"], local
    wait_for(lambda: status_seen_by(mesh, tmp_path, "node-a") == "degraded", timeout=30, interval=0.5,
             what="node-a's catalog shows node-c's service degraded")
    assert mesh.dropped(STRUGGLER) > 0  # the loss really happened

    lift_loss(mesh, STRUGGLER)
    wait_for(lambda: standing(mesh, tmp_path) == "normal", timeout=60, interval=0.5,
             what="node-c restores itself once its probes are answered again")
    assert [s["status"] for s in admin_get(mesh, tmp_path, STRUGGLER, "/v1/services")] == ["healthy"]
    wait_for(lambda: status_seen_by(mesh, tmp_path, "node-a") == "healthy", timeout=30, interval=0.5,
             what="node-a sees node-c's service healthy again")
    events = (tmp_path / f"{STRUGGLER}.log").read_text()
    assert "self-demotion: services reported degraded" in events
    assert "self-demotion over" in events
