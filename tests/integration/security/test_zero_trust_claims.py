"""Zero trust between members, against real sidecar processes with real certificates (SPEC: Identity).

* A member with a valid certificate for ``intruder`` registers ``payments`` through its app API: callers'
  requests for ``payments`` (bodies included) must never reach the intruder's app.
* A holder of the gossip key without any certificate gossips forged catalog states for the node that really
  runs ``payments`` (unhealthy, or no instances, at a version far ahead), over and over: callers must keep
  seeing ``payments`` healthy and keep reaching it.

The forger is the project's own gossip member (real UDP and TCP, the cluster's key) in this process; it speaks
both catalog wire forms, the one-state-per-node form of earlier releases and the per-service claim, so it
attacks whichever the sidecars speak.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config.model import GOSSIP_PROFILES
from sidecar.config.values import HostPort
from sidecar.gossip.node import GossipNode
from tests.harness import FakeApp, SidecarProcess, http, make_certs, members_by_state, wait_for

BODY = b'{"amount": 4200, "card": "4111 1111 1111 1111"}'


@pytest.fixture
def gossip_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, dict[str, str]]:
    return make_certs(tmp_path / "certs", ["payments", "intruder", "checkout"])


def start(tmp: Path, name: str, tls: dict[str, str], key: str, services: list[dict[str, Any]],
          join: list[str] | None = None) -> SidecarProcess:
    config: dict[str, Any] = {"node": {"cluster": "prod"}, "tls": tls, "services": services,
                              "gossip": {"encrypt_keys": [key], "join": join or []}}
    return SidecarProcess(tmp, config, name=name).start()


def catalog(process: SidecarProcess, service: str) -> list[dict[str, Any]]:
    reply = http("GET", f"{process.api}/v1/catalog/{service}")
    return reply.json() if reply.status == 200 else []


def pay(caller: SidecarProcess) -> tuple[int, dict[str, Any]]:
    reply = http("POST", f"http://{caller.listeners['outbound']}/charge", BODY,
                 headers={"Host": "payments", "Content-Type": "application/json"}, timeout=10)
    return reply.status, reply.json()


@pytest.fixture
def stopper() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for process in reversed(started):
        process.kill()


def test_a_member_with_a_certificate_for_another_service_cannot_take_payments_traffic(
        tmp_path: Path, pki: dict[str, dict[str, str]], gossip_key: str, stopper: list[SidecarProcess]) -> None:
    with FakeApp("real") as real_app, FakeApp("intruder") as intruder_app:
        real = start(tmp_path, "node-real", pki["payments"], gossip_key,
                     [{"name": "payments", "port": real_app.port}])
        stopper.append(real)
        seed = [real.listeners["gossip"]]
        intruder = start(tmp_path, "node-intruder", pki["intruder"], gossip_key,
                         [{"name": "intruder", "port": intruder_app.port}], join=seed)
        stopper.append(intruder)
        caller = start(tmp_path, "node-caller", pki["checkout"], gossip_key, [], join=seed)
        stopper.append(caller)
        wait_for(lambda: members_by_state(caller).get("node-intruder") == "alive", 20, what="intruder joined")

        # the intruder's app registers payments with its own sidecar, then one more instance of its own service:
        # once the caller sees that one, it has heard everything the intruder said before it
        for name, port in (("payments", intruder_app.port), ("intruder", intruder_app.port + 1)):
            reply = http("PUT", f"{intruder.api}/v1/services",
                         {"name": name, "version": "6.6.6", "port": port, "host": "127.0.0.1",
                          "tags": ["second"] if name == "intruder" else []})
            assert reply.status == 200, reply
        wait_for(lambda: len(catalog(caller, "intruder")) == 2, 20, what="the intruder's later registration")
        wait_for(lambda: catalog(caller, "payments"), 20, what="payments in the caller's catalog")

        assert [i["node"] for i in catalog(caller, "payments")] == ["node-real"]
        answers = [pay(caller) for _ in range(20)]
        assert [status for status, _ in answers] == [200] * 20, answers
        assert {body["app"] for _, body in answers} == {"real"}
        assert all(body["received"] == len(BODY) for _, body in answers)
        assert not [r for r in intruder_app.requests if r[1] == "/charge"], intruder_app.requests
        assert "not announced" in intruder.log_text()


class Forger:
    """A gossip member with the cluster's key and no certificate, in a thread of its own."""

    def __init__(self, key: str, seed: str, forge: Callable[[int], list[bytes]]) -> None:
        self.key = key
        self.seed = HostPort.from_text(seed)
        self.forge = forge
        self.round = 0
        self.payload = forge(0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node: GossipNode | None = None

    def run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def join(self) -> None:
        async def go() -> None:
            turn = iter(range(10**9))
            self.node = GossipNode("forger", GOSSIP_PROFILES["local"], HostPort("127.0.0.1", 0), cluster="prod",
                                   keys=[self.key],
                                   local_state=lambda: self.payload[next(turn) % len(self.payload)])
            await self.node.start()
            self.node.start_joining([self.seed])
            assert await self.node.wait_joined(15)
        self.run(go())

    def broadcast(self) -> None:
        """One round of forgeries, newer than the last round (and than any correction the victim sent)."""
        self.round += 1
        self.payload[:] = self.forge(self.round)

        async def go() -> None:
            assert self.node is not None
            for i, data in enumerate(self.payload):
                self.node.broadcast_user(f"catalog:node-real:payments:{i}", data)
        self.run(go())

    def close(self) -> None:
        if self.node is not None:
            self.run(self.node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def forgeries(intruder: dict[str, str], round_: int) -> list[bytes]:
    """payments on node-real unhealthy (or gone), far in the future, in both wire forms; the claim form both
    unsigned and signed with a certificate that is not payments'."""
    version = 2**50 + round_ * 2**30
    instance = {"id": "payments:node-real", "name": "payments", "version": "1", "host": "127.0.0.1", "port": 1,
                "tags": [], "capabilities": [], "status": "unhealthy", "lastHeartbeat": 0, "node": "node-real"}
    old_form = [1, [["node-real", version, [instance]]]]
    old_empty = [1, [["node-real", version + 1, []]]]
    claim = ["node-real", "prod", "payments", version, [instance], []]
    key = serialization.load_pem_private_key(Path(intruder["key"]).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = x509_der(intruder["cert"])
    signature = key.sign(json.dumps(claim).encode(), ec.ECDSA(hashes.SHA256()))
    unsigned = [2, [[*claim, "", "", ""]]]
    signed = [2, [[*claim, b64(hashes_sha256(der)), b64(signature), b64(der)]]]
    return [zlib.compress(json.dumps(doc).encode()) for doc in (old_form, old_empty, unsigned, signed)]


def x509_der(path: str) -> bytes:
    from cryptography import x509
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(serialization.Encoding.DER)


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_gossip_key_holder_cannot_forge_another_nodes_catalog_state(
        tmp_path: Path, pki: dict[str, dict[str, str]], gossip_key: str, stopper: list[SidecarProcess]) -> None:
    with FakeApp("real") as real_app:
        real = start(tmp_path, "node-real", pki["payments"], gossip_key,
                     [{"name": "payments", "port": real_app.port}])
        stopper.append(real)
        caller = start(tmp_path, "node-caller", pki["checkout"], gossip_key, [], join=[real.listeners["gossip"]])
        stopper.append(caller)
        wait_for(lambda: [i["status"] for i in catalog(caller, "payments")] == ["healthy"], 20,
                 what="payments healthy at the caller")

        forger = Forger(gossip_key, real.listeners["gossip"], lambda r: forgeries(pki["intruder"], r))
        try:
            forger.join()
            wait_for(lambda: members_by_state(caller).get("forger") == "alive", 20, what="the forger is a member")

            def refused() -> dict[str, int]:
                return dict(http("GET", caller.admin + "/gossip").json().get("catalogClaimsRefused", {}))

            def heard() -> bool:
                forger.broadcast()
                return bool(refused()) or [i["status"] for i in catalog(caller, "payments")] != ["healthy"]

            wait_for(heard, 20, interval=0.2, what="the caller hears the forger")
            seen: list[tuple[str, str]] = []
            answers = []
            for _ in range(30):   # a flood, bounded: every round newer than anything said before
                forger.broadcast()
                seen += [(i["node"], i["status"]) for i in catalog(caller, "payments")] or [("", "gone")]
                status, body = pay(caller)
                answers.append((status, body.get("app")))
            assert set(seen) == {("node-real", "healthy")}, seen
            assert set(answers) == {(200, "real")}, answers
            wait_for(lambda: set(refused()) == {"unsigned", "wrong-service"}, 20, what="both forgeries refused")
            metrics = http("GET", caller.admin + "/metrics").body.decode()
            assert 'sidecar_catalog_claims_refused_total{reason="unsigned"}' in metrics
            # said in the log once per reason (a minute apart), not once per forged packet
            lines = [line for line in caller.lines if "refused a catalog claim" in line]
            assert 1 <= len(lines) <= 2 and all("warning" in line for line in lines), lines
        finally:
            forger.close()


def test_three_hundred_services_on_one_node_reach_every_peer(
        tmp_path: Path, gossip_key: str, stopper: list[SidecarProcess]) -> None:
    """One SVID and one signed claim per service: 300 of them fit gossip (no GossipMessageTooLarge), and a peer that
    verifies every claim lists them all."""
    names = [f"svc-{i:03d}" for i in range(300)]
    pki = make_certs(tmp_path / "certs", ["checkout", *names])
    first, *rest = names
    tls = {**pki[first], "identities": [{"service": n, "cert": pki[n]["cert"], "key": pki[n]["key"]} for n in rest]}
    with FakeApp("many") as app:
        many = start(tmp_path, "node-many", tls, gossip_key, [{"name": n, "port": app.port} for n in names])
        stopper.append(many)
        caller = start(tmp_path, "node-caller", pki["checkout"], gossip_key, [], join=[many.listeners["gossip"]])
        stopper.append(caller)

        def listed() -> int:
            return len(http("GET", f"{caller.api}/v1/catalog").json())

        wait_for(lambda: listed() == 300, 60, what="300 services at the peer")
        assert "GossipMessageTooLarge" not in many.log_text() and "too large" not in many.log_text().lower()
        assert http("GET", caller.admin + "/gossip").json()["catalogClaimsRefused"] == {}
        # and each is served under its own identity
        for name in (first, names[150], names[-1]):
            reply = http("GET", f"http://{caller.listeners['outbound']}/x", headers={"Host": name}, timeout=10)
            assert reply.status == 200, reply
            assert app.headers[-1]["x-sidecar-caller"] == "spiffe://mesh.local/service/checkout"
