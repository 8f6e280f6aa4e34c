"""What HTTP/2 framing costs in CPU per request: the two ``sidecar.http2`` cores (our own, ``sidecar.http2.core``,
compiled with mypyc; and the reference over python-hyper's h2 with our compiled HPACK, ``connection_h2``; that one
also with python-hyper's hpack for comparison) against the HTTP/1.1 parsing the proxy does today (``proxy.http1``
over httptools), for one small gRPC unary call; and our compiled HPACK and frame layer alone.

    python -m bench.http2 [--requests 20000] [--message 100] [--runs 5]

The two cores run alternately, ``--runs`` times each, and the medians are printed (the machine may be busy).

One client core and one server core, joined in memory (no sockets, so only the codec is measured). Per call:
the client opens a stream (HEADERS + DATA with END_STREAM), the server reads it, acknowledges the body and
answers HEADERS + DATA + trailers, the client reads that and acknowledges, and the server reads the client's
WINDOW_UPDATEs. Each side's CPU is timed separately. The HTTP/1.1 rows time the same call as HTTP/1.1 bytes:
the proxy's RequestReader on the request and ResponseReader on the response.

A sidecar pair runs each side twice per call (caller's sidecar: server side towards the app, client side
towards the peer; callee's sidecar: server side towards the peer, client side towards the app), so the pair's
HTTP/2 codec cost per call is 2 x (server + client).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sidecar.http2 import core, frames  # noqa: E402
from sidecar.http2.connection_h2 import HyperH2Connection as H2Connection  # noqa: E402
from sidecar.http2.events import DataReceived  # noqa: E402
from sidecar.http2.grpc import frame_message  # noqa: E402
from sidecar.proxy.http1 import RequestHead, ResponseHead  # noqa: E402
from sidecar.proxy.http1read import RequestReader, ResponseReader  # noqa: E402

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Payments/Charge"),
           (b":authority", b"payment-service"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
           (b"grpc-timeout", b"1000000u"), (b"user-agent", b"grpc-python/1.85"),
           (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


Core = type[H2Connection] | type[core.H2Connection]


def reference_hpack_in(conn: H2Connection) -> None:
    """Put python-hyper's hpack back under h2 in place of sidecar.http2.hpack (before any traffic)."""
    import hpack

    limit = conn._h2.decoder.max_header_list_size
    conn._h2.encoder = hpack.Encoder()
    conn._h2.decoder = hpack.Decoder(max_header_list_size=limit)


def bench_h2(requests: int, message: bytes, check_outbound: bool = True, reference: bool = False,
             kind: Core = H2Connection) -> tuple[float, float]:
    """Seconds of CPU per call: (server side, client side) of the core ``kind``; ``reference``: the h2 core with
    python-hyper's hpack under h2 rather than sidecar.http2.hpack."""
    client = kind(client_side=True, check_outbound=check_outbound)
    server = kind(client_side=False, check_outbound=check_outbound)
    if reference:
        assert isinstance(client, H2Connection) and isinstance(server, H2Connection)
        reference_hpack_in(client)
        reference_hpack_in(server)
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    body = frame_message(message)
    clock = time.process_time  # CPU of this process: the machine may be busy with others
    t_server = t_client = 0.0
    for _ in range(requests):
        t0 = clock()
        sid = client.start_request(REQUEST)
        client.send_data(sid, body, end_stream=True)
        wire = client.data_to_send()
        t1 = clock()
        for event in server.receive_data(wire, 0.0):
            if isinstance(event, DataReceived):
                server.acknowledge(event.stream_id, event.flow_length)
        server.send_headers(sid, RESPONSE)
        server.send_data(sid, body)
        server.send_trailers(sid, TRAILERS)
        wire = server.data_to_send()
        t2 = clock()
        for event in client.receive_data(wire, 0.0):
            if isinstance(event, DataReceived):
                client.acknowledge(event.stream_id, event.flow_length)
        wire = client.data_to_send()
        t3 = clock()
        server.receive_data(wire, 0.0)
        server.data_to_send()
        t4 = clock()
        t_client += (t1 - t0) + (t3 - t2)
        t_server += (t2 - t1) + (t4 - t3)
    assert client.open_streams == 0 and server.open_streams == 0
    return t_server / requests, t_client / requests


def bench_hpack(requests: int, own: bool = False) -> float:
    """Seconds of CPU per call for HPACK alone: encode and decode the request, response and trailer blocks;
    ``own``: sidecar.http2.hpack rather than python-hyper's hpack."""
    if own:
        from sidecar.http2.hpack import Decoder, Encoder
    else:
        from hpack import Decoder, Encoder  # type: ignore[assignment]

    encoder, decoder = Encoder(), Decoder()
    blocks = [encoder.encode(headers) for _ in range(requests) for headers in (REQUEST, RESPONSE, TRAILERS)]
    t0 = time.process_time()
    encoder = Encoder()
    for _ in range(requests):
        encoder.encode(REQUEST)
        encoder.encode(RESPONSE)
        encoder.encode(TRAILERS)
    for block in blocks:
        decoder.decode(block, raw=True)
    return (time.process_time() - t0) / requests


