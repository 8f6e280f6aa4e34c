"""The product installed the way a user installs it: from a clean copy of the tree, in fresh virtual
environments, with pip's build isolation on (`pip install .`, `pip wheel .`, `python -m build`).

These build the package three times (about five minutes of CPU), so `make install-test` runs them, not
`make test`; `.ci/run` runs both. They need the package registry (PyPI) for the build requirements.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from sidecar import __version__
from tests.harness import ROOT, SidecarProcess

BUILD_TIMEOUT = 1200.0
pytestmark = pytest.mark.timeout(2 * BUILD_TIMEOUT)   # a module fixture builds; a loaded machine takes long
COMPILER = shutil.which("gcc") is not None and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items() if k != "SIDECAR_PURE_PYTHON"})
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def venv(path: Path) -> Path:
    """A new virtual environment on the interpreter the tests run on; its bin/ folder."""
    run(sys.executable, "-m", "venv", path)
    return path / "bin"


def clean_copy(copy: Path) -> Path:
    """The tree as a clone has it: tracked files only, no venv, no compiled modules, no caches. Each build gets
    its own: pip builds in the tree, and a second build would find the first one's objects in build/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    assert not list(copy.rglob("*.so")) and (copy / "setup.py").exists()
    return copy


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return clean_copy(tmp_path / "clone" / "sidecar")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build`: the sdist, then the wheel built from that sdist (so the sdist must be complete)."""
    source = clean_copy(tmp_path_factory.mktemp("clone") / "sidecar")
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source)
    (sdist,) = out.glob("sidecar-*.tar.gz")
    (wheel,) = out.glob("sidecar-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def ready_line(bin_dir: Path, tmp: Path, env: dict[str, str] | None = None) -> str:
    """A one-node `sidecar run` from the installed console script, outside the checkout, until ready."""
    work = tmp / "run"
    work.mkdir()
    process = SidecarProcess(work, {"services": [{"name": "hello", "port": 3000, "check": {"tcp": True}}]},
                             command=[str(bin_dir / "sidecar")], cwd=work, env=env)
    try:
        process.start(timeout=60.0)
        line = process.wait_log(r"sidecar ready")
        assert process.terminate() == 0
    finally:
        process.kill()
    return line


def check_installed(bin_dir: Path, tmp: Path, request_path: str, env: dict[str, str] | None = None) -> None:
    version = run(bin_dir / "sidecar", "--version", env=env, cwd=tmp)
    assert version.stdout.strip() == f"sidecar {__version__}"
    run(bin_dir / "sidecar", "validate", ROOT / "config" / "sidecar.yaml", env=env, cwd=tmp)
    assert f"request_path={request_path}" in ready_line(bin_dir, tmp, env)


@pytest.mark.skipif(not COMPILER, reason="no gcc and Python headers: the compiled path cannot be built here")
def test_pip_install_from_a_clean_tree_builds_the_compiled_path(source: Path, tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "venv")
    run(bin_dir / "pip", "install", source)                     # build isolation on, as pip does by default
    check_installed(bin_dir, tmp_path, "compiled")


def test_the_built_wheel_runs_in_a_fresh_venv_with_no_compiler(dists: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "venv")
    no_compiler = {"PATH": str(bin_dir), "CC": "/nonexistent/cc"}
    run(bin_dir / "pip", "install", dists["wheel"], env=no_compiler)
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        compiled = [name for name in wheel.namelist() if name.endswith(".so")]
    check_installed(bin_dir, tmp_path, "compiled" if compiled else "python", env=no_compiler)
    if COMPILER:
        assert "sidecar/proxy/exchange" in " ".join(compiled)


def test_pip_wheel_without_a_compiler_installs_plain_python(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "wheels"
    bin_dir = venv(tmp_path / "venv")
    built = run(bin_dir / "pip", "wheel", "--verbose", "--no-deps", "--wheel-dir", out, source,
                env={"CC": "/nonexistent/cc"})
    assert "the request path runs as plain Python" in built.stdout + built.stderr
    (wheel,) = out.glob("sidecar-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]
    run(bin_dir / "pip", "install", wheel)
    check_installed(bin_dir, tmp_path, "python")


def test_the_sdist_and_wheel_pass_twine_check_and_carry_the_package(dists: dict[str, Path]) -> None:
    run(sys.executable, "-m", "twine", "check", "--strict", dists["sdist"], dists["wheel"])
    with tarfile.open(dists["sdist"]) as sdist:
        names = sdist.getnames()
    root = f"sidecar-{__version__}"
    for needed in ("setup.py", "pyproject.toml", "README.md", "sidecar/proxy/exchange.py", "sidecar/py.typed"):
        assert f"{root}/{needed}" in names, needed
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        assert "sidecar/admin/static/" in " ".join(wheel.namelist())
        metadata = wheel.read(f"sidecar-{__version__}.dist-info/METADATA").decode()
    assert f"Version: {__version__}" in metadata
