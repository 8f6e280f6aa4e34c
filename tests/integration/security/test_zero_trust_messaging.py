"""Messaging between members that do not trust each other, with real `sidecar run` processes over real mTLS.

``reader`` (certificate: payments) has an SSE reader of ``orders`` and denies the service ``intruder``;
``publisher`` (checkout) publishes ``orders``; both scope the topic: checkout publishes, payments subscribes.
``rogue`` (intruder) runs its own sidecar with a configuration of its choosing (no scopes). Other members are
played by a client holding their certificate and key, talking to the reader's inbound directly.

What is checked: nothing reaches the reader's stream but what checkout published, with checkout as the sender;
the rogue can neither inject (through its outbound, or straight with its certificate), nor claim another sender,
nor publish to or subscribe to the scoped topic, nor get its messages by subscribing on its own sidecar; and the
reader's stream subscription goes away when the reader does."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import SidecarProcess, assert_error, http, make_certs, wait_for
from tests.integration.messaging.procs import RecordingApp, knows_subscription, publish, read_sse
from tests.integration.security.zero_trust import client_context, message, node_config, raw

SCOPES = {"topics": {"orders": {"publishers": ["checkout"], "subscribers": ["payments"]}}}
DENY_INTRUDER = {"rules": [{"to": "*", "from": ["intruder"], "action": "deny"}]}
DELIVER = "/.sidecar/v1/deliver/orders"
BATCH = "/.sidecar/v1/deliver-batch/orders"
CHECKOUT = {"name": "checkout", "port": 1, "check": {"ttl": "1h"}}  # registered, never called


@dataclass
class Mesh:
    reader: SidecarProcess
    publisher: SidecarProcess
    rogue: SidecarProcess
    rogue_app: RecordingApp
    payments_app: RecordingApp
    certs: dict[str, dict[str, str]]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    certs = make_certs(tmp_path / "certs", ["payments", "checkout", "intruder", "audit"])
    payments_app, rogue_app = RecordingApp("payments"), RecordingApp("intruder")
    started: list[SidecarProcess] = []
    try:
        reader = SidecarProcess(tmp_path, node_config(
            "reader", certs["payments"], [{"name": "payments", "port": payments_app.port}], [],
            authorization=DENY_INTRUDER, messaging=SCOPES), name="reader")
        started.append(reader.start())
        seed = [wait_for(lambda: reader.listeners.get("gossip"), 10, what="the gossip address logged")]
        publisher = SidecarProcess(tmp_path, node_config("publisher", certs["checkout"], [CHECKOUT], seed, messaging={
            **SCOPES, "retry_backoff": {"base": "20ms", "max": "200ms"}}), name="publisher")
        started.append(publisher.start())
        rogue = SidecarProcess(tmp_path, node_config("rogue", certs["intruder"],
                                                     [{"name": "intruder", "port": rogue_app.port}], seed),
                               name="rogue")
        started.append(rogue.start())
        for process in (publisher, rogue):
            wait_for(lambda p=process: http("GET", f"{p.api}/v1/catalog/payments").json(), 30,
                     what=f"{process.name} knows payments")
        yield Mesh(reader, publisher, rogue, rogue_app, payments_app, certs)
    finally:
        for process in started:
            process.kill()
        payments_app.close()
        rogue_app.close()


def _deliver(mesh: Mesh, member: str, body: bytes, path: str = DELIVER) -> Any:
    """A delivery sent straight to the reader's inbound by a client holding ``member``'s certificate."""
    return raw(mesh.reader.listeners["inbound"], "POST", path, {"Host": "payments", "Content-Type": "application/json"},
               body, context=client_context(mesh.certs[member]))


@pytest.mark.timeout(120)
def test_members_cannot_forge_or_steal_messages(mesh: Mesh) -> None:
    reader, publisher, rogue = mesh.reader, mesh.publisher, mesh.rogue
    events: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: events.setdefault(
        "got", read_sse(reader.api + "/v1/subscribe/orders", 1, timeout=60)), daemon=True)
    thread.start()
    wait_for(lambda: knows_subscription(publisher, "orders", "reader"), 30, what="the stream subscription gossiped")

    # the rogue's app asks its own sidecar to carry a forged delivery to the reader's internal receiver
    for path in (DELIVER, "/%2Esidecar/v1/deliver/orders", "//.sidecar/./v1/deliver/orders"):
        forged = raw(rogue.listeners["outbound"], "POST", path, {"Host": "payments"}, message("checkout", "forged"))
        assert_error(forged, 403, "PERMISSION_DENIED")
    # straight to the reader's inbound with the rogue's own certificate: the authorization rules still apply
    for sender in ("checkout", "intruder"):
        refused = assert_error(_deliver(mesh, "intruder", message(sender, "forged")), 403, "PERMISSION_DENIED")
        assert refused["details"]["rule"] == "authorization.rules[0]"
    # a member the rules admit cannot speak for another service, nor publish a topic its scope does not list,
    # nor deliver a topic this node has no reader of
    refused = assert_error(_deliver(mesh, "checkout", message("billing", "forged")), 403, "PERMISSION_DENIED")
    assert "billing" in refused["message"]
    refused = assert_error(_deliver(mesh, "audit", message("audit", "forged")), 403, "PERMISSION_DENIED")
    assert refused["details"]["rule"] == "messaging.topics.orders.publishers"
    assert_error(_deliver(mesh, "checkout", message("checkout", "forged"), "/.sidecar/v1/deliver/news"), 404,
                 "NOT_FOUND")
    # the same for batches: through an outbound, from a member the rules refuse, and a batch with one message
    # naming another sender is refused whole
    assert_error(raw(rogue.listeners["outbound"], "POST", BATCH, {"Host": "payments"},
                     b"[" + message("checkout", "forged") + b"]"), 403, "PERMISSION_DENIED")
    refused = assert_error(_deliver(mesh, "intruder", b"[" + message("intruder", "forged") + b"]", BATCH), 403,
                           "PERMISSION_DENIED")
    assert refused["details"]["rule"] == "authorization.rules[0]"
    mixed = b"[" + message("checkout", "fine") + b"," + message("billing", "forged") + b"]"
    assert "billing" in assert_error(_deliver(mesh, "checkout", mixed, BATCH), 403, "PERMISSION_DENIED")["message"]
    assert_error(_deliver(mesh, "checkout", b"[]", BATCH), 400, "INVALID_ARGUMENT")

    # the scope, on the rogue's side: its sidecar (with the same scopes) would refuse it; this one has none, so
    # it subscribes (push, and an SSE reader of its own) and the publisher must not deliver to it
    assert http("POST", rogue.api + "/v1/subscriptions", {"topic": "orders", "path": "/steal"}).status == 201
    # it also announces an instance of payments (a subscriber the scope lists): its certificate still says intruder
    assert http("PUT", rogue.api + "/v1/services", {"name": "payments", "port": mesh.rogue_app.port}).status == 200
    stolen: dict[str, Any] = {}
    threading.Thread(target=lambda: stolen.setdefault(
        "got", read_sse(rogue.api + "/v1/subscribe/orders", 1, timeout=20)), daemon=True).start()
    wait_for(lambda: knows_subscription(publisher, "orders", "rogue") and len(
        [r for r in http("GET", publisher.api + "/v1/subscriptions").json()
         if r["topic"] == "orders" and r["node"] == "rogue"]) == 2, 30, what="the rogue's subscriptions gossiped")

    assert publish(publisher, "orders", {"order": 1}).status == 202
    thread.join(60)
    got = events["got"]
    assert [(e["service"], e["payload"]) for _, e in got] == [("checkout", {"order": 1})]
    status = http("GET", publisher.admin + "/messaging").json()
    delivered = {s["subscriber"]: s["delivered"] for s in status["streams"] if s["topic"] == "orders"}
    assert delivered.get("node:reader") == 1 and delivered.get("node:rogue", 0) == 0, status["streams"]
    assert "intruder" not in delivered, status["streams"]
    assert mesh.rogue_app.messages() == []
    assert not stolen.get("got")
    counters = http("GET", rogue.admin + "/messaging").json()["counters"]
    assert counters.get("stream_received", 0) == 0, counters


@pytest.mark.timeout(90)
def test_scopes_on_publish_and_subscribe(mesh: Mesh) -> None:
    reader, publisher = mesh.reader, mesh.publisher
    # the reader's sidecar: payments may subscribe to orders, not publish it; news is open
    assert_error(publish(reader, "orders", 1), 403, "PERMISSION_DENIED")
    assert publish(reader, "news", 1).status == 202
    # scopes reload live: with payments among the publishers (and news closed by default), it may publish
    config = yaml.safe_load(reader.config_path.read_text())
    config["messaging"] = {"default": "deny", "topics": {"orders": {"publishers": ["checkout", "payments"],
                                                                    "subscribers": ["payments"]}}}
    reader.config_path.write_text(yaml.safe_dump(config))
    reloaded = http("POST", reader.admin + "/reload")
    assert reloaded.status == 200, reloaded
    assert publish(reader, "orders", 2).status == 202
    assert_error(publish(reader, "news", 2), 403, "PERMISSION_DENIED")
    config["messaging"] = SCOPES
    reader.config_path.write_text(yaml.safe_dump(config))
    assert http("POST", reader.admin + "/reload").status == 200
    # the publisher's sidecar: checkout may publish orders, not subscribe to it (push or SSE)
    assert_error(http("POST", publisher.api + "/v1/subscriptions", {"topic": "orders", "path": "/in",
                                                                    "service": "checkout"}), 403, "PERMISSION_DENIED")
    assert_error(http("GET", publisher.api + "/v1/subscribe/orders"), 403, "PERMISSION_DENIED")
    assert_error(http("POST", reader.api + "/v1/subscriptions", {"topic": "orders", "path": "/.sidecar/v1/x"}),
                 400, "INVALID_ARGUMENT")

    # a push delivery names its topic (x-sidecar-topic); the subscriber's sidecar checks the caller may publish it
    def push(member: str, topic: str) -> Any:
        return raw(reader.listeners["inbound"], "POST", "/events", {"Host": "payments", "x-sidecar-topic": topic},
                   message(member, topic), context=client_context(mesh.certs[member]))

    refused = assert_error(push("audit", "orders"), 403, "PERMISSION_DENIED")
    assert refused["details"]["topic"] == "orders"
    assert push("audit", "news").status == 200
    assert push("checkout", "orders").status == 200
    assert [(m["service"], m["payload"]) for m in mesh.payments_app.messages()] == [("audit", "news"),
                                                                                    ("checkout", "orders")]



@pytest.mark.timeout(90)
def test_the_stream_subscription_leaves_with_its_reader(mesh: Mesh) -> None:
    reader, publisher = mesh.reader, mesh.publisher
    # an SSE reader comes and goes: its node subscription goes with it, here and at the publisher
    stream = urllib.request.urlopen(reader.api + "/v1/subscribe/orders", timeout=10)
    try:
        assert stream.status == 200
        wait_for(lambda: knows_subscription(publisher, "orders", "reader"), 30, what="the subscription gossiped")
    finally:
        stream.close()  # the client leaves
    wait_for(lambda: not knows_subscription(reader, "orders", "reader"), 10, what="the reader's subscription gone")
    wait_for(lambda: not knows_subscription(publisher, "orders", "reader"), 30,
             what="the publisher forgets the subscription")
    assert http("GET", reader.admin + "/messaging").json()["readers"] == {}
