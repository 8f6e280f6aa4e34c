"""Certificate rotation under a reconnecting client, in-flight connections across it, session reuse."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from sidecar.tls import certs
from sidecar.tls.errors import PeerRefused
from sidecar.tls.reload import RotationPolicy
from sidecar.tls.reloader import IdentityStore, TlsPaths
from tests.integration.tls.echo import EchoServer
from tests.integration.tls.test_refusals import run
from tests.unit.tls.pki import Pki, make_pki

FAST = RotationPolicy(poll_interval=0.05, settle=1.0)


def store_for(pki: Pki, name: str) -> IdentityStore:
    d = pki.directory
    return IdentityStore.load(TlsPaths(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem"), "mesh.local",
                              policy=FAST)


def test_rotation_under_reconnecting_client_has_no_failed_handshake(tmp_path: object) -> None:
    pki = make_pki(tmp_path / "pki")  # type: ignore[operator]
    pki.leaf("alpha")
    pki.leaf("beta")
    server_store = store_for(pki, "alpha")
    client_store = store_for(pki, "beta")
    old_serial = server_store.identity.serial
    rotated: list[int] = []
    server_store.on_rotate = lambda material: rotated.append(material.identity.serial)

    async def main() -> None:
        watcher = asyncio.create_task(server_store.watch())
        try:
            async with EchoServer(server_store) as server:
                seen: list[int] = []
                failures: list[str] = []
                new_serial = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15.0
                for i in range(2000):  # bounded in count and in time
                    if loop.time() > deadline:
                        break
                    try:
                        reader, writer, peer = await client_store.connect("127.0.0.1", server.port, "alpha")
                        writer.write(f"req {i}\n".encode())
                        answer = await asyncio.wait_for(reader.readline(), 5)
                        writer.close()
                        assert answer == f"spiffe://mesh.local/service/beta req {i}\n".encode()
                        seen.append(peer.serial)
                    except (PeerRefused, ssl.SSLError, ConnectionError, AssertionError) as exc:
                        failures.append(f"{i}: {exc!r}")
                    if i == 20:  # rotate: key first, then certificate, as `sidecar certs issue` does
                        paths = certs.issue("alpha", pki.directory, "1h")
                        new_serial = certs.load_certificate(paths.cert).serial_number
                    if new_serial and seen.count(new_serial) >= 20:
                        break
                assert failures == []
                assert seen[0] == old_serial
                assert new_serial in seen and seen[-1] == new_serial
                assert rotated == [new_serial]
                assert server.refused == []
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    run(main(), timeout=40)
    assert server_store.identity.serial != old_serial
    assert server_store.status()["rotations"] == 1


def test_in_flight_connection_survives_rotation(tmp_path: object) -> None:
    pki = make_pki(tmp_path / "pki")  # type: ignore[operator]
    pki.leaf("alpha")
    pki.leaf("beta")
    server_store = store_for(pki, "alpha")
    client_store = store_for(pki, "beta")

    async def main() -> None:
        async with EchoServer(server_store) as server:
            reader, writer, before = await client_store.connect("127.0.0.1", server.port, "alpha")
            certs.issue("alpha", pki.directory, "2h")
            server_store.poll()  # what the watcher does every poll_interval
            assert server_store.identity.serial != before.serial
            # the connection made before the rotation still works, with the old certificate
            writer.write(b"still here\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"spiffe://mesh.local/service/beta still here\n"
            writer.close()
            _, writer2, after = await client_store.connect("127.0.0.1", server.port, "alpha")
            writer2.close()
            assert after.serial == server_store.identity.serial != before.serial

    run(main())


def test_mismatched_pair_keeps_serving_until_complete(tmp_path: object) -> None:
    pki = make_pki(tmp_path / "pki")  # type: ignore[operator]
    alpha = pki.leaf("alpha")
    store = store_for(pki, "alpha")
    serial = store.identity.serial
    fresh = certs.issue_from(pki.ca, "alpha", 3600)
    certs.write_file(alpha.key, fresh.key_pem, 0o600)  # only the key so far: a mismatched pair
    store.poll()
    assert store.identity.serial == serial
    assert store.last_error is not None and "is not the private key of" in store.last_error
    store.poll()  # same bad content: not retried
    certs.write_file(alpha.cert, fresh.cert_pem, 0o644)
    store.poll()
    assert store.identity.serial == fresh.certificate.serial_number
    assert store.last_error is None


def test_reconnections_resume_the_tls_session(tmp_path: object) -> None:
    pki = make_pki(tmp_path / "pki")  # type: ignore[operator]
    pki.leaf("alpha")
    pki.leaf("beta")
    server_store = store_for(pki, "alpha")
    client_store = store_for(pki, "beta")

    async def main() -> list[bool]:
        reused = []
        async with EchoServer(server_store) as server:
            for _ in range(4):
                reader, writer, peer = await client_store.connect("127.0.0.1", server.port, "alpha")
                writer.write(b"x\n")
                assert (await asyncio.wait_for(reader.readline(), 5)).endswith(b" x\n")
                reused.append(writer.get_extra_info("ssl_object").session_reused)
                assert peer.service == "alpha"  # a resumed session still proves the peer's identity
                writer.close()
                await writer.wait_closed()
            assert len(server.identities) == 4 and {i.service for i in server.identities} == {"beta"}
        return reused

    reused = run(main())
    assert reused[0] is False
    assert all(reused[1:]), reused
    assert client_store.sessions.resumed == 3


def test_dialing_the_wrong_service_is_refused(tmp_path: object) -> None:
    pki = make_pki(tmp_path / "pki")  # type: ignore[operator]
    pki.leaf("alpha")
    pki.leaf("beta")
    client_store = store_for(pki, "beta")

    async def main() -> None:
        async with EchoServer(store_for(pki, "alpha")) as server:
            try:
                await client_store.connect("127.0.0.1", server.port, "payments")
            except PeerRefused as exc:
                assert exc.reason.message == (
                    "server is spiffe://mesh.local/service/alpha, not the service payments the connection was meant for"
                )
            else:
                raise AssertionError("connected to the wrong service")
        assert client_store.refusals.total == 1

    run(main())
