"""What OpenSSL itself keeps per server-side TLS session, in this process: ``count`` handshakes between the inbound's
server context and a peer's client context over memory BIOs (no sockets, no event loop), the server ends kept,
the bytes malloc'd counted by glibc's ``mallinfo2`` (OpenSSL allocates with malloc; Python's small objects are
not in it). With ``verify_client=False`` the server asks for no certificate: the difference is what the verified
peer certificate costs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import ssl

from sidecar.tls.context import server_context

_FIELDS = ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _malloced() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "web",
              session: ssl.SSLSession | None = None) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    """A completed handshake over memory BIOs: the server end, the client end (after it has read what the server
    sent after the handshake: the session tickets) and the four BIOs."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname, session=session)
    for _ in range(10):   # TLS 1.3 with a client certificate: two flights each way
        for end in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        c_in.write(s_out.read())
        s_in.write(c_out.read())
    with contextlib.suppress(ssl.SSLWantReadError):
        c.read(1)          # takes the session tickets
    assert s.version() is not None and c.version() is not None, "handshake did not complete"
    return s, c, [s_in, s_out, c_in, c_out]


def _server_end(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, list[ssl.MemoryBIO]]:
    s, _, bios = handshake(server, client)
    return s, bios[:2]


def per_session(count: int, ca: str, cert: str, key: str, client_cert: str, client_key: str,
                verify_client: bool = True) -> float:
    """Bytes malloc'd per server-side session held after its handshake."""
    server = server_context(ca, cert, key, diagnose=False)
    if not verify_client:
        server.verify_mode = ssl.CERT_NONE
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(ca)
    client.load_cert_chain(client_cert, client_key)
    held = [_server_end(server, client) for _ in range(20)]   # first allocations of the contexts, not per session
    gc.collect()
    before = _malloced()
    held += [_server_end(server, client) for _ in range(count)]
    gc.collect()
    return (_malloced() - before) / count
