"""Messages carry the caller's trace context: a request-response message and every delivery of a published
message continue the publisher's trace (W3C traceparent), each hop with a span of its own."""

from __future__ import annotations

from pathlib import Path

from tests.harness import FakeApp, http, make_certs, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_messages_continue_the_callers_trace(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["checkout", "payment-service"])
    with FakeApp("payment") as app:
        a = start_sidecar({"node": {"name": "node-a"}, "tls": certs["checkout"], "gossip": {"profile": "local"},
                           "services": [{"name": "checkout", "port": 1}]}, name="node-a")
        start_sidecar({"node": {"name": "node-b"}, "tls": certs["payment-service"],
                       "gossip": {"profile": "local", "join": [a.listeners["gossip"]]},
                       "services": [{"name": "payment-service", "port": app.port}],
                       "subscriptions": [{"topic": "orders", "path": "/events/orders"}]}, name="node-b")
        wait_for(lambda: "payment-service" in http("GET", a.api + "/v1/catalog").json(), timeout=15)
        answer = http("POST", a.api + "/v1/messages/payment-service", {"type": "pay", "payload": {"n": 1}},
                      headers={"traceparent": PARENT, "Content-Type": "application/json"})
        assert answer.status == 200, answer
        delivered = [h for h in app.headers if h.get("x-sidecar-message-id")]
        assert delivered and delivered[-1]["traceparent"].split("-")[1] == TRACE
        assert delivered[-1]["traceparent"].split("-")[2] != "00f067aa0ba902b7"  # a new span per hop

        # publish: the subscription must have reached node-a through gossip first
        def published_and_delivered() -> bool:
            http("POST", a.api + "/v1/publish/orders", {"type": "placed", "payload": {"id": 1}},
                 headers={"traceparent": PARENT, "Content-Type": "application/json"})
            return any(h.get("x-sidecar-topic") == "orders" for h in app.headers)

        wait_for(published_and_delivered, timeout=20, interval=0.5, what="an order delivered to node-b's app")
        pushed = next(h for h in app.headers if h.get("x-sidecar-topic") == "orders")
        assert pushed["traceparent"].split("-")[1] == TRACE
