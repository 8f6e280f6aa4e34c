"""The field limit the admin port and the app API put on the proxy's request reader, and only they."""

from __future__ import annotations

import pytest

from sidecar.httpd import WebLimits
from sidecar.proxy.http1 import HeadLimits, RequestHead, RequestHeadTooLarge, Trailers
from sidecar.proxy.http1read import RequestReader


class Sink:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: Trailers | None) -> None:
        pass


LIMIT = WebLimits().max_field_bytes
FIELD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n"
TARGET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("request_bytes", "says"), [
    (FIELD % (b"a" * (LIMIT - len("X-Big") + 1)), f"a header field over {LIMIT} bytes"),
    (TARGET % (b"a" * LIMIT), f"request target longer than {LIMIT} bytes"),
])
def test_the_web_limits_refuse_a_field_or_target_over_8_kib(request_bytes: bytes, says: str) -> None:
    with pytest.raises(RequestHeadTooLarge, match=says):
        RequestReader(Sink(), WebLimits().head_limits()).feed(request_bytes)


@pytest.mark.parametrize("request_bytes", [FIELD % (b"a" * (LIMIT - len("X-Big"))), TARGET % (b"a" * (LIMIT - 1))])
def test_at_the_limit_they_pass(request_bytes: bytes) -> None:
    sink = Sink()
    RequestReader(sink, WebLimits().head_limits()).feed(request_bytes)
    assert len(sink.heads) == 1


def test_the_proxys_listeners_keep_only_the_block_limits() -> None:
    sink = Sink()
    RequestReader(sink, HeadLimits()).feed(FIELD % (b"a" * 20_000) + TARGET % (b"a" * 20_000))
    assert len(sink.heads) == 2
