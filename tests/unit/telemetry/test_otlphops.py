"""A hop's span written straight from its record is, byte for byte, the span the tracer's reference path writes
(``span_bytes(request_span(...))``, which the integration tests compare with the OpenTelemetry SDK's export), for
every shape of request; the tables of encoded fields stay bounded."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.telemetry import otlphops
from sidecar.telemetry.otlp import span_bytes
from sidecar.telemetry.otlphops import hop_span_bytes
from sidecar.telemetry.spans import request_span
from tests.unit.telemetry.stats import caller_conn, local_app, stats

WALL = 1_700_000_000.0

CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("outbound", {}, None),
    ("outbound", {"attempts": 3, "status": 503, "error": "connect-failure"}, None),
    ("outbound", {"method": "PURGE", "status": 0, "upstream": None}, None),
    ("outbound", {"status": 404, "host": "payment-service:8080", "parent": None}, None),
    ("outbound", {"target": b"http://payment-service/pay", "upstream": "[::1]:15007", "request_id": None}, None),
    ("outbound", {"tag": local_app(), "method": "GET", "upstream": "10.0.0.7"}, None),
    ("inbound", {"tag": local_app(), "host": "payment-service:8080", "status": 503}, caller_conn()),
    ("inbound", {"tag": local_app(), "target": b"/only-path", "status": 200, "parent": None}, caller_conn("x")),
    ("inbound", {"tag": local_app(), "host": "[::1]:9", "method": "BREW", "status": 0}, None),
    ("inbound", {"tag": local_app(), "host": "payment-service", "status": 404, "error": "reset"}, caller_conn()),
]


@pytest.mark.parametrize(("direction", "fields", "peer"), CASES)
def test_a_hops_span_is_the_reference_encoding(direction: str, fields: dict[str, Any], peer: Any) -> None:
    hop = stats(**fields)
    expected = request_span(direction, hop, "payment-service", WALL, peer)
    assert expected is not None
    for _ in range(2):   # the first time fills the tables, the second reads them
        assert hop_span_bytes(direction, hop, "payment-service", WALL, peer) == span_bytes(expected)


def test_no_span_without_trace_ids() -> None:
    assert hop_span_bytes("outbound", stats(trace_id=None), "payment-service", WALL) is None
    assert hop_span_bytes("outbound", stats(span_id=None), "payment-service", WALL) is None


def test_tables_of_encoded_fields_stay_bounded() -> None:
    for i in range(3000):
        hop = stats(host=f"svc-{i}:{1000 + i}", upstream=f"10.0.{i // 250}.{i % 250}:15006")
        expected = request_span("outbound", hop, "payment-service", WALL)
        assert expected is not None
        assert hop_span_bytes("outbound", hop, "payment-service", WALL) == span_bytes(expected)
    assert len(otlphops._outbound_hosts.fields) <= otlphops._LIMIT
    assert len(otlphops._peers.fields) <= otlphops._LIMIT


@pytest.mark.parametrize("value", ["", "req-1", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "x" * 100, "y" * 300, "é" * 70])
def test_a_unique_string_field_is_the_cached_fields_encoding(value: str) -> None:
    from sidecar.telemetry.otlp import attribute_field, key_part, string_field

    assert string_field(key_part("sidecar.request_id"), value) == attribute_field("sidecar.request_id", value)
    assert string_field(key_part("k"), value) == attribute_field("k", value)


def test_callers_are_encoded_by_their_address_and_identity() -> None:
    for port in (40123, 40124, 40123):
        conn = caller_conn()
        conn.peername = ("127.0.0.9", port)
        hop = stats(tag=local_app(), host="payment-service:8080")
        expected = request_span("inbound", hop, "payment-service", WALL, conn)
        assert expected is not None
        assert hop_span_bytes("inbound", hop, "payment-service", WALL, conn) == span_bytes(expected)