def bench_frames(requests: int, message: bytes) -> float:
    """Seconds of CPU per call for sidecar.http2.frames alone: both directions' frames of one call (request
    HEADERS + DATA, WINDOW_UPDATEs, response HEADERS + DATA + trailers) serialized and parsed, HPACK aside."""
    body = frame_message(message)
    request_block, response_block, trailer_block = b"x" * 40, b"x" * 4, b"x" * 6
    parser = frames.FrameParser()
    t0 = time.process_time()
    for _ in range(requests):
        sid = 1
        wire = frames.headers_frame(sid, request_block) + frames.data_frame(sid, body, end_stream=True)
        wire += frames.window_update_frame(0, len(body)) + frames.window_update_frame(sid, len(body))
        wire += frames.headers_frame(sid, response_block) + frames.data_frame(sid, body)
        wire += frames.headers_frame(sid, trailer_block, end_stream=True)
        wire += frames.window_update_frame(0, len(body))
        for frame in parser.feed(wire):
            _ = frame.data
    return (time.process_time() - t0) / requests


class _Sink:
    def on_request_head(self, head: RequestHead) -> None:
        _ = (head.path, head.host, head.to_bytes())

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        pass

    def on_response_interim(self, head: ResponseHead) -> None:
        pass

    def on_response_head(self, head: ResponseHead) -> None:
        _ = head.status

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        pass


def bench_http1(requests: int, message: bytes) -> tuple[float, float]:
    """Seconds of CPU per call: (request parse, response parse), the proxy's readers over httptools."""
    body = frame_message(message)
    head = b"POST /pkg.Payments/Charge HTTP/1.1\r\nhost: payment-service\r\ncontent-type: application/grpc\r\n"
    head += b"te: trailers\r\ngrpc-timeout: 1000000u\r\nuser-agent: grpc-python/1.85\r\n"
    head += b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    request = head + b"content-length: %d\r\n\r\n" % len(body) + body
    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    sink = _Sink()
    reader, responses = RequestReader(sink), ResponseReader(sink)  # type: ignore[arg-type]
    clock = time.process_time  # CPU of this process: the machine may be busy with others
    t_req = t_resp = 0.0
    for _ in range(requests):
        t0 = clock()
        reader.feed(request)
        t1 = clock()
        responses.expect(False)
        responses.feed(response)
        t2 = clock()
        t_req += t1 - t0
        t_resp += t2 - t1
    return t_req / requests, t_resp / requests


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--message", type=int, default=100, help="bytes of the gRPC message each way")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs of each core; medians are shown")
    args = parser.parse_args()
    message = b"m" * args.message
    n = args.requests
    for kind in (H2Connection, core.H2Connection):  # warm up
        bench_h2(500, message, kind=kind)
    bench_http1(500, message)
    runs: dict[str, list[tuple[float, float]]] = {"h2": [], "own": [], "h2 unchecked": [], "own unchecked": []}
    for _ in range(args.runs):  # alternating: the same load for both
        runs["h2"].append(bench_h2(n, message))
        runs["own"].append(bench_h2(n, message, kind=core.H2Connection))
        runs["h2 unchecked"].append(bench_h2(n, message, check_outbound=False))
        runs["own unchecked"].append(bench_h2(n, message, check_outbound=False, kind=core.H2Connection))
    side = {name: (median([r[0] for r in rs]), median([r[1] for r in rs])) for name, rs in runs.items()}
    hyper = median([sum(bench_h2(n, message, reference=True)) for _ in range(3)])
    h1_req, h1_resp = min((bench_http1(n, message) for _ in range(3)), key=sum)
    hpack = min(bench_hpack(n) for _ in range(3))
    own_hpack = min(bench_hpack(n, own=True) for _ in range(3))
    own_frames = min(bench_frames(n, message) for _ in range(3))
    us = 1e6
    print(f"{n} calls, {args.message}-byte messages, medians of {args.runs} alternating runs (µs of CPU per call)")
    for name, label in (("h2", "h2 core (h2 + sidecar.http2.hpack)"), ("own", "own core (sidecar.http2.core)"),
                        ("h2 unchecked", "h2 core, outgoing headers unchecked (as h2down)"),
                        ("own unchecked", "own core, outgoing headers unchecked (as h2down)")):
        server, client = side[name]
        print(f"  {label:52} server {server * us:7.1f}  client {client * us:7.1f}  both {(server + client) * us:7.1f}")
    h2_both, own_both = sum(side["h2"]), sum(side["own"])
    print(f"  own core / h2 core, both sides: {own_both / h2_both:.2f}x")
    print(f"  h2 core with python-hyper's hpack, both sides                       {hyper * us:8.1f}")
    print(f"    python-hyper's hpack alone (the three header blocks encoded and decoded) {hpack * us:8.1f}")
    print(f"    sidecar.http2.hpack alone (the same three blocks)                   {own_hpack * us:8.1f}")
    print(f"  sidecar.http2.frames alone: one call's frames both ways, built+parsed {own_frames * us:8.1f}")
    print(f"  HTTP/1.1 request parse (proxy.http1 over httptools)                   {h1_req * us:8.1f}")
    print(f"  HTTP/1.1 response parse                                               {h1_resp * us:8.1f}")
    h1_side = h1_req + h1_resp
    for name in ("h2", "own"):
        print(f"  {name} core: one hop, HTTP/2 both sides vs HTTP/1.1 parse both ways: "
              f"{sum(side[name]) * us:.1f} vs {h1_side * us:.1f}  ratio {sum(side[name]) / h1_side:.1f}x;"
              f" a sidecar pair (two hops each way): {2 * sum(side[name]) * us:.1f} µs a call")


if __name__ == "__main__":
    main()
