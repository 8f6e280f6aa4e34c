"""The app API's access rule, a pure function: a table of requests a browser or an app sends, and the answer."""

from __future__ import annotations

import pytest

from sidecar.access import host_of
from sidecar.api.guard import check_api_request
from sidecar.errors import Code

TOKEN = "api-t0ken-5ecret"
DENIED, UNAUTH = Code.PERMISSION_DENIED, Code.UNAUTHENTICATED


@pytest.mark.parametrize(("host", "origin", "site", "authorization", "token", "local", "expected"), [
    # curl and apps: no Origin, no Sec-Fetch-*
    ("127.0.0.1:3500", None, None, None, None, "127.0.0.1", None),
    ("localhost:3500", None, None, None, None, "127.0.0.1", None),
    ("localhost", None, None, None, None, "127.0.0.1", None),
    ("[::1]:3500", None, None, None, None, "::1", None),
    ("10.0.0.5:3500", None, None, None, None, "10.0.0.5", None),     # an API bound to every address
    ("127.0.0.1:3500", None, "none", None, None, "127.0.0.1", None),  # typed into the address bar
    ("127.0.0.1:3500", None, "same-origin", None, None, "127.0.0.1", None),
    ("127.0.0.1:3500", "http://127.0.0.1:3500", None, None, None, "127.0.0.1", None),
    # DNS rebinding: a name that is not ours
    ("evil.example", None, None, None, None, "127.0.0.1", DENIED),
    ("evil.example:3500", None, "same-origin", None, None, "127.0.0.1", DENIED),
    ("10.0.0.6:3500", None, None, None, None, "10.0.0.5", DENIED),
    (None, None, None, None, None, "127.0.0.1", DENIED),
    ("", None, None, None, None, "127.0.0.1", DENIED),
    ("::1", None, None, None, None, "::1", DENIED),                   # an IPv6 literal needs brackets
    ("localhost:http", None, None, None, None, "127.0.0.1", DENIED),
    # a page elsewhere: Origin, or Sec-Fetch-Site
    ("127.0.0.1:3500", "http://evil.example", None, None, None, "127.0.0.1", DENIED),
    ("127.0.0.1:3500", "null", None, None, None, "127.0.0.1", DENIED),
    ("127.0.0.1:3500", "http://localhost:8080", "same-site", None, None, "127.0.0.1", DENIED),
    ("127.0.0.1:3500", "https://127.0.0.1:3500", None, None, None, "127.0.0.1", DENIED),
    ("127.0.0.1:3500", None, "cross-site", None, None, "127.0.0.1", DENIED),
    ("127.0.0.1:3500", None, "Cross-Site", f"Bearer {TOKEN}", TOKEN, "127.0.0.1", DENIED),
    # the token, when set
    ("127.0.0.1:3500", None, None, f"Bearer {TOKEN}", TOKEN, "127.0.0.1", None),
    ("127.0.0.1:3500", None, None, None, TOKEN, "127.0.0.1", UNAUTH),
    ("127.0.0.1:3500", None, None, "Bearer nope", TOKEN, "127.0.0.1", UNAUTH),
    ("127.0.0.1:3500", None, None, TOKEN, TOKEN, "127.0.0.1", UNAUTH),
    ("evil.example", None, None, f"Bearer {TOKEN}", TOKEN, "127.0.0.1", DENIED),
])
def test_who_may_call_the_app_api(host: str | None, origin: str | None, site: str | None,
                                  authorization: str | None, token: str | None, local: str,
                                  expected: Code | None) -> None:
    refusal = check_api_request(host, origin, site, authorization, token, local)
    assert (refusal.code if refusal is not None else None) == expected
    if refusal is not None:
        assert TOKEN not in f"{refusal.message} {refusal.details}"


@pytest.mark.parametrize(("authority", "host"), [
    ("LocalHost:3500", "localhost"), ("localhost.", "localhost"), ("[::1]:80", "::1"), ("[::1]", "::1"),
    ("127.0.0.1", "127.0.0.1"), ("[::1]x", None), ("a:b:c", None), (":3500", None), ("[::1", None),
])
def test_host_headers(authority: str, host: str | None) -> None:
    assert host_of(authority) == host
