"""What a data-plane TLS connection keeps and receives, on real TLS 1.3 handshakes over memory BIOs (no sockets):
a full handshake brings the client one session ticket (not OpenSSL's two: the client keeps one session per peer, so
a second ticket is work for both ends that nothing uses) and that ticket resumes the next connection; the decoded
peer certificate the event loop asks every connection for is decoded only when read, and reads the same."""

from __future__ import annotations

import ssl
import tracemalloc
from pathlib import Path
from typing import Any

from bench.memory.openssl import handshake as handshake_over_bios
from sidecar.tls.context import (
    TICKETS_PER_HANDSHAKE,
    MeshContext,
    PeerCertificate,
    client_context,
    server_context,
)
from tests.unit.tls.pki import make_pki

NEW_SESSION_TICKET = ssl._TLSMessageType.NEWSESSION_TICKET  # type: ignore[attr-defined]
HANDSHAKE = ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]


def contexts(tmp_path: Path) -> tuple[MeshContext, MeshContext]:
    pki = make_pki(tmp_path / "pki")
    alpha, beta = pki.leaf("alpha"), pki.leaf("beta")
    return (server_context(pki.ca_path, alpha.cert, alpha.key),
            client_context(pki.ca_path, beta.cert, beta.key))


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None,
              ) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A completed TLS 1.3 handshake: the client end (after it has read the tickets) and the server end."""
    s, c, _ = handshake_over_bios(server, client, "p1.peer.sidecar.invalid", session)
    assert c.version() == "TLSv1.3" and s.version() == "TLSv1.3"
    return c, s


def test_a_full_handshake_brings_the_client_one_ticket_and_it_resumes(tmp_path: Path) -> None:
    server, client = contexts(tmp_path)
    tickets: list[int] = []

    def count(_: Any, direction: str, __: Any, content_type: Any, msg_type: Any, ___: bytes) -> None:
        if direction == "read" and content_type == HANDSHAKE and msg_type == NEW_SESSION_TICKET:
            tickets.append(1)

    client._msg_callback = count  # type: ignore[attr-defined]
    first, _ = handshake(server, client)
    assert len(tickets) == TICKETS_PER_HANDSHAKE == 1
    session = first.session
    assert session is not None and session.has_ticket
    resumed, _ = handshake(server, client, session)
    assert resumed.session_reused


def test_the_decoded_peer_certificate_costs_nothing_until_read_and_reads_as_ssl_decodes_it(tmp_path: Path) -> None:
    server, client = contexts(tmp_path)
    ends = handshake(server, client)
    for end in ends:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = end.getpeercert()   # what the event loop keeps for the connection's life
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 256, f"{held} bytes held for a peer certificate nobody read"   # decoded: ~1.7 KiB
        assert isinstance(kept, PeerCertificate)
        decoded = end._sslobj.getpeercert()  # type: ignore[attr-defined]  # ssl's own decoding
        assert decoded and dict(kept) == decoded and kept == decoded and kept["subjectAltName"][0][0] == "URI"
        assert end.getpeercert(binary_form=True) == end._sslobj.getpeercert(True)  # type: ignore[attr-defined]
