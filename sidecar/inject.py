"""``sidecar inject``: add the sidecar to Kubernetes workload manifests, as ``linkerd inject`` does.

Pure: manifest documents in (parsed YAML), documents out, and one line per workload saying what was done;
no I/O. ``sidecar.cli.inject`` reads the files and prints.

For each Deployment, StatefulSet, DaemonSet, Job and CronJob (whose pod template is under
``spec.jobTemplate.spec.template``), and for the items of a ``List``:

- a ConfigMap ``<workload>-sidecar`` with the sidecar's YAML config, placed before the workload so that
  ``kubectl apply`` creates it first. The config is the chart's, derived from the workload: the service name
  from the pod's ``app.kubernetes.io/name`` or ``app`` label (else the workload's name), its port from the first
  ``containerPort``, its health check from that container's HTTP readiness probe (else a TCP check). A pod
  with no port (a Job, a client) registers no service and only calls out.
- in the pod template: the sidecar container, as a native sidecar by default (first in ``initContainers``,
  ``restartPolicy: Always``, a startup probe on ``/ready``: the kubelet starts every later container once the
  mesh is up, and stops the sidecar after them, so Jobs finish), or, for clusters before 1.29, first in
  ``containers`` with a postStart that waits for ``/ready`` and a preStop that drains and outlives the app;
  one volume with the config and the certificates from the Secret ``<service>-sidecar-tls`` (``ca.crt``,
  ``tls.crt``, ``tls.key``: cert-manager's layout); ``HTTP_PROXY`` and ``SIDECAR_API`` for the other
  containers; the mesh label the chart's NetworkPolicy admits; an annotation marking the pod as injected.

Everything else passes through unchanged. A workload already injected (the annotation, or a container named
``sidecar``) or opted out (``sidecar.mesh/inject: disabled`` on the pod or the workload) is left as it is, so
injecting twice gives what injecting once gives.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from sidecar import __version__
from sidecar.config.model import dns_label

# where each kind keeps its pod template
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# pods that run to completion: a regular sidecar container would keep them running forever
RUN_TO_COMPLETION = frozenset({"Job", "CronJob"})

INJECTED_ANNOTATION = "sidecar.mesh/injected"       # the version that injected the pod
INJECT_ANNOTATION = "sidecar.mesh/inject"           # "disabled": leave this workload alone
MESH_LABEL = "sidecar.mesh/member"                  # the chart's NetworkPolicy admits pods with it
CONFIG_CHECKSUM_ANNOTATION = "checksum/sidecar-config"

CONTAINER_NAME = "sidecar"
CONFIG_PATH = "/etc/sidecar/sidecar.yaml"
DATA_DIR = "/var/lib/sidecar"
VOLUME_CONFIG = "sidecar-config"
VOLUME_DATA = "sidecar-data"
VOLUME_TMP = "sidecar-tmp"

# the chart's listeners; inbound and gossip are on the pod's address, the rest on loopback
ADMIN_PORT = 9901
API_PORT = 3500
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
DNS_PORT = 8600
GOSSIP_PORT = 7946
SIDECAR_PORTS = {ADMIN_PORT: "admin", API_PORT: "api", OUTBOUND_PORT: "outbound", INBOUND_PORT: "inbound",
                 DNS_PORT: "dns", GOSSIP_PORT: "gossip"}
PORT_NAMES = ("sidecar-admin", "sidecar-inbound", "gossip-tcp", "gossip-udp")

# the sidecar's SIGTERM drain has a 20 s deadline (sidecar.app.SHUTDOWN_DEADLINE); a regular sidecar's preStop
# waits this long after draining so that it outlives the app's own shutdown
DRAIN_SLEEP_SECONDS = 20
STARTUP_SECONDS = 120
MEMORY_LIMIT = "256Mi"
MAX_MEMORY_BYTES = 214748364   # 80% of the limit: shed load before the OOM kill (as the chart)

DEFAULT_IMAGE = f"sidecar:{__version__}"
# a headless Service named sidecar-gossip in the pod's namespace, selecting the mesh label (docs/kubernetes.md)
DEFAULT_JOIN = f"sidecar-gossip.${{POD_NAMESPACE}}.svc.cluster.local:{GOSSIP_PORT}"


class InjectError(Exception):
    """A manifest that cannot be injected; the message names the document and what is wrong."""


@dataclass(frozen=True, slots=True)
class InjectOptions:
    image: str = DEFAULT_IMAGE
    # native sidecar containers need Kubernetes 1.29+; False: a regular container, for older clusters
    native: bool = True
    # the service name for every workload; None: each workload's own (labels, then name)
    service: str | None = None
    join: tuple[str, ...] = (DEFAULT_JOIN,)
    cluster: str = "default"
    trust_domain: str = "mesh.local"


@dataclass(frozen=True, slots=True)
class InjectResult:
    documents: list[Any]
    # one line per workload met: "deployment/web injected", "job/report skipped (already injected)"
    report: list[str] = field(default_factory=list)


def inject(documents: list[Any], options: InjectOptions) -> InjectResult:
    """The documents with the sidecar added to every workload; raises InjectError on a malformed one."""
    out: list[Any] = []
    report: list[str] = []
    for index, document in enumerate(documents, start=1):
        out.extend(_inject_document(document, f"document {index}", options, report))
    return InjectResult(out, report)


def _inject_document(document: Any, where: str, options: InjectOptions, report: list[str]) -> list[Any]:
    if document is None:   # an empty document between two "---"
        return []
    if not isinstance(document, dict):
        raise InjectError(f"{where}: not a Kubernetes object (a {type(document).__name__}, not a mapping)")
    kind = document.get("kind")
    if kind == "List" and isinstance(document.get("items"), list):
        result = dict(document)
        items: list[Any] = []
        for number, item in enumerate(document["items"], start=1):
            items.extend(_inject_document(item, f"{where}, item {number}", options, report))
        result["items"] = items
        return [result]
    if kind not in POD_TEMPLATE_PATHS:
        return [document]
    return _inject_workload(document, kind, where, options, report)


def _inject_workload(workload: dict[str, Any], kind: str, where: str, options: InjectOptions,
                     report: list[str]) -> list[Any]:
    metadata = workload.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise InjectError(f"{where} ({kind}): metadata.name is missing")
    label = f"{kind.lower()}/{name}"
    where = f"{where} ({kind} {name})"
    path = POD_TEMPLATE_PATHS[kind]
    template = _get(workload, path)
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not (isinstance(template, dict) and isinstance(pod_spec, dict) and isinstance(containers, list)
            and containers and all(isinstance(c, dict) for c in containers)):
        raise InjectError(f"{where}: no pod template with containers at {'.'.join(path)}.spec.containers")

    skip = _skip_reason(workload, template, pod_spec)
    if skip:
        report.append(f"{label} skipped ({skip})")
        return [workload]
    if not options.native and kind in RUN_TO_COMPLETION:
        raise InjectError(f"{where}: a regular sidecar container would keep its pods from ever completing; "
                          "a Job needs a native sidecar (Kubernetes 1.29+), so leave out --no-native-sidecar")

    service = options.service or _service_name(template, name)
    # it names the Secret and the SPIFFE ID too: Kubernetes names are lower case
    problem = dns_label(service) if service == service.lower() else "must be lower case"
    if problem:
        raise InjectError(f"{where}: service name {service!r} {problem}; name it with --service")
    _check_no_clash(pod_spec, where)
    app_container, app_port = _app_port(containers)
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None

    config = sidecar_config(service, app_port, _health_check(app_container, app_port), options)
    config_text = yaml.safe_dump(config, sort_keys=False)
    config_map_name = f"{name}-sidecar"
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name, **({"namespace": namespace} if namespace else {}),
                     "labels": {MESH_LABEL: "true"}},
        "data": {"sidecar.yaml": config_text},
    }

    result = copy.deepcopy(workload)
    template = _get(result, path)
    pod_spec = template["spec"]
    template_metadata = template.setdefault("metadata", {})
    template_metadata.setdefault("labels", {})[MESH_LABEL] = "true"
    annotations = template_metadata.setdefault("annotations", {})
    annotations[INJECTED_ANNOTATION] = __version__
    # a changed config changes the pod template, so re-applying rolls the pods
    annotations[CONFIG_CHECKSUM_ANNOTATION] = hashlib.sha256(config_text.encode()).hexdigest()

    proxy_env = [{"name": "HTTP_PROXY", "value": f"http://127.0.0.1:{OUTBOUND_PORT}"},
                 {"name": "SIDECAR_API", "value": f"http://127.0.0.1:{API_PORT}"}]
    if options.native:
        # the init containers after the sidecar start with the mesh up: they get the env too
        for container in pod_spec.get("initContainers") or []:
            _add_env(container, proxy_env)
    for container in pod_spec["containers"]:
        _add_env(container, proxy_env)

    sidecar = sidecar_container(options)
    if options.native:
        # first: the kubelet starts init containers in order, each once the previous one has started
        init = [sidecar, *(pod_spec.get("initContainers") or [])]
        if "initContainers" in pod_spec:
            pod_spec["initContainers"] = init
        else:   # written just before the containers: the manifest reads in the order they start
            ordered: dict[str, Any] = {}
            for key, value in pod_spec.items():
                if key == "containers":
                    ordered["initContainers"] = init
                ordered[key] = value
            template["spec"] = pod_spec = ordered
    else:
        # first: the kubelet starts regular containers in order, each after the previous postStart returned
        pod_spec["containers"] = [sidecar, *pod_spec["containers"]]
    pod_spec["volumes"] = [*(pod_spec.get("volumes") or []),
                           *sidecar_volumes(config_map_name, f"{service}-sidecar-tls")]
    report.append(f"{label} injected (service {service}"
                  + (f", port {app_port})" if app_port else ", no port: outbound only)"))
    return [config_map, result]


def sidecar_config(service: str, app_port: int | None, check: dict[str, Any], options: InjectOptions
                   ) -> dict[str, Any]:
    """The sidecar's YAML config for one pod, as the chart renders it."""
    services = [{"name": service, "port": app_port, "check": check}] if app_port else []
    return {
        "node": {"name": "${POD_NAME}", "cluster": options.cluster, "data_dir": DATA_DIR},
        # 0.0.0.0 so the kubelet's probes reach /ready and /healthz; mutations are taken from loopback only
        "admin": {"listen": f"0.0.0.0:{ADMIN_PORT}"},
        "api": {"listen": f"127.0.0.1:{API_PORT}"},
        "outbound": {"listen": f"127.0.0.1:{OUTBOUND_PORT}"},
        "inbound": {"listen": f"0.0.0.0:{INBOUND_PORT}"},
        "dns": {"listen": f"127.0.0.1:{DNS_PORT}"},
        "gossip": {"listen": f"0.0.0.0:{GOSSIP_PORT}", "advertise": f"${{POD_IP}}:{GOSSIP_PORT}",
                   "join": list(options.join)},
        "tls": {"trust_domain": options.trust_domain, "ca": "/etc/sidecar/tls/ca.crt",
                "cert": "/etc/sidecar/tls/tls.crt", "key": "/etc/sidecar/tls/tls.key"},
        "services": services,
        "logging": {"level": "info", "format": "json"},
        "overload": {"max_memory_bytes": MAX_MEMORY_BYTES},
    }


