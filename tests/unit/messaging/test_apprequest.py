"""A delivery POST to the app, its head's fixed part encoded once a stream: the same bytes as the client's own
encoder writes for the same fields, whatever changes from one POST to the next."""

from __future__ import annotations

import pytest

from sidecar.messaging.apprequest import AppRequests
from sidecar.proxy.clientwire import encode_request

TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"}


@pytest.mark.parametrize(("attempt", "trace", "bulk", "body"), [
    (1, {}, 0, b'{"id":"a"}'),
    (7, TRACE, 0, b'{"id":"b"}'),
    (2, {}, 3, b'[{"id":"a"},{"id":"b"},{"id":"c"}]'),
    (12, {"traceparent": TRACE["traceparent"]}, 2, b"[{},{}]"),
])
def test_each_post_is_what_the_client_s_encoder_writes(attempt: int, trace: dict[str, str], bulk: int,
                                                        body: bytes) -> None:
    requests = AppRequests()
    for _ in range(2):   # the head's fixed part made, then reused
        headers = [("Content-Type", "application/json"), ("x-sidecar-topic", "orders"),
                   ("x-sidecar-delivery-attempt", str(attempt)), *trace.items()]
        if bulk:
            headers.append(("x-sidecar-bulk", str(bulk)))
        expected = encode_request("POST", "/events/orders", "payments", headers, body)
        assert requests.encode("/events/orders", "payments", "orders", attempt, trace, bulk, body) == expected


def test_streams_keep_their_own_heads() -> None:
    requests = AppRequests()
    one = requests.encode("/a", "svc", "t1", 1, {}, 0, b"{}")
    two = requests.encode("/b", "svc", "t2", 1, {}, 0, b"{}")
    assert one.startswith(b"POST /a HTTP/1.1\r\nHost: svc\r\n") and b"x-sidecar-topic: t1\r\n" in one
    assert two.startswith(b"POST /b HTTP/1.1\r\nHost: svc\r\n") and b"x-sidecar-topic: t2\r\n" in two


@pytest.mark.parametrize(("path", "trace"), [("/a\r\nX: y", {}), ("/a", {"traceparent": "a\nb"})])
def test_a_field_that_would_break_the_head_is_refused(path: str, trace: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        AppRequests().encode(path, "svc", "t", 1, trace, 0, b"{}")
