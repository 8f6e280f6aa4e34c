"""The container image, built with podman and run as Kubernetes runs it.

`make image-base` makes the base images from Debian packages (debootstrap; this machine cannot pull from an image
registry), `make image` builds the Dockerfile on them, then containers of that image run on the host's network:
as uid 10001 on a read-only root filesystem with the data directory on a tmpfs, the config and certificates
mounted read-only. The checks: /ready answers, the image's HEALTHCHECK passes, SIGTERM (`podman stop`) drains and
exits 0 within the grace period, and two containers form a mesh (gossip, an mTLS request from one to the other's
app, allowed by the callee's authorization rules for the caller's identity only).

The first build on a machine takes minutes (debootstrap, compiling the request path), so `make image-test` runs
these, not `make test`; `.ci/run` runs both. They need root, podman, runc and debootstrap (`make image-tools`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import __version__
from sidecar.config.load import deep_merge
from tests.harness import ROOT, SidecarProcess, free_port, http, make_certs, members_by_state, wait_for

PODMAN = str(ROOT / "deploy" / "podman" / "podman.sh")
IMAGE = f"localhost/sidecar-test:{__version__}"
UID = 10001                 # the Dockerfile's USER, the chart's runAsUser
GRACE = 30                  # seconds between `podman stop`'s SIGTERM and its SIGKILL (Kubernetes' default grace)
BUILD_TIMEOUT = 2400.0      # a first build on a loaded 2-core machine: debootstrap, apt, pip, mypyc
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * BUILD_TIMEOUT)]


def unusable() -> str | None:
    """Why podman cannot build and run the image here, or None."""
    if os.geteuid() != 0:
        return "podman runs the image test as root (vfs storage, runc); not root"
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make image-tools)"
    return None


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def podman(*args: str, timeout: float = 60.0) -> str:
    return run(PODMAN, *args, timeout=timeout).stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """The image built by `make image` on the local Debian bases that `make image-base` makes (or reuses)."""
    reason = unusable()
    if reason:
        pytest.skip(reason)
    made = run("make", "--no-print-directory", "image-base", timeout=BUILD_TIMEOUT).stdout
    bases = dict(re.findall(r"^(BUILD_IMAGE|BASE_IMAGE)=(\S+)$", made, re.MULTILINE))
    assert set(bases) == {"BUILD_IMAGE", "BASE_IMAGE"}, made
    run("make", "--no-print-directory", "image", f"IMAGE={IMAGE}", *(f"{k}={v}" for k, v in bases.items()),
        timeout=BUILD_TIMEOUT)
    return IMAGE


class Container(SidecarProcess):
    """`sidecar run` in a container of the image, attached (its log is this process's output), on the host's
    network: its listeners are on the host's loopback, on free ports. Its folder (config, certificates) is mounted
    read-only at the same path; the root filesystem is read-only and the data directory a tmpfs."""

    def __init__(self, tmp: Path, image: str, config: dict[str, Any], name: str,
                 app: list[str] | None = None) -> None:
        folder = node_folder(tmp, name)
        self.container = f"sidecar-test-{name}-{os.getpid()}"
        self.admin_address = f"127.0.0.1:{free_port()}"   # known before start: the HEALTHCHECK is told it
        config = deep_merge({"node": {"data_dir": "/var/lib/sidecar/data"}, "admin": {"listen": self.admin_address}},
                            config)
        command = [PODMAN, "run", "--name", self.container, "--network", "host", "--read-only",
                   "--tmpfs", "/var/lib/sidecar:rw,U,mode=0700", "--volume", f"{folder}:{folder}:ro",
                   "--env", f"SIDECAR_ADMIN=http://{self.admin_address}", image]
        super().__init__(folder, config, name=name, extra_args=["--", *app] if app else None, command=command)

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> Container:
        """Starts the container and waits until it is ready or has exited (then fails, with its log). vfs copies
        the image for each new container: a start takes seconds, more on a loaded machine."""
        super().start(wait_ready=False)
        assert self.proc is not None
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or ("admin" in self.listeners and self.ready()), timeout,
                 what=f"{self.container} ready")
        assert proc.poll() is None, f"{self.container} exited {proc.returncode}:\n{self.log_text()[-3000:]}"
        return self

    def exec(self, *args: str) -> str:
        return podman("exec", self.container, *args)

    def stop(self) -> tuple[int, float]:
        """`podman stop`: SIGTERM, SIGKILL after GRACE seconds. Returns the exit code and the seconds it took."""
        started = time.monotonic()
        podman("stop", "--time", str(GRACE), self.container, timeout=GRACE + 30)
        took = time.monotonic() - started
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", self.container))
        assert self.proc is not None
        assert self.proc.wait(30) == code           # `podman run` exits as its container did
        return code, took

    def remove(self) -> None:
        subprocess.run([PODMAN, "rm", "--force", "--time", "0", self.container], capture_output=True, timeout=60)
        self.kill()


@pytest.fixture
def containers(image: str, tmp_path: Path) -> Iterator[Any]:
    """Starts containers of the image; every one is removed at the end of the test, whatever happens."""
    started: list[Container] = []

    def start(config: dict[str, Any], name: str, app: list[str] | None = None) -> Container:
        container = Container(tmp_path, image, config, name, app)
        started.append(container)
        return container.start()

    yield start
    for container in started:
        container.remove()


def node_folder(tmp: Path, name: str) -> Path:
    """A node's folder on the host, mounted into its container; the container's user may walk into it (pytest
    makes its own folders 0700)."""
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    return folder


def install_certs(tls: dict[str, str], folder: Path) -> dict[str, str]:
    """The CA certificate and one identity's certificate and key in a node's folder, owned by the container's
    user (the key is 0600, as `sidecar certs issue` writes it; a Kubernetes Secret volume does this with fsGroup).
    Returns the node's tls config."""
    (folder / "certs").mkdir(mode=0o755)
    installed = dict(tls)
    for key in ("ca", "cert", "key"):
        target = folder / "certs" / Path(tls[key]).name
        shutil.copy2(tls[key], target)
        os.chown(target, UID, UID)
        installed[key] = str(target)
    return installed


def test_runs_as_uid_10001_on_a_read_only_root_with_the_compiled_request_path(containers: Any) -> None:
    node = containers({}, "node-a")
    assert node.exec("id", "-u") == str(UID)
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", node.exec("cat", "/proc/1/status"), re.MULTILINE)
    refused = subprocess.run([PODMAN, "exec", node.container, "touch", "/opt/sidecar/written"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    root_options = node.exec("grep", " / ", "/proc/self/mounts").split()[3].split(",")
    assert "ro" in root_options
    assert "messaging.db" in node.exec("ls", "/var/lib/sidecar/data")   # the data directory is writable
    # the build stage had a compiler: the image carries the compiled request path
    assert "request_path=compiled" in node.wait_log(r"sidecar ready")


def test_ready_answers_and_the_healthcheck_passes(containers: Any) -> None:
    node = containers({}, "node-a")
    ready = http("GET", node.admin + "/ready")
    assert ready.status == 200, ready
    assert ready.json()["listeners"]["admin"] == node.admin_address
    command = json.loads(podman("inspect", "--format", "{{json .Config.Healthcheck.Test}}", node.container))
    assert command[0] == "CMD" and "/healthz" in command[-1]      # the Dockerfile's HEALTHCHECK
    podman("healthcheck", "run", node.container)                 # exits 0: healthy
    # the same command fails where no admin port answers
    elsewhere = subprocess.run([PODMAN, "exec", "--env", f"SIDECAR_ADMIN=http://127.0.0.1:{free_port()}",
                                node.container, *command[1:]], capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode != 0 and "Connection refused" in elsewhere.stderr


def test_sigterm_drains_and_exits_0_within_the_grace_period(containers: Any) -> None:
    node = containers({}, "node-a")
    code, took = node.stop()
    assert code == 0, node.log_text()[-2000:]       # 137 would be the SIGKILL at the end of the grace period
    assert took < GRACE
    log = node.log_text()
    assert "shutting down signal=SIGTERM" in log
    assert "draining: readiness is now 503" in log and "sidecar stopped" in log


def test_two_containers_on_the_host_network_form_a_mesh(containers: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "ca", ["checkout", "payment-service"])    # one CA, on the host
    tls_a = install_certs(certs["checkout"], node_folder(tmp_path, "node-a"))
    tls_b = install_certs(certs["payment-service"], node_folder(tmp_path, "node-b"))
    a = containers({"node": {"name": "node-a", "cluster": "image"}, "tls": tls_a}, "node-a")
    app_port = free_port()
    b = containers({
        "node": {"name": "node-b", "cluster": "image"},
        "tls": tls_b,
        "gossip": {"join": [a.listeners["gossip"]]},
        "services": [{"name": "payment-service", "port": app_port,
                      "check": {"http": "/health", "interval": "250ms", "timeout": "250ms"}}],
        # only the caller whose certificate names it checkout may call
        "authorization": {"default": "deny", "rules": [{"to": "payment-service", "from": ["checkout"]}]},
    }, "node-b", app=["python", "-m", "sidecar.demo.app", "--name", "payment-service", "--port", str(app_port)])

    both = {"node-a": "alive", "node-b": "alive"}
    wait_for(lambda: members_by_state(a) == both and members_by_state(b) == both, timeout=30, what="gossip")
    wait_for(lambda: [i["status"] for i in http("GET", a.api + "/v1/catalog/payment-service").json()] == ["healthy"],
             timeout=30, what="payment-service healthy in node-a's catalog")

    # node-a's outbound → node-b's inbound (mTLS, SPIFFE IDs checked both ways) → the app in node-b's container
    response = http("GET", f"http://{a.listeners['outbound']}/pay?order=7", headers={"Host": "payment-service"})
    assert response.status == 200, response
    assert response.json() == {"service": "payment-service", "path": "/pay", "method": "GET"}

    # node-b leaves on SIGTERM: its app stops, it exits 0, and node-a hears that it left (not that it died)
    code, _ = b.stop()
    assert code == 0, b.log_text()[-2000:]
    wait_for(lambda: members_by_state(a).get("node-b") == "left", timeout=30, what="node-b left")
