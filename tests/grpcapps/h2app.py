"""An HTTP/2 app that is not gRPC: h2c with prior knowledge only (an HTTP/1.1 request is refused, as by an
app that speaks nothing else), on the ``h2`` library. ``python -m tests.grpcapps.h2app [--port 0]
[--instance h2]`` prints ``PORT <n>`` once listening.

Every request is answered 200 with JSON {"protocol": "HTTP/2", "instance", "method", "path", "authority",
"received": body bytes, "headers": [[name, value]...]}; ``GET /bytes/N`` answers N bytes instead (flow
control respected), ``/slow/MS`` answers after MS milliseconds. Bodies are read whole (the tests send small
ones). ``--max-streams N`` advertises SETTINGS_MAX_CONCURRENT_STREAMS N; ``serve(live=...)`` keeps the set of
connections open and GOAWAY frames received, for tests that watch the app's side of a pool; ``settings_delay``
holds the app's SETTINGS (and its reading) back that many seconds after accepting, as a loaded peer's would be."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

READ_SIZE = 1 << 16


@dataclass
class _Request:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


@dataclass
class Live:
    """The app's side of the connections a client opened: those open now, and GOAWAYs received."""

    open: set[H2App] = field(default_factory=set)
    accepted: int = 0
    goaways: int = 0


class H2App(asyncio.Protocol):
    def __init__(self, instance: str, max_streams: int | None = None, live: Live | None = None,
                 settings_delay: float = 0.0) -> None:
        self.instance = instance
        self.settings_delay = settings_delay
        self.early: bytearray | None = None  # bytes received before the SETTINGS went out
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if max_streams is not None:   # in the first SETTINGS frame, as gRPC servers send it
            self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, _Request] = {}
        self.pending: dict[int, bytes] = {}  # stream -> body still to send, waiting for window
        self.cancelled: set[int] = set()  # streams the client reset

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.live is not None:
            self.live.open.add(self)
            self.live.accepted += 1
        if self.settings_delay > 0:
            self.early = bytearray()
            asyncio.get_running_loop().call_later(self.settings_delay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self.conn.initiate_connection()
        self._flush()
        early, self.early = self.early, None
        if early:
            self.data_received(bytes(early))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live is not None:
            self.live.open.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.early is not None:
            self.early += data
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()  # h2 queued a GOAWAY saying why
            if self.transport is not None:
                self.transport.close()
            return
        # A reset read in the same batch as the request it cancels is known before that request is answered: h2
        # has already closed the stream, and forgets it once a later stream of the batch opens (sending on it then
        # raises StreamIDTooLowError, not StreamClosedError).
        self.cancelled.update(e.stream_id for e in events if isinstance(e, h2.events.StreamReset))
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = _Request([(str(k), str(v)) for k, v in event.headers])
            elif isinstance(event, h2.events.DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                for stream in list(self.pending):
                    self._send(stream)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
                self.cancelled.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated) and self.live is not None:
                self.live.goaways += 1
        self._flush()

    def _answer(self, stream: int) -> None:
        request = self.requests.pop(stream, None)
        if request is None:
            return
        head = dict(request.headers)
        path = head.get(":path", "")
        route = path.partition("?")[0]
        if route.startswith("/slow/") and route[6:].isdigit():
            asyncio.get_running_loop().call_later(int(route[6:]) / 1000, self._answer_now, stream, request)
            return
        self._answer_now(stream, request)

    def _answer_now(self, stream: int, request: _Request) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if stream in self.cancelled:
            return  # reset by the client while it waited
        head = dict(request.headers)
        path = head.get(":path", "")
        if path.startswith("/bytes/") and path[7:].isdigit():
            body, kind = b"b" * int(path[7:]), "application/octet-stream"
        else:
            body = json.dumps({"protocol": "HTTP/2", "instance": self.instance, "method": head.get(":method"),
                               "path": path, "authority": head.get(":authority"), "received": len(request.body),
                               "headers": [list(h) for h in request.headers]}).encode()
            kind = "application/json"
        try:
            self.conn.send_headers(stream, [(":status", "200"), ("content-type", kind),
                                            ("content-length", str(len(body))), ("x-instance", self.instance)])
        except h2.exceptions.StreamClosedError:
            return   # closed by h2 itself (a stream error it answered)
        self.pending[stream] = body
        self._send(stream)
        self._flush()

    def _send(self, stream: int) -> None:
        body = self.pending[stream]
        size = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size, len(body))
        while size > 0 or not body:
            end = size == len(body)
            self.conn.send_data(stream, body[:size], end_stream=end)
            body = body[size:]
            if end:
                del self.pending[stream]
                return
            size = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size, len(body))
        self.pending[stream] = body

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


async def serve(host: str, port: int, instance: str, max_streams: int | None = None,
                live: Live | None = None, settings_delay: float = 0.0, **options: Any) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: H2App(instance, max_streams, live, settings_delay), host, port,
                                    **options)


async def _main(host: str, port: int, instance: str, max_streams: int | None) -> None:
    server = await serve(host, port, instance, max_streams)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", default="h2")
    parser.add_argument("--max-streams", type=int, default=None, help="SETTINGS_MAX_CONCURRENT_STREAMS")
    args = parser.parse_args()
    asyncio.run(_main(args.host, args.port, args.instance, args.max_streams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
