"""The admin port's defaults, for real: a sidecar whose config has no admin section at all, in a network
namespace of its own (so the fixed default ports are free and nothing leaves the host), with a second address
on a veth pair inside the namespace standing for "the network"."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.common import stop
from tests.harness import ROOT, wait_for
from tests.integration.netns.netns import run, why_not_available
from tests.integration.security.test_admin_access import listening_sockets

REASON = why_not_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@contextlib.contextmanager
def namespace() -> Iterator[tuple[str, str]]:
    """A fresh namespace with loopback and one private address (10.251.N.1 on a veth pair kept inside it)."""
    ns = f"sc-sec-{os.getpid() % 100000}"
    address = f"10.251.{os.getpid() % 250 + 1}.1"
    run("ip", "netns", "add", ns)
    try:
        for args in (["ip", "link", "set", "lo", "up"],
                     ["ip", "link", "add", "sa", "type", "veth", "peer", "name", "sb"],
                     ["ip", "addr", "add", f"{address}/24", "dev", "sa"], ["ip", "link", "set", "sa", "up"],
                     ["ip", "link", "set", "sb", "up"]):
            run("ip", "netns", "exec", ns, *args)
        yield ns, address
    finally:
        run("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def sidecar_in(ns: str, tmp: Path, config: dict[str, Any]) -> Iterator[Path]:
    path = tmp / "netns.yaml"
    path.write_text(yaml.safe_dump({"node": {"name": "node-ns", "data_dir": str(tmp / "data")}, **config}))
    log = tmp / "netns.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "sidecar", "run", "-c", str(path)],
                                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: "sidecar ready" in log.read_text(), 20, what=f"sidecar ready in {ns}: {log}")
        yield log
    finally:
        stop(proc, 20)


def curl(ns: str, method: str, url: str) -> str:
    """The HTTP status as curl prints it ("000": no connection), from inside the namespace."""
    out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "3", "-X", method, url], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def proc_net(ns: str) -> dict[str, str]:
    return {name: run("ip", "netns", "exec", ns, "cat", f"/proc/net/{name}").stdout for name in ("tcp", "tcp6")}


def test_no_admin_section_means_loopback_only(tmp_path: Path) -> None:
    with namespace() as (ns, address), sidecar_in(ns, tmp_path, {}) as log:
        assert "listening listener=admin address=127.0.0.1:9901" in log.read_text()
        assert listening_sockets(9901, proc_net(ns)) == ["127.0.0.1"]
        assert curl(ns, "GET", "http://127.0.0.1:9901/healthz") == "200"
        assert curl(ns, "GET", f"http://{address}:9901/healthz") == "000"  # nothing listens there
        # no token: changes from loopback are accepted, as Envoy's and Consul's admin APIs accept them
        assert curl(ns, "POST", "http://127.0.0.1:9901/logging?level=info") == "200"


def test_an_exposed_admin_port_without_a_token_accepts_changes_from_loopback_only(tmp_path: Path) -> None:
    with namespace() as (ns, address), sidecar_in(ns, tmp_path, {"admin": {"listen": "0.0.0.0:9901"}}) as log:
        assert "admin port listens on 0.0.0.0 without admin.token_file" in log.read_text()
        assert curl(ns, "GET", f"http://{address}:9901/ready") == "200"       # probes and scrapes work
        assert curl(ns, "POST", f"http://{address}:9901/drain") == "403"      # a change from the network does not
        assert curl(ns, "POST", f"http://{address}:9901/leave") == "403"
        assert curl(ns, "GET", f"http://{address}:9901/ready") == "200"       # ... and did nothing
        assert "admin request refused method=POST path=/drain" in log.read_text()
        assert curl(ns, "POST", "http://127.0.0.1:9901/drain") == "200"       # the preStop hook's way
        assert curl(ns, "GET", f"http://{address}:9901/ready") == "503"
