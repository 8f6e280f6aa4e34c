"""The inbound mTLS listener with real clients: every refusal is refused and logged with its reason."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from sidecar.tls import certs
from sidecar.tls.reasons import Refusal
from sidecar.tls.reloader import IdentityStore, TlsPaths
from tests.integration.tls.echo import EchoServer
from tests.unit.tls.pki import Pki, make_pki

T = TypeVar("T")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl (Debian package openssl) is not installed")


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    pki.leaf("alpha")
    pki.leaf("beta")
    pki.expired("old")
    pki.without_spiffe_id("anon")
    pki.foreign_trust_domain("stranger")
    pki.ca_as_leaf("subca")
    pki.upper_case_scheme("shouty")
    return pki


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    other = make_pki(tmp_path_factory.mktemp("foreign"), "mesh.local")  # same trust domain, another CA
    other.leaf("evil")
    return other


def store_for(pki: Pki, name: str) -> IdentityStore:
    d = pki.directory
    return IdentityStore.load(TlsPaths(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem"), "mesh.local")


def client_ctx(pki: Pki, name: str | None, trust: Path | None = None, max_version: ssl.TLSVersion | None = None
               ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(trust or pki.ca_path)
    if name is not None:
        ctx.load_cert_chain(pki.directory / f"{name}.pem", pki.directory / f"{name}-key.pem")
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def python_client(port: int, ctx: ssl.SSLContext, line: bytes = b"ping\n") -> bytes:
    """Connect, send a line, read the answer; b'' when the server refused after the handshake (TLS 1.3)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, ssl_handshake_timeout=5)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


async def openssl_client(port: int, *args: str, stdin: bytes = b"ping\n") -> tuple[int, bytes]:
    assert OPENSSL is not None
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out


# ------------------------------------------------------------------------------------------ python ssl


def test_good_client_is_accepted_and_its_identity_seen(pki: Pki) -> None:
    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            answer = await python_client(server.port, client_ctx(pki, "beta"))
            assert answer == b"spiffe://mesh.local/service/beta ping\n"
            assert [i.service for i in server.identities] == ["beta"]
            beta = certs.load_certificate(pki.directory / "beta.pem")
            assert server.identities[0].serial == beta.serial_number
            assert server.identities[0].not_after == beta.not_valid_after_utc
            assert server.refused == []

    run(main())


@pytest.mark.parametrize(
    ("client", "trust", "kind", "words"),
    [
        (None, None, Refusal.NO_CERTIFICATE, "peer presented no certificate"),
        ("old", None, Refusal.EXPIRED, "client certificate expired at 20"),
        ("evil", "foreign", Refusal.UNKNOWN_CA,
         "certificate not signed by the mesh CA (issuer CN=sidecar CA mesh.local"),
        ("anon", None, Refusal.NO_SPIFFE_ID, "no SPIFFE ID in the certificate"),
        ("stranger", None, Refusal.FOREIGN_TRUST_DOMAIN,
         "SPIFFE ID spiffe://other.example/service/stranger outside trust domain mesh.local"),
        # X.509-SVID: a leaf, never a CA; the scheme in lower case
        ("subca", None, Refusal.BAD_CERTIFICATE, "client certificate is a CA certificate"),
        ("shouty", None, Refusal.NO_SPIFFE_ID, "must start with spiffe:// (lower case)"),
    ],
)
def test_python_client_refusals(pki: Pki, foreign: Pki, client: str | None, trust: str | None, kind: Refusal,
                                words: str, caplog: pytest.LogCaptureFixture) -> None:
    source = foreign if trust == "foreign" else pki

    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            ctx = client_ctx(source, client, trust=pki.ca_path)
            answer = await python_client(server.port, ctx)
            refused = await server.wait_refused()
            assert answer == b""
            assert [r.kind for r in refused] == [kind]
            assert words in refused[0].message
            assert server.identities == []

    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        run(main())
    assert any(words in r.getMessage() and "from 127.0.0.1:" in r.getMessage() for r in caplog.records)


def test_expired_reason_names_the_exact_time(pki: Pki) -> None:
    old = certs.load_certificate(pki.directory / "old.pem")

    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            await python_client(server.port, client_ctx(pki, "old"))
            refused = await server.wait_refused()
            stamp = old.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert refused[0].message == f"client certificate expired at {stamp}"

    run(main())


def test_tls12_client_refusals_are_as_precise(pki: Pki, foreign: Pki) -> None:
    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            await python_client(server.port, client_ctx(pki, "old", max_version=ssl.TLSVersion.TLSv1_2))
            await python_client(server.port, client_ctx(foreign, "evil", trust=pki.ca_path,
                                                        max_version=ssl.TLSVersion.TLSv1_2))
            refused = await server.wait_refused(2)
            assert [r.kind for r in refused] == [Refusal.EXPIRED, Refusal.UNKNOWN_CA]
            assert "issuer CN=sidecar CA mesh.local, key id" in refused[1].message
            ok = await python_client(server.port, client_ctx(pki, "beta", max_version=ssl.TLSVersion.TLSv1_2))
            assert ok.startswith(b"spiffe://mesh.local/service/beta")

    run(main())


