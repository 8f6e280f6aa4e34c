"""Real `sidecar run` processes on test hosts in network namespaces, with 10% of incoming packets dropped
by nftables on every host: membership converges, nobody is falsely declared dead, a killed member is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT, wait_for
from tests.integration.netns.netns import Lab, lab, why_not_available

REASON = why_not_available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

NODES = ("node-a", "node-b", "node-c", "node-d")


def start(the_lab: Lab, name: str, tmp: Path, join: list[str]) -> tuple[subprocess.Popen[str], Path]:
    admin_file = tmp / f"{name}.admin"
    config = {
        "node": {"name": name, "cluster": "lossy", "data_dir": str(tmp / name)},
        "admin": {"listen": "127.0.0.1:0"}, "api": {"listen": "127.0.0.1:0"},
        "outbound": {"listen": "127.0.0.1:0"}, "dns": {"listen": "127.0.0.1:0"},
        "gossip": {"listen": f"{the_lab.addresses[name]}:7946", "profile": "lan", "join": join},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed when the test ends
    proc = subprocess.Popen([*the_lab.exec_args(name), sys.executable, "-m", "sidecar", "run", "-c", str(path)],
                            cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, admin_file


def admin_address(tmp: Path, name: str) -> str | None:
    text = (tmp / f"{name}.log").read_text()
    for line in text.splitlines():
        if "listening listener=admin address=" in line:
            return line.split("address=")[1].strip()
    return None


def members(the_lab: Lab, tmp: Path, name: str) -> dict[str, Any]:
    address = admin_address(tmp, name)
    assert address is not None
    out = subprocess.run([*the_lab.exec_args(name), "curl", "-s", "--max-time", "2", f"http://{address}/members"],
                         capture_output=True, text=True, timeout=5)
    return {m["name"]: m["state"] for m in json.loads(out.stdout)}


def test_membership_under_ten_percent_loss(tmp_path: Path) -> None:
    with lab() as the_lab:
        for name in NODES:
            the_lab.add_host(name)
            the_lab.drop_incoming(name, 10)
        seed = [f"{the_lab.addresses['node-a']}:7946"]
        procs = {name: start(the_lab, name, tmp_path, [] if name == "node-a" else seed)[0] for name in NODES}
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
