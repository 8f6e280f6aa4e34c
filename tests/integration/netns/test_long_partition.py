"""A partition that outlasts dead_reap_time: both sides declare each other dead and forget each other; once the
network heals, the failed members are called back (Serf's reconnect) and the cluster is one again. Node c is the
seed (it has no join addresses of its own) and ends up alone, so only the reconnect can bring it back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.integration.netns.netns import Lab, admin_get, members, sidecars_on_hosts, start_sidecar, why_not_available

REASON = why_not_available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

NODES = ("node-a", "node-b", "node-c")
SEED = "node-c"


def start(the_lab: Lab, name: str, tmp: Path, join: list[str]) -> subprocess.Popen[str]:
    return start_sidecar(the_lab, name, tmp, "split",
                         {"profile": "local", "join": join, "dead_reap_time": "3s", "push_pull_interval": "2s",
                          "reconnect_interval": "1s"},
                         services=[{"name": f"svc-{name}", "port": 8080}])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Lab]:
    with sidecars_on_hosts(tmp_path, NODES, SEED, start) as the_lab:
        yield the_lab


def test_a_partition_longer_than_dead_reap_time_heals(cluster: Lab, tmp_path: Path) -> None:
    everyone = dict.fromkeys(NODES, "alive")
    wait_for(lambda: all(members(cluster, tmp_path, n) == everyone for n in NODES), timeout=60, interval=0.5,
             what="3 members alive everywhere")

    cluster.isolate(SEED)
    wait_for(lambda: members(cluster, tmp_path, SEED) == {SEED: "alive"}, timeout=60, interval=0.5,
             what="the seed, alone, has declared the others dead and forgotten them")
    wait_for(lambda: all(members(cluster, tmp_path, n) == {"node-a": "alive", "node-b": "alive"}
                         for n in ("node-a", "node-b")), timeout=60, interval=0.5,
             what="the majority has declared the seed dead and forgotten it")
    catalog = admin_get(cluster, tmp_path, "node-a", "/catalog") or {}
    assert f"svc-{SEED}" not in catalog

    cluster.heal(SEED)
    wait_for(lambda: all(members(cluster, tmp_path, n) == everyone for n in NODES), timeout=60, interval=0.5,
             what="one cluster again after the partition heals")
    wait_for(lambda: f"svc-{SEED}" in (admin_get(cluster, tmp_path, "node-a", "/catalog") or {}), timeout=30,
             interval=0.5, what="the seed's service back in node-a's catalog")
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in NODES)
    assert "reconnected through" in logs