def sidecar_container(options: InjectOptions) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "args": ["run", "-c", CONFIG_PATH],
        "env": [{"name": env, "valueFrom": {"fieldRef": {"fieldPath": path}}} for env, path in (
            ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"), ("NODE_NAME", "spec.nodeName"))],
        "ports": [{"name": "sidecar-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
                  {"name": "sidecar-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
                  {"name": "gossip-tcp", "containerPort": GOSSIP_PORT, "protocol": "TCP"},
                  {"name": "gossip-udp", "containerPort": GOSSIP_PORT, "protocol": "UDP"}],
    }
    if options.native:
        container["restartPolicy"] = "Always"
        # "started", which the next container waits for, is this passing: listeners up and gossip joined
        container["startupProbe"] = {"httpGet": {"path": "/ready", "port": ADMIN_PORT},
                                     "periodSeconds": 1, "failureThreshold": STARTUP_SECONDS}
    else:
        container["startupProbe"] = {"httpGet": {"path": "/healthz", "port": ADMIN_PORT},
                                     "periodSeconds": 1, "failureThreshold": 30}
    container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": ADMIN_PORT},
                                   "periodSeconds": 5, "failureThreshold": 2}
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": ADMIN_PORT},
                                  "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    if not options.native:
        container["lifecycle"] = {
            "postStart": {"exec": {"command": ["sidecar", "wait-ready", "--admin", f"http://127.0.0.1:{ADMIN_PORT}",
                                               "--timeout", str(STARTUP_SECONDS)]}},
            # drain (peers stop sending), then stay up while the app, which got SIGTERM too, finishes
            "preStop": {"exec": {"command": ["python", "-c", _DRAIN_SCRIPT]}},
        }
    container["securityContext"] = {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "runAsUser": 10001, "runAsGroup": 10001, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["resources"] = {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": MEMORY_LIMIT}}
    container["volumeMounts"] = [{"name": VOLUME_CONFIG, "mountPath": "/etc/sidecar", "readOnly": True},
                                 {"name": VOLUME_DATA, "mountPath": DATA_DIR},
                                 {"name": VOLUME_TMP, "mountPath": "/tmp"}]
    return container


_DRAIN_SCRIPT = f"""import time, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:{ADMIN_PORT}/drain", method="POST"), timeout=5)
except Exception as error:
    print("drain:", error)
time.sleep({DRAIN_SLEEP_SECONDS})
"""


def sidecar_volumes(config_map: str, tls_secret: str) -> list[dict[str, Any]]:
    return [
        # one projected volume, no subPath: it follows Secret rotation and the sidecar re-reads certificates.
        # 0444: the pod may set no fsGroup, and only the sidecar container mounts this volume
        {"name": VOLUME_CONFIG, "projected": {"defaultMode": 0o444, "sources": [
            {"configMap": {"name": config_map, "items": [{"key": "sidecar.yaml", "path": "sidecar.yaml"}]}},
            {"secret": {"name": tls_secret, "items": [{"key": "ca.crt", "path": "tls/ca.crt"},
                                                      {"key": "tls.crt", "path": "tls/tls.crt"},
                                                      {"key": "tls.key", "path": "tls/tls.key"}]}},
        ]}},
        {"name": VOLUME_DATA, "emptyDir": {}},
        {"name": VOLUME_TMP, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def _get(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = document
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _annotation(obj: Any, key: str) -> Any:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations.get(key) if isinstance(annotations, dict) else None


def _skip_reason(workload: dict[str, Any], template: dict[str, Any], pod_spec: dict[str, Any]) -> str | None:
    if _annotation(template, INJECTED_ANNOTATION) is not None:
        return "already injected"
    names = [c.get("name") for c in [*pod_spec["containers"], *(pod_spec.get("initContainers") or [])]
             if isinstance(c, dict)]
    if CONTAINER_NAME in names:
        return f"already has a container named {CONTAINER_NAME}"
    if "disabled" in (_annotation(template, INJECT_ANNOTATION), _annotation(workload, INJECT_ANNOTATION)):
        return f"{INJECT_ANNOTATION}: disabled"
    return None


def _service_name(template: dict[str, Any], workload_name: str) -> str:
    metadata = template.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if isinstance(labels, dict):
        for key in ("app.kubernetes.io/name", "app"):
            if isinstance(labels.get(key), str) and labels[key]:
                return str(labels[key])
    return workload_name


def _app_port(containers: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int | None]:
    """The first container with a TCP containerPort, and that port."""
    for container in containers:
        for port in container.get("ports") or []:
            if isinstance(port, dict) and port.get("protocol", "TCP") == "TCP":
                number = port.get("containerPort")
                if isinstance(number, int) and not isinstance(number, bool):
                    return container, number
    return None, None


def _health_check(container: dict[str, Any] | None, port: int | None) -> dict[str, Any]:
    """The app's HTTP readiness probe on its port as the sidecar's check (200 = healthy); else TCP."""
    check: dict[str, Any] = {"tcp": True}
    probe = container.get("readinessProbe") if container else None
    http = probe.get("httpGet") if isinstance(probe, dict) else None
    if container and isinstance(http, dict) and isinstance(http.get("path"), str):
        names = {p.get("name"): p.get("containerPort") for p in container.get("ports") or [] if isinstance(p, dict)}
        probe_port = http.get("port")
        if probe_port == port or names.get(probe_port) == port:
            check = {"http": http["path"]}
    return {**check, "interval": "5s", "timeout": "1s", "deregister_after": "1m"}


def _check_no_clash(pod_spec: dict[str, Any], where: str) -> None:
    """Containers of a pod share its network and volumes: the sidecar's ports and names must be free."""
    containers = [c for c in [*pod_spec["containers"], *(pod_spec.get("initContainers") or [])]
                  if isinstance(c, dict)]
    for container in containers:
        for port in container.get("ports") or []:
            if not isinstance(port, dict):
                continue
            number, port_name = port.get("containerPort"), port.get("name")
            if number in SIDECAR_PORTS:
                raise InjectError(f"{where}: container {container.get('name')} uses port {number}, which the "
                                  f"sidecar's {SIDECAR_PORTS[number]} listener needs")
            if port_name in PORT_NAMES:
                raise InjectError(f"{where}: container {container.get('name')} has a port named {port_name}, "
                                  "which the sidecar's container uses")
    for volume in pod_spec.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("name") in (VOLUME_CONFIG, VOLUME_DATA, VOLUME_TMP):
            raise InjectError(f"{where}: the pod already has a volume named {volume['name']}")


def _add_env(container: Any, env: list[dict[str, Any]]) -> None:
    """Add the variables the container does not set itself (its own value wins)."""
    if not isinstance(container, dict):
        return
    current = container.get("env") or []
    have = {e.get("name") for e in current if isinstance(e, dict)}
    container["env"] = [*current, *(copy.deepcopy(e) for e in env if e["name"] not in have)]
