"""The Helm chart, rendered by a real helm: lint --strict, every manifest valid for Kubernetes (strict schema),
the pieces that make the sidecar safe to run (a native sidecar started before and stopped after the app, or the
regular-container fallback with its hooks, probes, drain, security, disruption budget, autoscaling, network
policy), the default image being the one `make image` builds, the rendered sidecar config accepted by
`sidecar validate`, and the values schema refusing wrong types."""

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
    CHART,
    KUBERNETES_VERSION,
    ToolUnavailable,
    helm_binary,
    kubernetes_validate_binary,
)

VALUES = {"default": [], "dev": ["-f", str(CHART / "values-dev.yaml")],
          "prod": ["-f", str(CHART / "values-prod.yaml")]}
RENDERINGS = {**VALUES, "daemonset": ["--set", "mode=daemonset", "--set", "sidecar.hostPorts=true",
                                      "--set", "config.node.name=${NODE_NAME}"],
              "legacy": ["--set", "sidecar.native=false"]}
# clusters without native sidecars (1.27 is the chart's kubeVersion floor): sidecar.native=auto falls back
OLD_KUBERNETES = ("1.27.0", "1.28.0")


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return helm_binary()
    except ToolUnavailable as e:
        pytest.skip(str(e))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def template(helm: Path, *args: str, kube_version: str = KUBERNETES_VERSION) -> list[dict[str, Any]]:
    done = run_helm(helm, "template", "payments", str(CHART), "--namespace", "shop",
                    "--kube-version", kube_version, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []) if c["name"] == name)


def validate_kubernetes(docs: list[dict[str, Any]], version: str, tmp_path: Path) -> str:
    """kubernetes-validate --strict for ``version``; every built-in kind must pass. Returns its output."""
    try:
        validator = kubernetes_validate_binary()
    except ToolUnavailable as e:
        pytest.skip(str(e))
    manifests = tmp_path / f"manifests-{version}.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run([str(validator), "--strict", "-k", version, str(manifests)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    builtin = [d for d in docs if d["kind"] not in ("Certificate", "ServiceMonitor")]
    assert done.stdout.count(" passed for resource ") == len(builtin), done.stdout
    return done.stdout


@pytest.mark.parametrize("values", sorted(VALUES))
def test_lint_strict(helm: Path, values: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *VALUES[values])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", sorted(RENDERINGS))
def test_every_manifest_is_valid_kubernetes(helm: Path, values: str, tmp_path: Path) -> None:
    docs = template(helm, *RENDERINGS[values])
    validate_kubernetes(docs, KUBERNETES_VERSION, tmp_path)
    # custom resources have no schema in kubernetes-validate: it warns and we check their shape here
    for doc in by_kind(docs, "Certificate"):
        assert doc["apiVersion"] == "cert-manager.io/v1"
        assert doc["spec"]["uris"] == ["spiffe://mesh.local/service/payment-service"]
        assert doc["spec"]["privateKey"]["algorithm"] == "ECDSA"
    for doc in by_kind(docs, "ServiceMonitor"):
        assert doc["spec"]["endpoints"][0]["port"] == "admin"


