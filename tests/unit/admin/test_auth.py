"""The admin port's access rule, a pure function: a table of requests and what each gets."""

from __future__ import annotations

import pytest

from sidecar.admin.auth import check_request, exposure_warning, is_loopback
from sidecar.errors import Code

TOKEN = "t0ken-5ecret"


@pytest.mark.parametrize(("method", "token", "authorization", "peer", "origin", "expected"), [
    # without a token, reads are open to anyone
    ("GET", None, None, "10.0.0.9", None, None),
    ("HEAD", None, None, "10.0.0.9", "https://evil.example", None),
    ("OPTIONS", None, None, "203.0.113.7", None, None),
    # with a token, reads other than the probes need it too (the path here is /deadletters)
    ("GET", TOKEN, None, "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("GET", TOKEN, "Bearer wrong", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("HEAD", TOKEN, None, "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("OPTIONS", TOKEN, None, "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("GET", TOKEN, f"Bearer {TOKEN}", "10.0.0.9", None, None),
    # with a token: the right bearer token from anywhere, nothing else
    ("POST", TOKEN, f"Bearer {TOKEN}", "10.0.0.9", None, None),
    ("POST", TOKEN, f"bearer {TOKEN}", "127.0.0.1", "https://evil.example", None),
    ("DELETE", TOKEN, f"Bearer  {TOKEN} ", "127.0.0.1", None, None),
    ("POST", TOKEN, None, "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, "", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, "Bearer", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, "Bearer ", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, f"Basic {TOKEN}", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, f"Bearer {TOKEN}x", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("POST", TOKEN, f"Bearer {TOKEN[:-1]}", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("PUT", TOKEN, "Bearer wrong", "127.0.0.1", None, Code.UNAUTHENTICATED),
    ("PATCH", TOKEN, None, "10.0.0.9", None, Code.UNAUTHENTICATED),
    # without a token: loopback peers only, and never a web page
    ("POST", None, None, "127.0.0.1", None, None),
    ("POST", None, None, "127.9.8.7", None, None),
    ("POST", None, None, "::1", None, None),
    ("POST", None, None, "::ffff:127.0.0.1", None, None),
    ("POST", None, "Bearer anything", "127.0.0.1", None, None),
    ("POST", None, None, "10.0.0.9", None, Code.PERMISSION_DENIED),
    ("POST", None, None, "::ffff:10.0.0.9", None, Code.PERMISSION_DENIED),
    ("POST", None, None, "fe80::1%eth0", None, Code.PERMISSION_DENIED),
    ("POST", None, None, None, None, Code.PERMISSION_DENIED),
    ("POST", None, None, "not-an-address", None, Code.PERMISSION_DENIED),
    ("POST", None, None, "127.0.0.1", "https://evil.example", Code.PERMISSION_DENIED),
    ("POST", None, None, "127.0.0.1", "null", Code.PERMISSION_DENIED),
    ("DELETE", None, None, "127.0.0.1", "http://127.0.0.1:9901", Code.PERMISSION_DENIED),
])
def test_who_may_change_the_sidecar(method: str, token: str | None, authorization: str | None, peer: str | None,
                                    origin: str | None, expected: Code | None) -> None:
    refusal = check_request(method, token, authorization, peer, origin, path="/deadletters")
    assert (refusal.code if refusal is not None else None) == expected


@pytest.mark.parametrize(("method", "path", "token", "expected"), [
    # the probes answer reads without the token: kubelet probes and Prometheus's scrape
    ("GET", "/ready", TOKEN, None),
    ("GET", "/healthz", TOKEN, None),
    ("GET", "/metrics", TOKEN, None),
    ("HEAD", "/ready", TOKEN, None),
    # ... only those paths, exactly, and only reads
    ("GET", "/metrics/", TOKEN, Code.UNAUTHENTICATED),
    ("GET", "/ready/../deadletters", TOKEN, Code.UNAUTHENTICATED),
    ("GET", "/v1/metrics", TOKEN, Code.UNAUTHENTICATED),
    ("GET", "/debug/failures", TOKEN, Code.UNAUTHENTICATED),
    ("GET", "/", TOKEN, Code.UNAUTHENTICATED),
    ("GET", "/no-such-route", TOKEN, Code.UNAUTHENTICATED),
    ("POST", "/ready", TOKEN, Code.UNAUTHENTICATED),
    ("POST", "/metrics", None, None),   # loopback, no Origin: routing answers 405
])
def test_probes_are_open_and_nothing_else(method: str, path: str, token: str | None, expected: Code | None) -> None:
    refusal = check_request(method, token, None, "127.0.0.1", None, path=path)
    assert (refusal.code if refusal is not None else None) == expected


def test_a_mutation_relayed_by_the_inbound_is_not_a_loopback_caller() -> None:
    refusal = check_request("POST", None, None, "127.0.0.1", None, path="/leave", relayed=True)
    assert refusal is not None and refusal.code is Code.PERMISSION_DENIED
    assert "x-sidecar-caller" in refusal.message
    # with the token it is the token that decides, wherever the request comes from
    assert check_request("POST", TOKEN, f"Bearer {TOKEN}", "127.0.0.1", None, path="/leave", relayed=True) is None
    # reads stay open without a token
    assert check_request("GET", None, None, "127.0.0.1", None, path="/config", relayed=True) is None


def test_refusals_never_echo_a_token() -> None:
    for authorization in (f"Bearer {TOKEN}x", "Bearer guessed-token", f"Basic {TOKEN}"):
        refusal = check_request("POST", TOKEN, authorization, "127.0.0.1", None)
        assert refusal is not None
        shown = f"{refusal.message} {refusal.details}"
        assert TOKEN not in shown and "guessed-token" not in shown


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.255.0.1", True), ("::1", True), ("::ffff:127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("", False), (None, False), ("localhost", False),
])
def test_loopback_addresses(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_exposed_admin_port_without_a_token_is_warned_about() -> None:
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", TOKEN) is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None and "admin.token_file" in warning


@pytest.mark.parametrize(("host", "local", "refused"), [
    ("127.0.0.1:9901", "127.0.0.1", False),
    ("localhost:9901", "127.0.0.1", False),
    ("localhost.", "127.0.0.1", False),
    ("[::1]:9901", "::1", False),
    ("10.0.0.5:9901", "127.0.0.1", False),        # an IP literal is no rebinding
    ("rebind.evil.example:9901", "127.0.0.1", True),
    ("payment-service", "127.0.0.1", True),       # what the inbound's relay would name
    ("", "127.0.0.1", True),
    (None, "127.0.0.1", True),
    ("admin.node-1.internal:9901", "10.0.0.5", False),   # came from the network: a name is fine
])
def test_a_rebound_name_is_refused_over_loopback(host: str | None, local: str, refused: bool) -> None:
    refusal = check_request("GET", None, None, "127.0.0.1", None, path="/ready", host=host, local_address=local)
    assert (refusal is not None) is refused
    if refusal is not None:
        assert refusal.code is Code.PERMISSION_DENIED and "rebinds" in refusal.message
