"""A request through two sidecars yields a CLIENT span (node-a) and a SERVER span (node-b) in the caller's trace,
exported over OTLP/HTTP protobuf to a real receiver, with the ids the apps saw in traceparent."""

from __future__ import annotations

from sidecar.proxy.tracecontext import parse
from tests.harness import http, wait_for
from tests.integration.telemetry.conftest import Pair

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3       # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


def test_two_hops_make_client_and_server_spans_in_the_callers_trace(pair: Pair) -> None:
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reply = http("GET", f"http://127.0.0.1:{pair.a.node.outbound}/headers/orders?limit=5",
                 headers={"Host": "inventory", "traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert reply.status == 200, reply
    seen = {name.lower(): value for name, value in reply.json()["headers"]}
    app_parent = parse(seen["traceparent"])
    assert app_parent is not None and app_parent.trace_id == trace_id

    spans = wait_for(lambda: len(pair.otlp.trace(trace_id)) >= 2 and pair.otlp.trace(trace_id), 10,
                     what="two spans of the trace at the OTLP receiver")
    by_kind = {s.kind: s for s in spans}
    client, server = by_kind[SPAN_KIND_CLIENT], by_kind[SPAN_KIND_SERVER]
    # the chain of the headers: caller → A's client span → B's server span → the app
    assert client.parent_span_id == caller_span
    assert server.parent_span_id == client.span_id
    assert server.span_id == app_parent.span_id
    assert client.resource["service.name"] == "checkout" and client.resource["service.instance.id"] == "node-a"
    assert server.resource["service.name"] == "inventory" and server.resource["service.instance.id"] == "node-b"
    assert client.name == server.name == "GET"
    assert client.attributes["http.request.method"] == "GET"
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == "inventory"
    assert client.attributes["url.full"] == "http://inventory/headers/orders?limit=5"
    assert client.attributes["network.peer.address"] == "127.0.0.1"
    assert client.attributes["network.peer.port"] == pair.b.node.bound["inbound"].port
    assert server.attributes["url.path"] == "/headers/orders"
    assert server.attributes["url.query"] == "limit=5"
    assert server.attributes["http.response.status_code"] == 200
    assert "error.type" not in client.attributes and "error.type" not in server.attributes
    # the server hop starts inside the client hop (both clocks are this machine's). Its end is stamped after the
    # callee's last write, which the caller may read, and end its own span on, first: no order holds for the ends
    assert client.start <= server.start <= server.end and server.start <= client.end
    assert client.end > client.start


def test_a_new_trace_and_an_error_span(pair: Pair) -> None:
    reply = http("GET", f"http://127.0.0.1:{pair.a.node.outbound}/no-such-route", headers={"Host": "inventory"})
    assert reply.status == 404
    client = wait_for(lambda: next((s for s in list(pair.otlp.spans) if s.kind == SPAN_KIND_CLIENT
                                    and s.attributes.get("url.full", "").endswith("/no-such-route")), None),
                      10, what="the 404's client span")
    assert client.parent_span_id == ""                                  # a root: no traceparent came
    assert client.attributes["error.type"] == "404"                      # client spans: 4xx are errors
    assert client.status_code == STATUS_ERROR
    assert len(client.attributes["sidecar.request_id"]) == 36
    server = wait_for(lambda: next((s for s in pair.otlp.trace(client.trace_id) if s.kind == SPAN_KIND_SERVER), None),
                      10, what="the 404's server span")
    assert server.parent_span_id == client.span_id
    assert server.attributes["http.response.status_code"] == 404
    assert "error.type" not in server.attributes                         # server spans: only 5xx
    assert server.status_code != STATUS_ERROR


def test_unknown_service_is_an_error_client_span_with_no_server_span(pair: Pair) -> None:
    reply = http("GET", f"http://127.0.0.1:{pair.a.node.outbound}/x", headers={"Host": "nowhere"})
    assert reply.status == 404 and reply.headers.get("x-sidecar-error") == "NOT_FOUND"
    span = wait_for(lambda: next((s for s in list(pair.otlp.spans) if s.attributes.get("server.address") == "nowhere"),
                                 None), 10, what="the span of the request to an unknown service")
    assert span.kind == SPAN_KIND_CLIENT and span.attributes["error.type"] == "local"
    assert pair.otlp.trace(span.trace_id) == [span]
