"""Test hosts in network namespaces that the test creates and removes itself: a bridge namespace and one
namespace per node, joined by veth pairs, with nftables rules for packet loss. Addresses are private to
these namespaces (10.250.0.0/16); nothing leaves them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness import ROOT

SUBNET = "10.250.{net}.{host}"


def run(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def why_not_available() -> str | None:
    """None when this machine lets us make namespaces, else the reason to skip."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian iproute2 / nftables)"
    probe = f"sc-probe-{os.getpid()}"
    result = run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace here: {result.stderr.strip()}"
    try:
        nft = run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False)
        if nft.returncode != 0:
            return f"nftables is not usable in a namespace here: {nft.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Lab:
    tag: str
    net: int
    bridge_ns: str = ""
    hosts: dict[str, str] = field(default_factory=dict)  # name -> namespace
    addresses: dict[str, str] = field(default_factory=dict)

    def add_host(self, name: str) -> str:
        index = len(self.hosts) + 1
        ns = f"sc-{self.tag}-{index}"
        address = SUBNET.format(net=self.net, host=index)
        run("ip", "netns", "add", ns)
        self.hosts[name] = ns
        self.addresses[name] = address
        outside, inside = f"v{self.tag}{index}", f"e{self.tag}{index}"
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", outside, "netns", self.bridge_ns)
        run("ip", "link", "set", inside, "netns", ns)
        run("ip", "netns", "exec", self.bridge_ns, "ip", "link", "set", outside, "master", "br0")
        run("ip", "netns", "exec", self.bridge_ns, "ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "name", "eth0")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ns

    def drop_incoming(self, name: str, percent: int) -> None:
        """Drop this share of the packets arriving on the host's interface (the kernel here has no netem)."""
        ns = self.hosts[name]
        run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "loss")
        run("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "loss", "input",
            "{ type filter hook input priority 0 ; }")
        run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "loss", "input", "iifname", "eth0",
            "numgen", "random", "mod", "100", "<", str(percent), "counter", "drop")

    def dropped(self, name: str) -> int:
        out = run("ip", "netns", "exec", self.hosts[name], "nft", "list", "table", "inet", "loss").stdout
        for token_line in out.splitlines():
            if "counter packets" in token_line:
                words = token_line.split()
                return int(words[words.index("packets") + 1])
        return 0

    def isolate(self, name: str) -> None:
        """A partition: the host's link goes down."""
        run("ip", "netns", "exec", self.hosts[name], "ip", "link", "set", "eth0", "down")

    def heal(self, name: str) -> None:
        run("ip", "netns", "exec", self.hosts[name], "ip", "link", "set", "eth0", "up")

    def exec_args(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[name]]


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000}"
    the_lab = Lab(tag=tag, net=os.getpid() % 250 + 1)
    the_lab.bridge_ns = f"sc-{tag}-br"
    run("ip", "netns", "add", the_lab.bridge_ns)
    try:
        run("ip", "netns", "exec", the_lab.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
        run("ip", "netns", "exec", the_lab.bridge_ns, "ip", "link", "set", "br0", "up")
        yield the_lab
    finally:
        for ns in [*the_lab.hosts.values(), the_lab.bridge_ns]:
            run("ip", "netns", "del", ns, check=False)


# ------------------------------------------------------------------------------- sidecars on the lab's hosts


def start_sidecar(the_lab: Lab, name: str, tmp: Path, cluster: str, gossip: dict[str, Any],
                  **sections: Any) -> subprocess.Popen[str]:
    """`sidecar run` on host ``name``: gossip on the host's address, every other listener on its loopback (port 0);
    ``gossip`` adds to the gossip section, ``sections`` are more top-level config sections. Output goes to
    ``tmp/NAME.log``, where :func:`admin_get` finds the admin address."""
    config = {
        "node": {"name": name, "cluster": cluster, "data_dir": str(tmp / name)},
        "admin": {"listen": "127.0.0.1:0"}, "api": {"listen": "127.0.0.1:0"},
        "outbound": {"listen": "127.0.0.1:0"}, "dns": {"listen": "127.0.0.1:0"},
        "gossip": {"listen": f"{the_lab.addresses[name]}:7946", **gossip},
        **sections,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - the child holds it; closed when the test's tmp goes
    return subprocess.Popen([*the_lab.exec_args(name), sys.executable, "-m", "sidecar", "run", "-c", str(path)],
                            cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def admin_get(the_lab: Lab, tmp: Path, name: str, path: str) -> Any:
    """GET on host ``name``'s admin port, from inside its namespace; None until it listens or on a bad answer."""
    address = None
    for line in (tmp / f"{name}.log").read_text().splitlines():
        if "listening listener=admin address=" in line:
            address = line.split("address=")[1].strip()
    if address is None:
        return None
    out = run(*the_lab.exec_args(name), "curl", "-s", "--max-time", "2", f"http://{address}{path}", check=False)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def members(the_lab: Lab, tmp: Path, name: str) -> dict[str, str]:
    """Host ``name``'s view: member name → state (empty until its admin port answers)."""
    return {m["name"]: m["state"] for m in admin_get(the_lab, tmp, name, "/members") or []}


@contextlib.contextmanager
def sidecars_on_hosts(tmp: Path, names: tuple[str, ...], seed: str,
                      start: Callable[[Lab, str, Path, list[str]], subprocess.Popen[str]]) -> Iterator[Lab]:
    """A lab with one host per name, each running ``start(lab, name, tmp, join)``: the seed joins nobody, the
    others join the seed. The sidecars are killed and the namespaces removed at the end, whatever happens."""
    with lab() as the_lab:
        for name in names:
            the_lab.add_host(name)
        join = [f"{the_lab.addresses[seed]}:7946"]
        procs = [start(the_lab, name, tmp, [] if name == seed else join) for name in names]
        try:
            yield the_lab
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)