def test_plaintext_http_is_refused_with_a_reason(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: alpha\r\n\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
            writer.close()
            refused = await server.wait_refused()
            assert refused[0].kind is Refusal.PLAINTEXT_HTTP
            assert refused[0].message == "plaintext HTTP on the mTLS port"

    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        run(main())
    assert any("plaintext HTTP on the mTLS port" in r.getMessage() for r in caplog.records)


def test_plaintext_other_bytes_refused(pki: Pki) -> None:
    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"\x00\x01hello there, not TLS at all\r\n" * 4)
                refused = await server.wait_refused()
            assert refused[0].kind is Refusal.PLAINTEXT

    run(main())


def test_refusals_are_counted_on_the_store(pki: Pki) -> None:
    async def main() -> None:
        store = store_for(pki, "alpha")
        async with EchoServer(store) as server:
            await python_client(server.port, client_ctx(pki, None))
            await python_client(server.port, client_ctx(pki, "old"))
            await server.wait_refused(2)
        snap = store.status()["refusals"]
        assert snap["total"] == 2
        assert snap["by_reason"] == {"expired": 1, "no-certificate": 1}

    run(main())


# ------------------------------------------------------------------------------------------ openssl s_client


@needs_openssl
def test_openssl_good_client(pki: Pki) -> None:
    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            d = pki.directory
            _, out = await openssl_client(server.port, "-CAfile", str(pki.ca_path), "-cert", str(d / "beta.pem"),
                                             "-key", str(d / "beta-key.pem"))
            assert b"spiffe://mesh.local/service/beta ping" in out, out
            assert server.identities[0].service == "beta"

    run(main())


@needs_openssl
@pytest.mark.parametrize(
    ("args", "kind", "words"),
    [
        ([], Refusal.NO_CERTIFICATE, "peer presented no certificate"),
        (["-cert", "{d}/old.pem", "-key", "{d}/old-key.pem"], Refusal.EXPIRED, "client certificate expired at 20"),
        (["-cert", "{f}/evil.pem", "-key", "{f}/evil-key.pem"], Refusal.UNKNOWN_CA,
         "certificate not signed by the mesh CA (issuer CN="),
        (["-cert", "{d}/stranger.pem", "-key", "{d}/stranger-key.pem"], Refusal.FOREIGN_TRUST_DOMAIN,
         "outside trust domain mesh.local"),
        (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-cert", "{d}/beta.pem", "-key", "{d}/beta-key.pem"],
         Refusal.PROTOCOL_VERSION, "protocol version TLSv1.1 refused (minimum TLSv1.2)"),
    ],
    ids=["no-cert", "expired", "foreign-ca", "foreign-td", "tls1.1"],
)
def test_openssl_refusals(pki: Pki, foreign: Pki, args: list[str], kind: Refusal, words: str,
                          caplog: pytest.LogCaptureFixture) -> None:
    filled = [a.format(d=pki.directory, f=foreign.directory) for a in args]

    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            _, out = await openssl_client(server.port, "-CAfile", str(pki.ca_path), *filled)
            refused = await server.wait_refused()
            assert b"spiffe://" not in out  # no answer came back
            assert [r.kind for r in refused] == [kind]
            assert words in refused[0].message

    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        run(main())
    assert any(words in r.getMessage() for r in caplog.records)


def test_the_same_under_uvloop(pki: Pki) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            answer = await python_client(server.port, client_ctx(pki, "beta"))
            assert answer == b"spiffe://mesh.local/service/beta ping\n"
            await python_client(server.port, client_ctx(pki, "old"))
            await python_client(server.port, client_ctx(pki, None))
            refused = await server.wait_refused(2)
            assert [r.kind for r in refused] == [Refusal.EXPIRED, Refusal.NO_CERTIFICATE]
            assert refused[0].message.startswith("client certificate expired at 20")
            client = store_for(pki, "beta")
            reused = []
            for _ in range(3):
                reader, writer, peer = await client.connect("127.0.0.1", server.port, "alpha")
                assert peer.service == "alpha"
                writer.write(b"x\n")
                assert (await asyncio.wait_for(reader.readline(), 5)).endswith(b" x\n")
                reused.append(writer.get_extra_info("ssl_object").session_reused)
                writer.close()
                await writer.wait_closed()
            assert reused == [False, True, True]

    uvloop.run(asyncio.wait_for(main(), 30))
