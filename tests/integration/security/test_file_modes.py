"""Private files are private whatever the umask: keys 0600, the message store 0600, directories the sidecar
makes 0700; nothing it writes is writable by others. Every command here runs with umask 000, the worst case."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import ROOT, SidecarProcess, http, run_cli, wait_for


def sidecar_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: os.umask(0))  # umask 000: the worst case


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """For starting a child process: the umask is inherited at fork (process-wide, so only briefly)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): mode(p) for p in [root, *root.rglob("*")]}


def test_certs_init_and_issue_write_private_keys(tmp_path: Path) -> None:
    directory = tmp_path / "made" / "certs"
    init = sidecar_cli("certs", "init", "--dir", str(directory), "--trust-domain", "mesh.local")
    assert init.returncode == 0, init.stderr
    issue = sidecar_cli("certs", "issue", "web", "--dir", str(directory))
    assert issue.returncode == 0, issue.stderr
    assert modes_under(directory) == {
        ".": 0o700,                 # made here: its owner's only (it holds the CA key)
        "ca-key.pem": 0o600, "web-key.pem": 0o600,
        "ca.pem": 0o644, "web.pem": 0o644,   # certificates are public, but writable by their owner only
    }
    # private key material is never printed
    for out in (init.stdout + init.stderr, issue.stdout + issue.stderr):
        assert "PRIVATE KEY" not in out
    for key in ("ca-key.pem", "web-key.pem"):
        body = [line for line in (directory / key).read_text().splitlines() if not line.startswith("-----")]
        assert not any(line in init.stdout + issue.stdout for line in body)
    # reissuing replaces the pair atomically and keeps the modes; no temporary file is left behind
    assert sidecar_cli("certs", "issue", "web", "--dir", str(directory)).returncode == 0
    assert modes_under(directory)["web-key.pem"] == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["ca-key.pem", "ca.pem", "web-key.pem", "web.pem"]


def test_an_existing_certificate_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)  # the operator's choice, e.g. a mounted volume
    assert sidecar_cli("certs", "init", "--dir", str(directory), "--trust-domain", "mesh.local").returncode == 0
    assert mode(directory) == 0o755 and mode(directory / "ca-key.pem") == 0o600


def test_the_message_store_is_private(tmp_path: Path) -> None:
    data = tmp_path / "state" / "node-a"
    process = SidecarProcess(tmp_path, {"node": {"data_dir": str(data)}, "subscriptions": [
        {"topic": "orders", "path": "/events"}], "services": [{"name": "web", "port": 9}]})
    with umask(0):
        process.start(wait_ready=False)
    try:
        wait_for(process.ready, 20, what="sidecar ready")
        # a publish reaches the disk (WAL) before 202
        assert http("POST", process.api + "/v1/publish/orders", {"type": "t", "payload": {"n": 1}}).status == 202
        files = modes_under(data)
        assert {"messaging.db", "messaging.db-wal"} <= set(files), files
        assert files == {name: (0o700 if name == "." else 0o600) for name in files}, files
    finally:
        assert process.terminate() == 0


def test_a_store_left_readable_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    for name in ("messaging.db", "messaging.db-wal"):
        (data / name).touch()
        (data / name).chmod(0o644)
    process = SidecarProcess(tmp_path, {"node": {"data_dir": str(data)}}).start()
    try:
        files = modes_under(data)
        assert files.pop(".") == 0o755  # an existing directory is the operator's
        assert set(files.values()) == {0o600}, files
    finally:
        assert process.terminate() == 0


def test_a_certificate_longer_than_the_tls_profiles_allow_is_warned_about(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    assert run_cli("certs", "init", "--dir", str(directory), "--trust-domain", "mesh.local").returncode == 0
    long = run_cli("certs", "issue", "web", "--dir", str(directory), "--ttl", "9600h")
    assert long.returncode == 0, long.stderr
    assert "warning: --ttl 9600h is over 366 days" in long.stderr
    short = run_cli("certs", "issue", "api", "--dir", str(directory), "--ttl", "2160h")
    assert short.returncode == 0 and "warning" not in short.stderr
