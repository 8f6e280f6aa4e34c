"""A small mTLS echo server on the sidecar's server context: one line in, identity and line out."""

from __future__ import annotations

import asyncio
import contextlib

from sidecar.tls.handshake import MtlsServer
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reasons import RefusalReason
from sidecar.tls.reloader import IdentityStore


class EchoServer:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store
        self.identities: list[PeerIdentity] = []
        self.refused: list[RefusalReason] = []
        self.port = 0
        self._server: MtlsServer | None = None
        self._refusal = asyncio.Event()

    async def __aenter__(self) -> EchoServer:
        self.store.refusals.on_record = lambda r: self._refused(RefusalReason(r.kind, r.message))
        self._server = await self.store.serve(self._handle, "127.0.0.1", 0, timeout=5.0)
        self.port = self._server.address[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed(timeout=5.0)

    def _refused(self, reason: RefusalReason) -> None:
        self.refused.append(reason)
        self._refusal.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: PeerIdentity) -> None:
        try:
            self.identities.append(identity)
            line = await asyncio.wait_for(reader.readline(), 5.0)
            writer.write(f"{identity.spiffe_id} {line.decode().strip()}\n".encode())
            await writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_refused(self, count: int = 1, timeout: float = 5.0) -> list[RefusalReason]:
        async def enough() -> None:
            while len(self.refused) < count:
                self._refusal.clear()
                await self._refusal.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough(), timeout)
        return self.refused
