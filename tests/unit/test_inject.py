"""sidecar.inject: the pure manifest transformation (documents in, documents out)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from sidecar import __version__
from sidecar.inject import (
    DEFAULT_JOIN,
    INJECTED_ANNOTATION,
    POD_TEMPLATE_PATHS,
    InjectError,
    InjectOptions,
    inject,
)

NATIVE = InjectOptions()
LEGACY = InjectOptions(native=False)


def pod_template(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", [{"name": "app", "image": "shop/web:1.2", "ports": [
        {"name": "http", "containerPort": 8080}]}])
    return {"metadata": {"labels": labels if labels is not None else {"app": "web"}},
            "spec": {"containers": containers, **spec}}


def workload(kind: str, name: str = "web", template: dict[str, Any] | None = None) -> dict[str, Any]:
    template = template or pod_template()
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    spec: dict[str, Any]
    if kind == "CronJob":
        spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        spec = {"template": template}
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def pod_of(document: dict[str, Any]) -> dict[str, Any]:
    node: Any = document
    for key in POD_TEMPLATE_PATHS[document["kind"]]:
        node = node[key]
    assert isinstance(node, dict)
    return node


def names(containers: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in containers]


def config_of(config_map: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(config_map["data"]["sidecar.yaml"])
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("kind", sorted(POD_TEMPLATE_PATHS))
def test_native_sidecar_is_the_first_init_container_of_every_kind(kind: str) -> None:
    result = inject([workload(kind)], NATIVE)
    config_map, injected = result.documents   # the ConfigMap first: kubectl apply creates it before the pods
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"] == {
        "name": "web-sidecar", "namespace": "shop", "labels": {"sidecar.mesh/member": "true"}}
    pod = pod_of(injected)
    spec = pod["spec"]
    assert names(spec["initContainers"]) == ["sidecar"] and names(spec["containers"]) == ["app"]
    assert list(spec).index("initContainers") < list(spec).index("containers")   # reads in start order
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == f"sidecar:{__version__}"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/ready", "port": 9901}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9901}
    assert "lifecycle" not in sidecar   # the kubelet stops it after the app; SIGTERM drains and leaves
    assert pod["metadata"]["labels"]["sidecar.mesh/member"] == "true"
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == __version__
    app = spec["containers"][0]
    assert {e["name"]: e["value"] for e in app["env"]} == {"HTTP_PROXY": "http://127.0.0.1:15001",
                                                           "SIDECAR_API": "http://127.0.0.1:3500"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = volumes["sidecar-config"]["projected"]["sources"]
    assert sources[0]["configMap"]["name"] == "web-sidecar"
    assert sources[1]["secret"]["name"] == "web-sidecar-tls"
    assert {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]} == {
        "sidecar-config": "/etc/sidecar", "sidecar-data": "/var/lib/sidecar", "sidecar-tmp": "/tmp"}
    assert result.report == [f"{kind.lower()}/web injected (service web, port 8080)"]


def test_config_is_derived_from_the_workload() -> None:
    template = pod_template(labels={"app.kubernetes.io/name": "payments", "app": "other"}, containers=[
        {"name": "app", "image": "x", "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "UDP"},
                                                {"name": "http", "containerPort": 3000}],
         "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}}])
    config_map, _ = inject([workload("Deployment", template=template)], NATIVE).documents
    config = config_of(config_map)
    assert config["services"] == [{"name": "payments", "port": 3000, "check": {
        "http": "/health", "interval": "5s", "timeout": "1s", "deregister_after": "1m"}}]
    assert config["node"] == {"name": "${POD_NAME}", "cluster": "default", "data_dir": "/var/lib/sidecar"}
    assert config["gossip"]["join"] == [DEFAULT_JOIN]
    assert config["gossip"]["advertise"] == "${POD_IP}:7946"
    assert config["tls"]["cert"] == "/etc/sidecar/tls/tls.crt"


@pytest.mark.parametrize(("labels", "probe", "service", "check"), [
    ({"app": "web"}, {"tcpSocket": {"port": 8080}}, "web", {"tcp": True}),
    ({}, {"httpGet": {"path": "/health", "port": 8080}}, "api", {"http": "/health"}),
    ({"app": "web"}, {"httpGet": {"path": "/health", "port": 9999}}, "web", {"tcp": True}),   # another port
])
def test_service_name_and_check(labels: dict[str, str], probe: dict[str, Any], service: str,
                                check: dict[str, Any]) -> None:
    template = pod_template(labels=labels, containers=[
        {"name": "app", "image": "x", "ports": [{"containerPort": 8080}], "readinessProbe": probe}])
    config_map, _ = inject([workload("Deployment", name="api", template=template)], NATIVE).documents
    (registered,) = config_of(config_map)["services"]
    assert registered["name"] == service
    assert {k: v for k, v in registered["check"].items() if k in ("http", "tcp")} == check


def test_a_pod_without_a_port_only_calls_out() -> None:
    template = pod_template(containers=[{"name": "report", "image": "x", "command": ["run-report"]}])
    result = inject([workload("Job", name="report", template=template)], NATIVE)
    assert config_of(result.documents[0])["services"] == []
    assert result.report == ["job/report injected (service web, no port: outbound only)"]


def test_options_name_the_service_image_and_mesh() -> None:
    options = InjectOptions(image="registry.example/sidecar:2.0", service="checkout", join=("seed:7946",),
                            cluster="prod", trust_domain="shop.example")
    config_map, injected = inject([workload("StatefulSet")], options).documents
    config = config_of(config_map)
    assert config["services"][0]["name"] == "checkout"
    assert config["gossip"]["join"] == ["seed:7946"]
    assert config["node"]["cluster"] == "prod" and config["tls"]["trust_domain"] == "shop.example"
    spec = pod_of(injected)["spec"]
    assert spec["initContainers"][0]["image"] == "registry.example/sidecar:2.0"
    assert spec["volumes"][0]["projected"]["sources"][1]["secret"]["name"] == "checkout-sidecar-tls"


def test_existing_init_containers_start_after_the_sidecar_and_may_use_it() -> None:
    template = pod_template(initContainers=[{"name": "migrate", "image": "x", "env": [
        {"name": "HTTP_PROXY", "value": "http://corporate:3128"}]}])
    _, injected = inject([workload("Deployment", template=template)], NATIVE).documents
    spec = pod_of(injected)["spec"]
    assert names(spec["initContainers"]) == ["sidecar", "migrate"]
    migrate = spec["initContainers"][1]
    assert "restartPolicy" not in migrate
    # the container's own value wins
    assert {e["name"]: e["value"] for e in migrate["env"]} == {"HTTP_PROXY": "http://corporate:3128",
                                                               "SIDECAR_API": "http://127.0.0.1:3500"}


def test_legacy_sidecar_is_the_first_container_and_holds_the_app() -> None:
    template = pod_template(initContainers=[{"name": "migrate", "image": "x"}])
    _, injected = inject([workload("Deployment", template=template)], LEGACY).documents
    spec = pod_of(injected)["spec"]
    assert names(spec["initContainers"]) == ["migrate"]   # they run before any regular container
    assert "env" not in spec["initContainers"][0]         # ... so the sidecar is not there yet
    assert names(spec["containers"]) == ["sidecar", "app"]
    sidecar = spec["containers"][0]
    assert "restartPolicy" not in sidecar
    assert sidecar["lifecycle"]["postStart"]["exec"]["command"] == [
        "sidecar", "wait-ready", "--admin", "http://127.0.0.1:9901", "--timeout", "120"]
    drain = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:2] == ["python", "-c"]
    assert "http://127.0.0.1:9901/drain" in drain[2] and "time.sleep(20)" in drain[2]


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_legacy_sidecar_is_refused_for_pods_that_must_complete(kind: str) -> None:
    with pytest.raises(InjectError, match=rf"document 1 \({kind} web\): a regular sidecar container would keep"):
        inject([workload(kind)], LEGACY)


def test_injecting_twice_is_injecting_once() -> None:
    documents = [workload(kind, name=kind.lower()) for kind in sorted(POD_TEMPLATE_PATHS)]
    once = inject(documents, NATIVE)
    twice = inject(once.documents, NATIVE)
    assert twice.documents == once.documents
    assert twice.report == [f"{kind.lower()}/{kind.lower()} skipped (already injected)"
                            for kind in sorted(POD_TEMPLATE_PATHS)]
    legacy = inject([workload("Deployment")], LEGACY).documents
    assert inject(legacy, LEGACY).documents == legacy


def test_skips_workloads_opted_out_or_with_a_sidecar_container() -> None:
    opted_out = workload("Deployment", name="a")
    opted_out["metadata"]["annotations"] = {"sidecar.mesh/inject": "disabled"}
    own = workload("Deployment", name="b", template=pod_template(containers=[{"name": "sidecar", "image": "x"}]))
    result = inject([opted_out, own], NATIVE)
    assert result.documents == [opted_out, own]
    assert result.report == ["deployment/a skipped (sidecar.mesh/inject: disabled)",
                             "deployment/b skipped (already has a container named sidecar)"]


def test_other_documents_pass_through_and_the_input_is_not_changed() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    deployment = workload("Deployment")
    before = copy.deepcopy([service, deployment])
    result = inject([service, None, deployment], NATIVE)
    assert [d["kind"] for d in result.documents] == ["Service", "ConfigMap", "Deployment"]
    assert result.documents[0] == service
    assert [service, deployment] == before


def test_list_items_are_injected() -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment"), workload("DaemonSet", "node")]}
    (result,) = inject([listing], NATIVE).documents
    assert [item["kind"] for item in result["items"]] == ["ConfigMap", "Deployment", "ConfigMap", "DaemonSet"]


@pytest.mark.parametrize(("document", "message"), [
    ("text", r"document 1: not a Kubernetes object \(a str, not a mapping\)"),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {}},
     r"document 1 \(Deployment web\): no pod template with containers at spec.template.spec.containers"),
    ({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"template": {}}},
     r"no pod template with containers at spec.jobTemplate.spec.template.spec.containers"),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}, r"document 1 \(Deployment\): metadata.name is"),
    (workload("Deployment", template=pod_template(containers=[{"name": "app", "ports": [{"containerPort": 9901}]}])),
     r"container app uses port 9901, which the sidecar's admin listener needs"),
    (workload("Deployment", template=pod_template(labels={"app": "web_app"})),
     r"service name 'web_app' must be a DNS label.*; name it with --service"),
    (workload("Deployment", template=pod_template(labels={"app": "Web"})),
     r"service name 'Web' must be lower case; name it with --service"),
    (workload("Deployment", template=pod_template(volumes=[{"name": "sidecar-data", "emptyDir": {}}])),
     r"the pod already has a volume named sidecar-data"),
])
def test_malformed_workloads_are_refused_with_the_reason(document: Any, message: str) -> None:
    with pytest.raises(InjectError, match=message):
        inject([document], NATIVE)
