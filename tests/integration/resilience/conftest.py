"""Several sidecar data planes in one event loop with real mTLS (the mesh tests' helpers), backend instances in
their own process (``backend.py``), and blocking clients in the test thread.

A :class:`Cluster` is one caller node (the sidecar whose outbound listener the test's client uses) and one
node per destination instance, each registering the service on one backend port; the caller learns them by
hand, as gossip would tell it.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from sidecar.config.model import PolicyConfig, ServiceConfig
from tests.harness import ROOT
from tests.integration.mesh.conftest import LoopThread, Node, Pki, link, node_config, start_node, stop_node

BACKENDS = 8


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    ports: list[int]

    def get(self, index: int, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[index], timeout=10)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def control(self, index: int, **settings: str | int) -> None:
        query = "&".join(f"{k}={v}" for k, v in settings.items())
        self.get(index, f"/_control?{query}")

    def stats(self, index: int) -> dict[str, Any]:
        result: dict[str, Any] = self.get(index, "/_stats")
        return result

    def reset(self) -> None:
        for index in range(len(self.ports)):
            self.get(index, "/_reset")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


def start_backend(count: int = BACKENDS) -> Backend:
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.resilience.backend", str(count)], cwd=ROOT,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    timer = threading.Timer(20, process.kill)   # readline blocks until the backend prints, or it is killed
    timer.start()
    try:
        line = process.stdout.readline()
    finally:
        timer.cancel()
    if not line.startswith(b"PORTS "):
        process.kill()
        raise AssertionError(f"the backend did not start: {line!r}")
    return Backend(process, [int(p) for p in line.split()[1:]])


@dataclass
class Cluster:
    loop: LoopThread
    caller: Node
    instances: list[Node]
    service: str
    stopped: list[Node] = field(default_factory=list)

    @property
    def outbound(self) -> int:
        return self.caller.outbound

    def clusters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.loop.call(self.caller.dataplane.clusters_json)
        return result

    def kill(self, node: Node) -> None:
        """The instance's node goes away (its sidecar stops: new connections are refused)."""
        self.loop.run(stop_node(node))
        self.stopped.append(node)

    def close(self) -> None:
        async def stop() -> None:
            for node in [self.caller, *self.instances]:
                if node not in self.stopped:
                    await stop_node(node)

        self.loop.run(stop())


def start_cluster(loop: LoopThread, pki: Pki, backend: Backend, service: str, indexes: list[int],
                  policy: PolicyConfig, *, caller_service: str = "client", seed: int = 1,
                  instance_policy: PolicyConfig | None = None) -> Cluster:
    async def start() -> Cluster:
        nodes = []
        for index in indexes:
            name = f"{service}-{index}"   # the instance's tag too: Host TAG.SERVICE.service.mesh names it alone
            config = node_config(name, pki.tls(service),
                                 services=[ServiceConfig(service, backend.ports[index], tags=[name])])
            if instance_policy is not None:
                config = replace(config, policies={"*": instance_policy})
            nodes.append(await start_node(config))
        config = replace(node_config(f"{caller_service}-caller-{seed}", pki.tls(caller_service)),
                         policies={"*": policy})
        caller = await start_node(config)
        caller.dataplane.resilience.rng = random.Random(seed)   # before any destination exists
        for node in nodes:
            link(caller, node)
        return Cluster(loop, caller, nodes, service)

    return loop.run(start())


# ------------------------------------------------------------------------------------------ clients


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    started: float
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, host: str, path: str = "/work", headers: dict[str, str] | None = None,
            conn: http.client.HTTPConnection | None = None, timeout: float = 10.0) -> Answer:
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, body, {k.lower(): v for k, v in response.getheaders()}, started,
                      time.monotonic() - started)
    finally:
        if own:
            connection.close()


def load(port: int, host: str, count: int, concurrency: int, path: str = "/work",
         on_progress: Any = None) -> list[Answer]:
    """``count`` GETs over ``concurrency`` keep-alive connections; every answer, in completion order."""
    answers: list[Answer] = []
    lock = threading.Lock()
    counter = iter(range(count))

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                try:
                    answer = request(port, host, path, conn=conn)
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                    answer = Answer(0, repr(e).encode(), {}, time.monotonic(), 0.0)
                with lock:
                    answers.append(answer)
                    done = len(answers)
                if on_progress is not None:
                    on_progress(done)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a load thread hung"
    return answers


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"), "client", "echo", "relay", "leaf")


@pytest.fixture(scope="module")
def backend_module() -> Iterator[Backend]:
    started = start_backend()
    yield started
    started.stop()


@pytest.fixture
def backend(backend_module: Backend) -> Backend:
    backend_module.reset()
    return backend_module
