"""``sidecar inject FILE|-``: read Kubernetes manifests, print them with the sidecar added (``sidecar.inject``).

    sidecar inject deploy.yaml | kubectl apply -f -
    kubectl get deploy web -o yaml | sidecar inject - | kubectl apply -f -

The manifests go to stdout, one line per workload to stderr (``deployment/web injected ...``), as
``linkerd inject`` does. Exit codes: 0 done, 2 bad usage or a manifest that cannot be injected (not YAML,
a workload without a pod template, a port the sidecar needs): one line on stderr, nothing on stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from sidecar.cli.errors import UsageError
from sidecar.inject import DEFAULT_IMAGE, DEFAULT_JOIN, InjectError, InjectOptions, inject


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "inject", help="add the sidecar to Deployments, StatefulSets, DaemonSets, Jobs and CronJobs in manifests")
    parser.add_argument("file", metavar="FILE|-", help="a YAML file of one or more documents; - reads stdin")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"the sidecar's image (default {DEFAULT_IMAGE})")
    parser.add_argument("--service", default=None,
                        help="the service name (default: the pod's app.kubernetes.io/name or app label, else "
                             "the workload's name); its certificate is the Secret SERVICE-sidecar-tls")
    parser.add_argument("--no-native-sidecar", dest="native", action="store_false",
                        help="a regular container instead of a native sidecar, for clusters before Kubernetes "
                             "1.29 (not for Jobs and CronJobs: their pods would never complete)")
    parser.add_argument("--join", action="append", default=None, metavar="HOST:PORT",
                        help=f"gossip seeds, repeatable (default {DEFAULT_JOIN})")
    parser.add_argument("--cluster", default="default", help="node.cluster of the injected sidecars")
    parser.add_argument("--trust-domain", default="mesh.local", help="tls.trust_domain (default mesh.local)")


def run(args: argparse.Namespace) -> int:
    options = InjectOptions(image=args.image, native=args.native, service=args.service,
                            join=tuple(args.join) if args.join else (DEFAULT_JOIN,),
                            cluster=args.cluster, trust_domain=args.trust_domain)
    source = "stdin" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else _read(args.file)
        documents = list(yaml.safe_load_all(text))
    except OSError as e:
        raise UsageError(f"inject: cannot read {source}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"inject: {source} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"inject: {source} is not YAML{where}: {problem}") from None
    try:
        result = inject(documents, options)
    except InjectError as e:
        raise UsageError(f"inject: {source}: {e}") from None
    sys.stdout.write(yaml.dump_all(result.documents, Dumper=_Dumper, sort_keys=False, explicit_start=True))
    for line in result.report:
        print(line, file=sys.stderr)
    return 0


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded sidecar.yaml) as literal blocks, readable in the manifest."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
