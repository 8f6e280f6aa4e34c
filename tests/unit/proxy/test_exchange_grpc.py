"""A gRPC call through the exchange, against the fakes of test_exchange: retried on its status only while nothing
of the response reached the client (a trailers-only head, or a held head whose trailers bring the status), bounded
by its deadline after the response began, and reported with its status."""

from __future__ import annotations

from typing import Any

from sidecar.proxy.http1 import RequestHead, ResponseHead, Trailers
from tests.unit.proxy.test_exchange import FakeClient, FakeStream, Harness, Policy, target

UNAVAILABLE = [(b"grpc-status", b"14"), (b"grpc-message", b"busy")]
OK = [(b"grpc-status", b"0")]
MESSAGE = b"\x00\x00\x00\x00\x02hi"


def grpc_policy(retries: int = 1, grpc: frozenset[int] = frozenset({14}),
               statuses: frozenset[int] = frozenset()) -> Policy:
    """Retries up to ``retries`` times on the gRPC statuses given (and on HTTP ``statuses``)."""
    return Policy(retries, statuses=statuses, grpc=grpc)


class HeadsClient(FakeClient):
    """Also keeps the heads it was sent, to see their framing."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[ResponseHead] = []

    def send_head(self, head: ResponseHead, request: RequestHead) -> None:
        self.heads.append(head)
        super().send_head(head, request)


def grpc_harness(**target_args: Any) -> Harness:
    h = Harness(target(**target_args), method="POST")
    h.client = HeadsClient()
    h.exchange.client = h.client
    h.head.headers.items.append((b"content-type", b"content-type", b"application/grpc"))
    return h


def head(fields: Trailers | None = None, content_length: int | None = None, no_body: bool = False) -> ResponseHead:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in fields or [])
    return ResponseHead(200, b"OK", b"content-type: application/grpc\r\n" + lines, content_length,
                        chunked=content_length is None and not no_body, no_body=no_body)


def answer(stream: FakeStream, response: ResponseHead, messages: list[bytes], trailers: Trailers | None) -> None:
    user = stream.user
    assert user is not None
    user.on_response_head(response)
    for message in messages:
        if stream.user is not None:
            user.on_response_body(message)
    if stream.user is not None:
        user.on_response_end(trailers)


def test_a_trailers_only_status_in_retry_on_is_retried_and_the_client_sees_only_the_second_answer() -> None:
    policy = grpc_policy()
    h = grpc_harness(retry=policy)
    first, second = h.stream(), h.stream()
    h.start([b"req"])
    answer(first, head(UNAVAILABLE, no_body=True), [], None)          # HEADERS + END_STREAM from an h2c app
    answer(second, head(), [MESSAGE], OK)
    assert [(a.number, a.grpc_status, a.sent) for a in policy.asked] == [(1, 14, True)]
    assert h.client.events == [("head", 200), ("body", MESSAGE), ("end", OK), ("done", True)]
    assert (h.stat.grpc, h.stat.grpc_status, h.stat.attempts, h.stat.error) == (True, 0, 2, None)


def test_a_held_head_whose_trailers_bring_a_retriable_status_is_retried_unseen() -> None:
    # the app sent its initial metadata, then UNAVAILABLE in the trailers, no message: nothing reached the client
    policy = grpc_policy()
    h = grpc_harness(retry=policy)
    first, second = h.stream(), h.stream()
    h.start([b"req"])
    first.user.on_response_head(head())   # type: ignore[union-attr]
    assert h.client.events == []          # held
    first.user.on_response_end(UNAVAILABLE)   # type: ignore[union-attr]
    assert [a.grpc_status for a in policy.asked] == [14] and h.client.events == []
    assert h.pool.released == [first]     # the answer was read whole: its connection serves the retry or another
    answer(second, head(), [MESSAGE], OK)
    assert h.client.events == [("head", 200), ("body", MESSAGE), ("end", OK), ("done", True)]
    assert h.stat.grpc_status == 0


def test_a_status_after_a_message_is_not_retried_the_client_already_has_data() -> None:
    policy = grpc_policy()
    h = grpc_harness(retry=policy)
    stream = h.stream()
    h.start([b"req"])
    answer(stream, head(), [MESSAGE], UNAVAILABLE)
    assert policy.asked == []
    assert h.client.events == [("head", 200), ("body", MESSAGE), ("end", UNAVAILABLE), ("done", True)]
    assert (h.stat.grpc_status, h.stat.attempts) == (14, 1)


def test_a_status_the_policy_does_not_name_ends_the_held_call_as_it_came() -> None:
    policy = grpc_policy(grpc=frozenset({14}))
    h = grpc_harness(retry=policy)
    stream = h.stream()
    h.start([b"req"])
    denied = [(b"grpc-status", b"7")]
    answer(stream, head(), [], denied)
    assert policy.asked == []
    assert h.client.events == [("head", 200), ("end", denied), ("done", True)]
    assert h.stat.grpc_status == 7


def test_retries_declined_by_the_policy_relay_the_failure() -> None:
    policy = grpc_policy(retries=0)
    h = grpc_harness(retry=policy)
    stream = h.stream()
    h.start([b"req"])
    answer(stream, head(), [], UNAVAILABLE)
    assert len(policy.asked) == 1
    assert h.client.events == [("head", 200), ("end", UNAVAILABLE), ("done", True)]


def test_no_head_is_held_without_grpc_statuses_to_retry_or_before_the_request_is_complete() -> None:
    h = grpc_harness(retry=grpc_policy(grpc=frozenset(), statuses=frozenset({503})))
    stream = h.stream()
    h.start([b"req"])
    stream.user.on_response_head(head())   # type: ignore[union-attr]
    assert h.client.events == [("head", 200)]
    streaming = grpc_harness(retry=grpc_policy())
    stream = streaming.stream()
    streaming.start([b"req"], end=False)    # a bidi call still sending: it could not be replayed anyway
    stream.user.on_response_head(head())   # type: ignore[union-attr]
    assert streaming.client.events == [("head", 200)]


def test_another_sidecars_own_error_is_its_status_retried_by_name() -> None:
    # UNAVAILABLE from the callee's sidecar (its app is gone) crosses HTTP/1.1 as SPEC's JSON 503
    policy = grpc_policy()
    h = grpc_harness(retry=policy)
    first, second = h.stream(), h.stream()
    h.start([b"req"])
    error = ResponseHead(503, b"Service Unavailable",
                         b"content-type: application/json\r\nx-sidecar-error: UNAVAILABLE\r\n", content_length=2)
    answer(first, error, [b"{}"], None)
    answer(second, head(), [MESSAGE], OK)
    assert [(a.status, a.grpc_status) for a in policy.asked] == [(503, 14)]
    assert h.client.events[:2] == [("head", 200), ("body", MESSAGE)]


def test_another_sidecars_error_not_retried_is_reported_as_an_error_of_the_call() -> None:
    h = grpc_harness(retry=grpc_policy(retries=0))
    stream = h.stream()
    h.start([b"req"])
    denied = ResponseHead(403, b"Forbidden",
                          b"content-type: application/json\r\nx-sidecar-error: PERMISSION_DENIED\r\n", content_length=2)
    answer(stream, denied, [b"{}"], None)
    assert (h.stat.grpc_status, h.stat.error) == (7, "upstream-sidecar")


def test_a_trailers_only_answer_is_framed_for_the_hops_after_it() -> None:
    # from an h2c app (HEADERS + END_STREAM: no body, no length) it gets Content-Length: 0 for an HTTP/1.1 hop
    h = grpc_harness()
    stream = h.stream()
    h.start([b"req"])
    answer(stream, head([(b"grpc-status", b"12")], no_body=True), [], None)
    assert h.client.heads[0].content_length == 0 and h.stat.grpc_status == 12
    # over HTTP/1.1 (a head with grpc-status and an empty body) it is the whole answer again: no body to follow
    h = grpc_harness()
    stream = h.stream()
    h.start([b"req"])
    answer(stream, head([(b"grpc-status", b"12")], content_length=0), [], None)
    assert h.client.heads[0].no_body and h.stat.grpc_status == 12


def test_the_deadline_bounds_the_whole_call_and_ends_it_with_deadline_exceeded() -> None:
    h = grpc_harness(timeout=0.3)
    stream = h.stream()
    h.start([b"req"])
    stream.user.on_response_head(head())   # type: ignore[union-attr]
    stream.user.on_response_body(MESSAGE)   # type: ignore[union-attr]
    h.loop.advance(0.29)
    assert not stream.aborted
    h.loop.advance(0.02)
    assert stream.aborted                                   # the upstream stream is reset: the app is cancelled
    kind, trailers = h.client.events[-2]
    assert kind == "end" and dict(trailers)[b"grpc-status"] == b"4", h.client.events
    assert dict(trailers)[b"x-sidecar-error"] == b"DEADLINE_EXCEEDED"
    assert h.client.events[-1] == ("done", True)
    assert (h.stat.error, h.stat.grpc_status) == ("timeout", 4)


def test_an_http_request_keeps_its_timeout_to_the_response_head_only() -> None:
    h = Harness(target(timeout=0.3))
    stream = h.stream()
    h.start()
    stream.user.on_response_head(ResponseHead(200, b"OK", b"", chunked=True))   # type: ignore[union-attr]
    h.loop.advance(1.0)
    assert not stream.aborted and h.client.events == [("head", 200)]


def test_a_client_reset_of_a_call_is_cancelled() -> None:
    h = grpc_harness()
    stream = h.stream()
    h.start([b"req"])
    stream.user.on_response_head(head())   # type: ignore[union-attr]
    h.exchange.on_client_lost()
    assert stream.aborted and (h.stat.error, h.stat.grpc_status) == ("client-reset", 1)


def test_the_sidecars_own_error_to_a_call_is_its_status() -> None:
    h = Harness(target(), method="POST")
    h.head.headers.items.append((b"content-type", b"content-type", b"application/grpc+proto"))
    h.pool.ready.clear()
    h.exchange.begin()
    h.exchange.fail_local(RuntimeError("boom"))
    assert h.stat.grpc and h.stat.grpc_status == 13


def test_a_grpc_content_type_is_noticed_in_the_header_pass_that_edits_the_trace_headers() -> None:
    for content_type, grpc in [(b"application/grpc+proto", True), (b"Application/GRPC", True),
                               (b"application/grpc-web", False), (b"application/json", False), (None, False)]:
        h = Harness(target(), method="POST")
        h.engine.edit_headers = True
        if content_type is not None:
            h.head.headers.items.append((b"content-type", b"Content-Type", content_type))
        stream = h.stream()
        h.start([b"req"])
        stream.respond(200, b"ok")
        assert h.stat.grpc is grpc, content_type
