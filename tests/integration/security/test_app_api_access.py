"""The app API of a real ``sidecar run`` process, called with real curl: a browser's requests (a cross-site POST
with ``text/plain``, a DNS-rebinding page's foreign ``Host``, ``Sec-Fetch-Site: cross-site``) are refused; curl,
the SDK and apps keep working; with ``api.token_file`` every request needs the token."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import SidecarClient, UnauthenticatedError
from tests.harness import SidecarProcess, http
from tests.integration.security.secrets import new_token

REGISTRATION = '{"name": "pay", "version": "1.0.0", "port": 3999}'
BULK = '[{"type": "t", "payload": 1}, {"type": "t", "payload": 2}]'


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """``curl -s`` as a shell user runs it: status, headers (lower case), body."""
    done = subprocess.run(["curl", "-sS", "--max-time", "10", "-D", "-", *args], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")   # text mode: curl's CRLF read as LF
    lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def registered(process: SidecarProcess, headers: dict[str, str] | None = None) -> list[str]:
    return sorted(s["name"] for s in http("GET", process.api + "/v1/services", headers=headers).json())


def published(process: SidecarProcess) -> int:
    """Messages the sidecar took for publishing (stored, or taken for a topic no one subscribes to)."""
    return int(http("GET", process.admin + "/messaging").json()["counters"].get("published", 0))


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    process = SidecarProcess(tmp_path, {}).start()
    yield process
    assert process.terminate() == 0


def test_curl_from_a_shell_keeps_working(sidecar: SidecarProcess) -> None:
    api = sidecar.api
    port = api.rsplit(":", 1)[1]
    status, _, body = curl("-X", "PUT", "-d", REGISTRATION, api + "/v1/services")
    assert status == 200 and json.loads(body)["id"], body
    status, _, body = curl("-d", '{"type": "t", "payload": {"n": 1}}', api + "/v1/publish/orders")
    assert status == 202, body
    status, _, body = curl("-d", BULK, api + "/v1/publish/bulk/orders")
    assert status == 202 and len(json.loads(body)["ids"]) == 2, body
    # the listener's own address and localhost, with or without the port, IPv6 literal too
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "localhost", "LOCALHOST.", "[::1]",
                 f"[::1]:{port}", "127.0.0.2:80"):
        status, _, body = curl("-H", f"Host: {host}", api + "/v1/services")
        assert status == 200 and "pay" in body, (host, status, body)


@pytest.mark.parametrize(("what", "headers"), [
    ("a cross-site form POST", ["-H", "Origin: http://evil.example", "-H", "Content-Type: text/plain"]),
    ("a sandboxed page", ["-H", "Origin: null", "-H", "Content-Type: text/plain"]),
    ("another local page", ["-H", "Origin: http://localhost:8080"]),
    ("a fetch without Origin", ["-H", "Sec-Fetch-Site: cross-site", "-H", "Sec-Fetch-Mode: no-cors"]),
    ("a DNS-rebinding page", ["-H", "Host: evil.example"]),
    ("a rebinding page with the port", ["-H", "Host: evil.example:3500"]),
    ("a Host that is no host", ["-H", "Host: ::1"]),
])
def test_a_browsers_requests_are_refused_and_change_nothing(sidecar: SidecarProcess, what: str,
                                                            headers: list[str]) -> None:
    api = sidecar.api
    for method, path, body in (("PUT", "/v1/services", REGISTRATION),
                               ("POST", "/v1/publish/orders", '{"type": "t", "payload": 1}'),
                               ("POST", "/v1/publish/bulk/orders", BULK),
                               ("POST", "/v1/subscriptions", '{"topic": "orders", "path": "/x"}'),
                               ("GET", "/v1/catalog", None), ("GET", "/v1/events", None)):
        data = ["-d", body] if body is not None else []
        status, answer_headers, answer = curl("-X", method, *headers, *data, api + path)
        assert status == 403, (what, method, path, status, answer)
        assert answer_headers.get("x-sidecar-error") == "PERMISSION_DENIED"
        assert json.loads(answer)["error"]["code"] == "PERMISSION_DENIED"
    assert registered(sidecar) == []
    assert published(sidecar) == 0


def test_a_real_dns_rebinding_name_is_refused(sidecar: SidecarProcess) -> None:
    # curl resolves the attacker's name to this host, as a rebinding page's browser does: Host names the attacker
    port = sidecar.api.rsplit(":", 1)[1]
    status, _, body = curl("--resolve", f"rebind.evil.example:{port}:127.0.0.1", "-X", "PUT", "-d", REGISTRATION,
                           f"http://rebind.evil.example:{port}/v1/services")
    assert status == 403 and "PERMISSION_DENIED" in body, body
    assert registered(sidecar) == []


def test_with_a_token_every_request_needs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = new_token()
    (tmp_path / "api-token").write_text(token + "\n")
    process = SidecarProcess(tmp_path, {"api": {"token_file": str(tmp_path / "api-token")}}).start()
    try:
        api = process.api
        for headers in ([], ["-H", "Authorization: Bearer " + new_token()], ["-H", f"Authorization: {token}"],
                        ["-H", f"Authorization: Basic {token}"], ["-H", f"Authorization: Bearer {token}x"]):
            for method, path, body in (("PUT", "/v1/services", REGISTRATION), ("GET", "/v1/catalog", None),
                                       ("GET", "/v1/services", None), ("GET", "/v1/events", None),
                                       ("POST", "/v1/publish/orders", '{"type": "t", "payload": 1}'),
                                       ("POST", "/v1/publish/bulk/orders", BULK)):
                data = ["-d", body] if body is not None else []
                status, answer_headers, answer = curl("-X", method, *headers, *data, api + path)
                assert status == 401, (headers, method, path, answer)
                assert answer_headers.get("x-sidecar-error") == "UNAUTHENTICATED"
                assert token not in answer
        assert published(process) == 0
        good = ["-H", f"Authorization: Bearer {token}"]
        status, _, body = curl("-X", "PUT", *good, "-d", REGISTRATION, api + "/v1/services")
        assert status == 200, body
        # the token does not make a browser's request acceptable
        status, _, _ = curl("-X", "PUT", *good, "-H", "Origin: http://evil.example", "-d", REGISTRATION,
                            api + "/v1/services")
        assert status == 403

        async def sdk() -> None:
            async with SidecarClient(api, token=token) as client:
                assert [s.name for s in await client.services()] == ["pay"]
                await client.publish("orders", "t", {"n": 1})
                assert len(await client.publish_many("orders", json.loads(BULK))) == 2
            monkeypatch.setenv("SIDECAR_API_TOKEN_FILE", str(tmp_path / "api-token"))
            async with SidecarClient(api) as client:   # as an app started with the variable set
                assert await client.register_service("cart", "1.0.0", 3998)
            monkeypatch.delenv("SIDECAR_API_TOKEN_FILE")
            async with SidecarClient(api) as client:
                with pytest.raises(UnauthenticatedError):
                    await client.services()

        asyncio.run(asyncio.wait_for(sdk(), 30))
        assert sorted(s["name"] for s in http("GET", api + "/v1/services",
                                              headers={"Authorization": f"Bearer {token}"}).json()) == ["cart", "pay"]
    finally:
        assert process.terminate() == 0
