"""Two real sidecars in a row, for the HTTP/2 tests: clients on A's outbound listener reach the service web
behind B (HTTP/1.1 over mTLS between them).

    client --> A (node-a, caller checkout, outbound) --HTTP/1.1 + mTLS--> B (node-b, inbound) --> web app
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import SidecarProcess, free_port, http, make_certs, wait_for
from tests.integration.grpc.mesh import launch, tls_for


class Pair:
    def __init__(self, a: SidecarProcess, b: SidecarProcess, upstream_port: int) -> None:
        self.a = a
        self.b = b
        self.upstream_port = upstream_port   # node-a's `upstreams` port for web

    @property
    def outbound(self) -> str:
        return self.a.listeners["outbound"]

    @property
    def port(self) -> int:
        return int(self.outbound.rsplit(":", 1)[1])


@contextmanager
def run_pair(tmp: Path, app_port: int, authorization: dict[str, Any] | None = None) -> Iterator[Pair]:
    """A and B started, with web (on ``app_port``) healthy as A sees it; both killed on exit."""
    certs = make_certs(tmp / "certs", ["checkout", "web"])
    processes: list[SidecarProcess] = []
    try:
        b_config: dict[str, Any] = {"node": {"name": "node-b", "cluster": "h2"}, "tls": tls_for(certs, "web"),
                                    "services": [{"name": "web", "port": app_port}]}
        if authorization is not None:
            b_config["authorization"] = authorization
        b = launch(SidecarProcess(tmp, b_config, name="node-b"))
        processes.append(b)
        upstream_port = free_port()
        a = launch(SidecarProcess(tmp, {"node": {"name": "node-a", "cluster": "h2"}, "tls": certs["checkout"],
                                        "upstreams": [{"service": "web", "local_port": upstream_port}],
                                        "gossip": {"profile": "local", "join": [b.listeners["gossip"]]}},
                                  name="node-a"))
        processes.append(a)

        def healthy() -> int:
            return sum(1 for i in http("GET", f"{a.api}/v1/catalog/web").json() if i["status"] == "healthy")

        wait_for(lambda: healthy() == 1, 30, what="node-a sees web healthy")
        yield Pair(a, b, upstream_port)
    finally:
        for process in processes:
            process.kill()
