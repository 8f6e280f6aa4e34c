"""What goes on the wire to a TLS client: a response head and its body leave in one TLS record, not one each."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sidecar.proxy import ConnectionInfo, HttpProxy, RequestHead, Target
from tests.integration.proxy.conftest import LoopThread
from tests.integration.proxy.pki import make_pki

BODY = b"x" * 100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + BODY
APPLICATION_DATA = 23


def application_records(data: bytes) -> int:
    """TLS records of type application_data in ``data`` (which starts at a record boundary)."""
    count = pos = 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        count += data[pos] == APPLICATION_DATA
        pos += 5 + length
    assert pos == len(data), "the capture does not end at a record boundary"
    return count


def test_a_response_head_and_body_leave_in_one_tls_record(loop_thread: LoopThread, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def run() -> int:
        async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(RESPONSE)   # head and body in one write: one read on the proxy's side
            writer.close()

        backend_server = await asyncio.start_server(backend, "127.0.0.1", 0)
        target = Target(("127.0.0.1", backend_server.sockets[0].getsockname()[1]))

        def route(head: RequestHead, conn: ConnectionInfo) -> Target:
            return target

        proxy = HttpProxy(route, name="inbound")
        server = await proxy.listen("127.0.0.1", 0, ssl_context=pki.server_context())
        proxy_port = server.sockets[0].getsockname()[1]
        captured = bytearray()   # what the proxy sent to the client, as it went over TCP

        async def sniff(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", proxy_port)

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        if record:
                            captured.extend(data)
                        dst.write(data)
                dst.close()

            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

        relay = await asyncio.start_server(sniff, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", relay.sockets[0].getsockname()[1], ssl=pki.client_context(), server_hostname="localhost")
            request = b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n"
            writer.write(request)   # the first exchange also carries the handshake's tail and session tickets
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(BODY))
            start = len(captured)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(len(BODY)) == BODY
            writer.close()
            return application_records(bytes(captured[start:]))
        finally:
            relay.close()
            await proxy.close(grace=0.5)
            backend_server.close()

    assert loop_thread.run(run(), timeout=20) == 1
