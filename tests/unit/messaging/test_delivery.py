"""The redelivery core and the envelope: tables, no I/O."""

from __future__ import annotations

import pytest

from sidecar.catalog.model import NODE_STREAM, ServiceMetadata, Subscription
from sidecar.catalog.sync import Claim, decode_claims, encode_claims
from sidecar.errors import InvalidArgument
from sidecar.messaging.delivery import (
    Ack,
    Attempts,
    DeadLetter,
    DeliveryPolicy,
    DeliveryRetry,
    Outcome,
    backoff,
    classify,
)
from sidecar.messaging.envelope import MessageBody, ServiceMessage, check_topic
from sidecar.messaging.subscriptions import SubscriptionBook, Wanted


@pytest.mark.parametrize(("status", "mesh_error", "body", "outcome"), [
    (200, None, b"", Outcome.ACK),
    (204, None, b"", Outcome.ACK),
    (200, None, b'{"status": "SUCCESS"}', Outcome.ACK),
    (200, None, b'{"status": "DROP"}', Outcome.DROP),
    (200, None, b'{"status": "drop"}', Outcome.DROP),
    (200, None, b'{"status": "RETRY"}', Outcome.FAILED),
    (200, None, b"status: not json", Outcome.ACK),
    (429, None, b"", Outcome.FAILED),
    (500, None, b"", Outcome.FAILED),
    (503, None, b"", Outcome.FAILED),
    (408, None, b"", Outcome.FAILED),
    (400, None, b"", Outcome.REJECTED),
    (404, None, b"", Outcome.REJECTED),
    (503, "UNAVAILABLE", b"", Outcome.UNREACHABLE),
    (404, "NOT_FOUND", b"", Outcome.UNREACHABLE),
    (429, "RESOURCE_EXHAUSTED", b"", Outcome.UNREACHABLE),
    (403, "PERMISSION_DENIED", b"", Outcome.REJECTED),
    (504, "DEADLINE_EXCEEDED", b"", Outcome.FAILED),
])
def test_classify(status: int, mesh_error: str | None, body: bytes, outcome: Outcome) -> None:
    assert classify(status, mesh_error, body) is outcome


@pytest.mark.parametrize(("n", "random", "expected"), [
    (1, 0.0, 0.1), (2, 0.0, 0.2), (3, 0.0, 0.4), (10, 0.0, 10.0), (200, 0.0, 10.0), (1, 1.0, 0.08), (3, 0.5, 0.36),
])
def test_backoff_doubles_caps_and_jitters(n: int, random: float, expected: float) -> None:
    assert backoff(DeliveryPolicy(10, 0.1, 10.0, 0.2), n, random) == pytest.approx(expected)


def test_attempts_count_failures_not_waits() -> None:
    policy = DeliveryPolicy(max_attempts=3, backoff_base=1, backoff_max=100, jitter=0)
    attempts = Attempts()
    assert attempts.next_step(policy, Outcome.UNREACHABLE, 0.0) == DeliveryRetry(1.0, counted=False)
    assert attempts.next_step(policy, Outcome.UNREACHABLE, 0.0) == DeliveryRetry(2.0, counted=False)
    assert attempts.next_step(policy, Outcome.FAILED, 0.0) == DeliveryRetry(1.0, counted=True)
    assert attempts.next_step(policy, Outcome.FAILED, 0.0) == DeliveryRetry(2.0, counted=True)
    for _ in range(50):  # an unreachable subscriber never exhausts a message's attempts
        assert isinstance(attempts.next_step(policy, Outcome.UNREACHABLE, 0.0), DeliveryRetry)
    assert attempts.next_step(policy, Outcome.FAILED, 0.0) == DeadLetter("max-attempts")
    assert attempts.counted == 3


@pytest.mark.parametrize(("outcome", "step"), [
    (Outcome.ACK, Ack()), (Outcome.DROP, DeadLetter("dropped")), (Outcome.REJECTED, DeadLetter("rejected")),
])
def test_final_outcomes(outcome: Outcome, step: object) -> None:
    assert Attempts().next_step(DeliveryPolicy(), outcome, 0.5) == step


def test_message_body_validation_and_envelope_round_trip() -> None:
    body = MessageBody.from_json({"type": "pay", "payload": {"amount": 1}, "metadata": {"a": 1}})
    message = ServiceMessage.new("checkout", body, 1234, "id-1")
    assert message.to_json() == {"id": "id-1", "service": "checkout", "timestamp": 1234, "type": "pay",
                                 "payload": {"amount": 1}, "metadata": {"a": 1}}
    assert ServiceMessage.from_bytes(message.to_bytes()) == message
    assert MessageBody.from_json({"type": "t", "payload": None}).payload is None
    for bad in ({}, {"type": 1, "payload": 1}, {"type": "t"}, {"type": "t", "payload": 1, "extra": 1},
                {"type": "t", "payload": 1, "metadata": "x"}):
        with pytest.raises(InvalidArgument):
            MessageBody.from_json(bad)
    with pytest.raises(ValueError):
        ServiceMessage.from_bytes(b'{"id": "x"}')
    assert check_topic("orders.v1_x-y") == "orders.v1_x-y"
    with pytest.raises(InvalidArgument):
        check_topic("no spaces")


def test_subscription_book_merges_competing_consumers_and_node_streams() -> None:
    book = SubscriptionBook("a")
    assert book.add_local(Subscription("billing", "orders", "/z"))
    assert not book.add_local(Subscription("billing", "orders", "/z"))
    assert book.set_remote("b", [Subscription("billing", "orders", "/events"), Subscription(NODE_STREAM, "news")])
    assert not book.set_remote("a", [Subscription("x", "y", "/")])  # our own state never comes from gossip
    assert book.wanted() == {("orders", "billing"): Wanted("orders", "billing", "/events"),
                             ("news", "node:b"): Wanted("news", "node:b", "")}
    assert book.set_remote("b", ())
    assert book.wanted() == {("orders", "billing"): Wanted("orders", "billing", "/z")}


def test_claims_carry_subscriptions() -> None:
    instance = ServiceMetadata("i", "svc", "1", "h", 1)
    claims = [Claim("a", "c", "svc", 5, (instance,), (Subscription("svc", "t", "/p"), Subscription(NODE_STREAM, "n"))),
              Claim("b", "c", "", 6, ())]
    assert decode_claims(encode_claims(claims)) == claims
