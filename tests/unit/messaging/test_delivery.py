"""The redelivery core, the envelope and what an attempt without an answer means: tables, no I/O."""

from __future__ import annotations

import pytest

from sidecar.catalog.model import NODE_STREAM, ServiceMetadata, Subscription
from sidecar.catalog.sync import Claim, decode_claims, encode_claims
from sidecar.errors import InvalidArgument
from sidecar.messaging.courier import no_answer, trace_of
from sidecar.messaging.delivery import (
    Ack,
    Attempts,
    DeadLetter,
    DeliveryPolicy,
    DeliveryRetry,
    Outcome,
    backoff,
    classify,
    classify_bulk,
)
from sidecar.messaging.envelope import MessageBody, ServiceMessage, check_topic
from sidecar.messaging.streams import batches
from sidecar.messaging.subscriptions import SubscriptionBook, Wanted
from sidecar.proxy.failures import ConnectFailure, UpstreamProtocolError, UpstreamReset
from sidecar.tls.errors import PeerRefused
from sidecar.tls.reasons import Refusal, RefusalReason


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


def test_a_bulk_size_travels_with_its_subscription_and_only_then_changes_the_wire() -> None:
    plain, bulk = Subscription("svc", "t", "/p"), Subscription("svc", "t", "/p", 100)
    assert plain.to_json() == ["svc", "t", "/p"] and bulk.to_json() == ["svc", "t", "/p", 100]
    assert Subscription.from_json(bulk.to_json()) == bulk and Subscription.from_json(plain.to_json()) == plain
    for bad in (["svc", "t", "/p", "100"], ["svc", "t", "/p", True], ["svc", "t", "/p", -1], ["s", "t", "/p", 1, 2]):
        with pytest.raises((TypeError, ValueError)):
            Subscription.from_json(bad)
    claims = [Claim("a", "c", "svc", 5, (), (bulk,))]
    assert decode_claims(encode_claims(claims)) == claims
    book = SubscriptionBook("a")
    book.set_remote("b", [bulk])
    book.set_remote("c", [Subscription("svc", "t", "/p", 10)])  # instances disagree: every publisher picks the same
    assert book.wanted() == {("t", "svc"): Wanted("t", "svc", "/p", 10)}


@pytest.mark.parametrize(("status", "mesh_error", "body", "expected"), [
    (200, None, b'{"statuses": [{"id": "a", "status": "SUCCESS"}, {"id": "b", "status": "retry"},'
                b' {"id": "c", "status": "DROP"}]}', [Outcome.ACK, Outcome.FAILED, Outcome.DROP]),
    (200, None, b'{"statuses": [{"id": "c", "status": "DROP"}, {"id": "a", "status": "SUCCESS"}]}',
     [Outcome.ACK, Outcome.FAILED, Outcome.DROP]),                       # b left out: retried; any order
    (200, None, b'{"statuses": [{"id": "a", "status": "MAYBE"}, {"id": 3}, "x"]}',
     [Outcome.FAILED, Outcome.FAILED, Outcome.FAILED]),                  # unknown status, malformed entries
    (200, None, b"", [Outcome.ACK] * 3),                                  # a plain 2xx acks the batch
    (200, None, b'{"status": "DROP"}', [Outcome.DROP] * 3),               # one verdict for all
    (503, None, b'{"statuses": [{"id": "a", "status": "SUCCESS"}]}', [Outcome.FAILED] * 3),
    (503, "UNAVAILABLE", b"", [Outcome.UNREACHABLE] * 3),
    (200, None, b"[" * 100_000, [Outcome.ACK] * 3),                       # not JSON: no statuses
])
def test_classify_bulk(status: int, mesh_error: str | None, body: bytes, expected: list[Outcome]) -> None:
    assert classify_bulk(status, mesh_error, body, ["a", "b", "c"]) == expected


def test_batches_keep_order_and_bounds() -> None:
    owed = [(i, b"x" * 10) for i in range(1, 8)]
    assert [[s for s, _ in b] for b in batches(owed, 3, 1000)] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [[s for s, _ in b] for b in batches(owed, 100, 25)] == [[1, 2], [3, 4], [5, 6], [7]]
    assert [len(b) for b in batches([(1, b"x" * 50)], 5, 10)] == [1]  # one too big still goes, alone
    assert batches([], 5, 10) == []


@pytest.mark.parametrize(("error", "outcome", "says"), [
    (TimeoutError("no answer from 127.0.0.1:3000 within 2.000s"), Outcome.FAILED, "no answer within 2.000s"),
    (UpstreamProtocolError("127.0.0.1:3000", "bad head"), Outcome.FAILED, "invalid response: bad head"),
    (ConnectFailure("127.0.0.1:3000", "connection refused"), Outcome.UNREACHABLE, "connection refused"),
    (UpstreamReset("127.0.0.1:3000"), Outcome.UNREACHABLE, "reset"),
    (PeerRefused(RefusalReason(Refusal.WRONG_SERVICE, "server is spiffe://td/service/x")), Outcome.UNREACHABLE,
     "service/x"),
    (KeyError("node-b"), Outcome.UNREACHABLE, "node-b"),
    (ConnectionResetError("reset by peer"), Outcome.UNREACHABLE, "reset by peer"),
    (ValueError("a request line or field holds a line break"), Outcome.FAILED, "line break"),
])
def test_an_attempt_without_an_answer_counts_or_waits(error: Exception, outcome: Outcome, says: str) -> None:
    """A timeout or a server that does not speak HTTP counts as an attempt; no connection, a close before the answer,
    a refused handshake or a node gone is a wait for the subscriber."""
    got, text = no_answer(error, 2.0)
    assert got is outcome and says in text


def test_a_trace_value_that_would_break_the_request_head_is_not_passed_on() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw = ServiceMessage.new("a", MessageBody("t", {}, {"traceparent": good, "tracestate": "x=1\r\nx-evil: 1"}),
                             0).to_bytes()
    assert trace_of(raw) == {"traceparent": good}