def test_default_image_is_the_one_make_image_builds(helm: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__   # a version bump cannot leave the chart behind
    assert "tag" not in yaml.safe_load((CHART / "values-prod.yaml").read_text()).get("image", {})
    for values in sorted(RENDERINGS):
        docs = template(helm, *RENDERINGS[values])
        (workload,) = by_kind(docs, "Deployment") + by_kind(docs, "DaemonSet")
        assert container(workload["spec"]["template"], "sidecar")["image"] == f"sidecar:{__version__}"
    docs = template(helm, "--set", "image.repository=registry.example/mesh/sidecar", "--set", "image.tag=9.9.9")
    (deployment,) = by_kind(docs, "Deployment")
    assert container(deployment["spec"]["template"], "sidecar")["image"] == "registry.example/mesh/sidecar:9.9.9"


@pytest.mark.parametrize("version", ["1.29.0", KUBERNETES_VERSION, "1.37.0"])
def test_native_sidecar_starts_before_the_app_and_stops_after_it(helm: Path, version: str, tmp_path: Path) -> None:
    extra_init = '{"name": "migrate", "image": "busybox:1.36", "command": ["true"]}'
    docs = template(helm, "--set-json", f"app.initContainers=[{extra_init}]", kube_version=version)
    validate_kubernetes(docs, version, tmp_path)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    # the kubelet starts init containers in order and each waits for the one before: the sidecar is first, so
    # every later init container and the app start with the mesh up; regular containers hold no sidecar
    assert [c["name"] for c in pod["initContainers"]] == ["sidecar", "migrate"]
    assert [c["name"] for c in pod["containers"]] == ["app"]
    sidecar_container = pod["initContainers"][0]
    assert sidecar_container["restartPolicy"] == "Always"
    assert "restartPolicy" not in pod["initContainers"][1]
    # "started" (what the next container waits for) is the startup probe passing on /ready: listeners up, joined
    assert sidecar_container["startupProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert sidecar_container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert sidecar_container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # stopped after the app by the kubelet: no preStop sleep orders it, and SIGTERM then drains and leaves within
    # the sidecar's 20 s deadline, which the pod's grace period leaves room for after the app's own shutdown
    assert "lifecycle" not in sidecar_container
    assert "lifecycle" not in pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] >= 20 + 20


def test_legacy_sidecar_holds_the_app_until_ready_and_outlives_it(helm: Path, tmp_path: Path) -> None:
    renderings = [(template(helm, kube_version=old), old) for old in OLD_KUBERNETES]     # auto, too old
    renderings.append((template(helm, *RENDERINGS["legacy"]), KUBERNETES_VERSION))      # forced
    for docs, version in renderings:
        validate_kubernetes(docs, version, tmp_path)
        (deployment,) = by_kind(docs, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        # the kubelet starts regular containers in order, each after the previous one's postStart returned
        assert [c["name"] for c in pod["containers"]] == ["sidecar", "app"]
        sidecar_container, app = pod["containers"]
        assert "restartPolicy" not in sidecar_container
        assert sidecar_container["lifecycle"]["postStart"]["exec"]["command"] == [
            "sidecar", "wait-ready", "--admin", "http://127.0.0.1:9901", "--timeout", "120"]
        drain = sidecar_container["lifecycle"]["preStop"]["exec"]["command"]
        assert "http://127.0.0.1:9901/drain" in drain[-1] and "time.sleep(20)" in drain[-1]
        # the app stops after the sidecar drained, and before the sidecar's own SIGTERM (20 s)
        sleep = app["lifecycle"]["preStop"]
        assert sleep == ({"exec": {"command": ["sleep", "10"]}} if version in OLD_KUBERNETES
                         else {"sleep": {"seconds": 10}})   # the sleep action exists from Kubernetes 1.30
    # the sidecar's postStart really waits: the command it names exists and fails when nothing is ready
    done = subprocess.run([sys.executable, "-m", "sidecar", "wait-ready", "--admin", "http://127.0.0.1:9",
                           "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "not ready after 0.5s" in done.stderr


def test_native_sidecar_forced_on_an_old_cluster_is_refused(helm: Path) -> None:
    done = run_helm(helm, "template", "payments", str(CHART), "--kube-version", OLD_KUBERNETES[-1],
                    "--set", "sidecar.native=true")
    assert done.returncode != 0
    assert "sidecar.native=true needs Kubernetes 1.29 or later" in done.stderr, done.stderr


def test_sidecar_mode_runs_next_to_the_app_safely(helm: Path) -> None:
    docs = template(helm)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]
    sidecar = container(pod, "sidecar")
    assert sidecar["args"] == ["run", "-c", "/etc/sidecar/sidecar.yaml"]
    app = container(pod, "app")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45
    for c in (app, sidecar):
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # gossip joins through the headless Service, which lists pods before they are ready (ready needs joined)
    (config_map,) = by_kind(docs, "ConfigMap")
    config = yaml.safe_load(config_map["data"]["sidecar.yaml"])
    assert config["gossip"]["join"] == ["payments-sidecar-gossip.shop.svc.cluster.local:7946"]
    assert config["gossip"]["advertise"] == "${POD_IP}:7946"
    (service,) = by_kind(docs, "Service")
    assert service["metadata"]["name"] == "payments-sidecar-gossip"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [7946, 7946]   # never the admin port
    (policy,) = by_kind(docs, "NetworkPolicy")
    mesh_rule, admin_rule = policy["spec"]["ingress"]
    assert {(p["port"], p["protocol"]) for p in mesh_rule["ports"]} == {(15006, "TCP"), (7946, "TCP"), (7946, "UDP")}
    assert mesh_rule["from"][0]["podSelector"]["matchLabels"] == {"sidecar.mesh/member": "true"}
    assert pod["metadata"]["labels"]["sidecar.mesh/member"] == "true"
    assert admin_rule["ports"] == [{"port": 9901, "protocol": "TCP"}]
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "PodDisruptionBudget")


def test_prod_values_scale_and_protect(helm: Path) -> None:
    docs = template(helm, *VALUES["prod"])
    (deployment,) = by_kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"]   # the autoscaler owns it
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "sidecar_requests_per_second"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    config = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["sidecar.yaml"])
    assert config["node"]["cluster"] == "prod"
    assert config["telemetry"]["tracing"]["exporter"] == "otlp"
    assert config["admin"]["token_file"] == "/etc/sidecar/admin/token"
    sources = deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    secrets = [s["secret"]["name"] for s in sources if "secret" in s]
    assert secrets == ["payments-sidecar-tls", "payments-admin-token"]
    dev = yaml.safe_load(by_kind(template(helm, *VALUES["dev"]), "ConfigMap")[0]["data"]["sidecar.yaml"])
    assert dev["node"]["cluster"] == "dev"


def test_daemonset_mode_has_no_app_container(helm: Path) -> None:
    docs = template(helm, *RENDERINGS["daemonset"])
    assert not by_kind(docs, "Deployment")
    (daemonset,) = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["sidecar"]
    host_ports = {p["name"]: p["hostPort"] for p in pod["spec"]["containers"][0]["ports"] if "hostPort" in p}
    assert host_ports == {"api": 3500, "outbound": 15001, "dns": 8600}


@pytest.mark.parametrize("values", sorted(VALUES))
def test_rendered_config_passes_sidecar_validate(helm: Path, values: str, tmp_path: Path) -> None:
    # the chart's certificate paths exist only in a pod: point them at real files made here
    init_ca(tmp_path / "ca", "mesh.local")
    leaf = issue("payment-service", tmp_path / "ca")
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    docs = template(helm, *VALUES[values], "--set", f"config.tls.ca={tmp_path / 'ca' / 'ca.pem'}",
                    "--set", f"config.tls.cert={leaf.cert}", "--set", f"config.tls.key={leaf.key}",
                    *(["--set", f"config.admin.token_file={token}"] if values == "prod" else []))
    path = tmp_path / "sidecar.yaml"
    path.write_text(by_kind(docs, "ConfigMap")[0]["data"]["sidecar.yaml"])
    key = subprocess.run([sys.executable, "-m", "sidecar", "keys", "generate"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": "payments-sidecar-7d9f8-x2x7q", "POD_IP": "10.1.2.3",
           "NODE_NAME": "worker-1", "GOSSIP_KEY": key}
    done = subprocess.run([sys.executable, "-m", "sidecar", "validate", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("replicaCount=abc", "replicaCount: Invalid type. Expected: integer, given: string"),
    ("mode=mesh", 'mode: mode must be one of the following: "sidecar", "daemonset"'),
    ("config.admin.listen=9901", "config.admin.listen: Invalid type. Expected: string, given: integer"),
    ("config.gossip.profile=fast", "config.gossip.profile: config.gossip.profile must be one of the following"),
    ("autoscaling.enabled=yes", "autoscaling.enabled: Invalid type. Expected: boolean, given: string"),
    ("config.node.colour=red", "Additional property colour is not allowed"),
    ("config.overload.enabled=maybe", "config.overload.enabled: Invalid type. Expected: boolean, given: string"),
    ("config.reload.history=0", "config.reload.history: Must be greater than or equal to 1"),
    ("sidecar.native=yes", "sidecar.native: sidecar.native must be one of the following"),
])
def test_schema_refuses_wrong_values(helm: Path, setting: str, message: str) -> None:
    done = run_helm(helm, "template", "payments", str(CHART), "--set", setting)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr
