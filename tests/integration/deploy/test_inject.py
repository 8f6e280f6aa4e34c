"""`sidecar inject`, run as a real process on manifests of every workload kind: the output is valid Kubernetes
(kubernetes-validate --strict: every version from 1.29 on for native sidecars, 1.27 for the fallback),
the embedded sidecar config passes `sidecar validate`, the containers are in the order that makes the sidecar
start first and stop last, and injecting again changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import __version__
from sidecar.tls.certs import init_ca, issue
from tests.harness import ROOT
from tests.integration.deploy.tools import (
    KUBERNETES_VERSION,
    ToolUnavailable,
    kubernetes_validate_binary,
    kubernetes_versions,
)

POD = {"metadata": {"labels": {"app.kubernetes.io/name": "web"}},
       "spec": {"containers": [{"name": "web", "image": "registry.example/shop/web:1.2.0",
                                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}}]}}
JOB_POD = {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "report", "image": "registry.example/shop/report:1.0",
                                    "command": ["report", "--daily"]}]}}
SELECTOR = {"matchLabels": {"app.kubernetes.io/name": "web"}}
MANIFESTS = [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"replicas": 2, "selector": SELECTOR, "template": POD}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}},
    {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ledger"},
     "spec": {"serviceName": "ledger", "selector": SELECTOR, "template": POD}},
    {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
     "spec": {"selector": SELECTOR, "template": POD}},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "report"}, "spec": {"template": JOB_POD}},
    {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
     "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": JOB_POD}}}},
]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")
NATIVE_SINCE = "1.29.0"   # native sidecar containers, on by default
OLD_VERSION = "1.27.0"    # before them


def sidecar_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=str(ROOT), input=stdin,
                          capture_output=True, text=True, timeout=60)


def inject(path: Path, *options: str) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    done = sidecar_cli("inject", str(path), *options)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d], done


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    template = (document["spec"]["jobTemplate"]["spec"]["template"] if document["kind"] == "CronJob"
                else document["spec"]["template"])
    spec = template["spec"]
    assert isinstance(spec, dict)
    return spec


def validate_kubernetes(documents: list[dict[str, Any]], version: str, tmp_path: Path) -> None:
    try:
        validator = kubernetes_validate_binary()
    except ToolUnavailable as e:
        pytest.skip(str(e))
    path = tmp_path / f"injected-{version}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    done = subprocess.run([str(validator), "--strict", "-k", version, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed for resource ") == len(documents), done.stdout


@pytest.fixture()
def manifests(tmp_path: Path) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump_all(MANIFESTS))
    return path


def test_injected_manifests_of_every_kind_are_valid_and_ordered(manifests: Path, tmp_path: Path) -> None:
    documents, done = inject(manifests)
    assert [d["kind"] for d in documents] == [
        "ConfigMap", "Deployment", "Service", "ConfigMap", "StatefulSet", "ConfigMap", "DaemonSet",
        "ConfigMap", "Job", "ConfigMap", "CronJob"]
    assert documents[2] == MANIFESTS[1]   # passed through
    assert done.stderr.splitlines() == [
        "deployment/web injected (service web, port 8080)", "statefulset/ledger injected (service web, port 8080)",
        "daemonset/agent injected (service web, port 8080)",
        "job/report injected (service report, no port: outbound only)",
        "cronjob/nightly injected (service nightly, no port: outbound only)"]
    try:
        versions = kubernetes_versions(NATIVE_SINCE)
    except ToolUnavailable as e:
        pytest.skip(str(e))
    assert versions[0] == NATIVE_SINCE and len(versions) >= 3, versions
    for version in versions:   # 1.29 and every later version kubernetes-validate knows
        validate_kubernetes(documents, version, tmp_path)
    for document in documents:
        if document["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(document)
        # native: the kubelet starts init containers in order, each once the one before has started; the
        # sidecar is first, "started" once its startup probe passes on /ready, and it is stopped after the
        # regular containers have exited (which also lets a Job's pod complete)
        (sidecar,) = spec["initContainers"]
        assert sidecar["name"] == "sidecar" and sidecar["restartPolicy"] == "Always"
        assert sidecar["image"] == f"sidecar:{__version__}"
        assert sidecar["startupProbe"]["httpGet"]["path"] == "/ready"
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert "sidecar" not in [c["name"] for c in spec["containers"]]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["HTTP_PROXY"] == "http://127.0.0.1:15001"


def test_embedded_config_passes_sidecar_validate(manifests: Path, tmp_path: Path) -> None:
    documents, _ = inject(manifests)
    # the certificate paths exist only in a pod: a second file, merged over the config as `run -c` merges,
    # points them at real certificates; everything else is validated as injected
    init_ca(tmp_path / "ca", "mesh.local")
    leaf = issue("web", tmp_path / "ca")
    overlay = tmp_path / "tls.yaml"
    overlay.write_text(yaml.safe_dump({"tls": {"ca": str(tmp_path / "ca" / "ca.pem"), "cert": str(leaf.cert),
                                               "key": str(leaf.key)}}))
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": "web-7d9f8-x2x7q", "POD_IP": "10.1.2.3", "POD_NAMESPACE": "shop",
           "NODE_NAME": "worker-1"}
    config_maps = [d for d in documents if d["kind"] == "ConfigMap"]
    assert len(config_maps) == len(WORKLOADS)
    for config_map in config_maps:
        path = tmp_path / f"{config_map['metadata']['name']}.yaml"
        path.write_text(config_map["data"]["sidecar.yaml"])
        done = subprocess.run([sys.executable, "-m", "sidecar", "validate", str(path), str(overlay)], cwd=str(ROOT),
                              capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0, f"{path.name}: {done.stdout}{done.stderr}"
    # and the check is real: a broken embedded config fails it
    broken = tmp_path / "broken.yaml"
    broken.write_text(config_maps[0]["data"]["sidecar.yaml"].replace("port: 8080", "port: 80800"))
    done = subprocess.run([sys.executable, "-m", "sidecar", "validate", str(broken), str(overlay)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2 and "services[0].port: must be a port" in done.stderr, done.stderr


def test_fallback_for_clusters_before_native_sidecars(tmp_path: Path) -> None:
    path = tmp_path / "long-running.yaml"
    path.write_text(yaml.safe_dump_all([m for m in MANIFESTS if m["kind"] not in ("Job", "CronJob")]))
    documents, _ = inject(path, "--no-native-sidecar")
    validate_kubernetes(documents, OLD_VERSION, tmp_path)
    validate_kubernetes(documents, KUBERNETES_VERSION, tmp_path)
    for document in documents:
        if document["kind"] not in LONG_RUNNING:
            continue
        spec = pod_spec(document)
        assert "initContainers" not in spec
        # regular containers start in order, each after the previous one's postStart: the sidecar's waits for
        # /ready; its preStop drains and sleeps, so it outlives the app that got SIGTERM with it
        assert [c["name"] for c in spec["containers"]] == ["sidecar", "web"]
        lifecycle = spec["containers"][0]["lifecycle"]
        assert lifecycle["postStart"]["exec"]["command"][:2] == ["sidecar", "wait-ready"]
        assert "/drain" in lifecycle["preStop"]["exec"]["command"][-1]
    # a Job's pod would never complete with a regular sidecar: refused, nothing printed
    done = sidecar_cli("inject", "-", "--no-native-sidecar", stdin=yaml.safe_dump(MANIFESTS[4]))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("sidecar: inject: stdin: document 1 (Job report): a regular sidecar container")
    assert len(done.stderr.splitlines()) == 1


def test_injecting_twice_is_injecting_once(manifests: Path) -> None:
    once = sidecar_cli("inject", str(manifests))
    assert once.returncode == 0, once.stderr
    twice = sidecar_cli("inject", "-", stdin=once.stdout)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout
    assert all(line.endswith("skipped (already injected)") for line in twice.stderr.splitlines())
    assert len(twice.stderr.splitlines()) == len(WORKLOADS)


@pytest.mark.parametrize(("text", "message"), [
    ("kind: Deployment\n  metadata: {name: [\n", "sidecar: inject: stdin is not YAML (line 2, column 11)"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n",
     "sidecar: inject: stdin: document 1 (Deployment web): no pod template with containers at "
     "spec.template.spec.containers"),
    ("- just\n- a list\n", "sidecar: inject: stdin: document 1: not a Kubernetes object (a list, not a mapping)"),
])
def test_bad_input_exits_2_with_one_line(text: str, message: str) -> None:
    done = sidecar_cli("inject", "-", stdin=text)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_missing_file_exits_2(tmp_path: Path) -> None:
    done = sidecar_cli("inject", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert done.stderr == f"sidecar: inject: cannot read {tmp_path / 'nope.yaml'}: No such file or directory\n"
