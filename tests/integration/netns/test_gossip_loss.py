"""Real `sidecar run` processes on test hosts in network namespaces, with 10% of incoming packets dropped
by nftables on every host: membership converges, nobody is falsely declared dead, a killed member is."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.integration.netns.netns import Lab, lab, members, start_sidecar, why_not_available

REASON = why_not_available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

NODES = ("node-a", "node-b", "node-c", "node-d")


def start(the_lab: Lab, name: str, tmp: Path, join: list[str]) -> subprocess.Popen[str]:
    return start_sidecar(the_lab, name, tmp, "lossy", {"profile": "lan", "join": join})


def test_membership_under_ten_percent_loss(tmp_path: Path) -> None:
    with lab() as the_lab:
        for name in NODES:
            the_lab.add_host(name)
            the_lab.drop_incoming(name, 10)
        seed = [f"{the_lab.addresses['node-a']}:7946"]
        procs = {name: start(the_lab, name, tmp_path, [] if name == "node-a" else seed) for name in NODES}
        try:
            everyone = dict.fromkeys(NODES, "alive")
            wait_for(lambda: all(members(the_lab, tmp_path, n) == everyone for n in NODES), timeout=60,
                     interval=0.5, what="4 members alive on every host despite loss")
            # no false deaths for a while (LAN profile: about 20 probe rounds per member)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for name in NODES:
                    states = members(the_lab, tmp_path, name)
                    assert "dead" not in states.values(), (name, states)
                time.sleep(1)
            assert all(the_lab.dropped(name) > 0 for name in NODES)  # the loss really happened
            # a killed member is declared dead by all others, through the loss
            procs["node-d"].send_signal(signal.SIGKILL)
            procs["node-d"].wait(10)
            wait_for(lambda: all(members(the_lab, tmp_path, n).get("node-d") == "dead" for n in NODES[:3]),
                     timeout=60, interval=0.5, what="node-d dead everywhere")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
