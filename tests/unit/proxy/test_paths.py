"""Canonical request paths (sidecar.proxy.paths): a table of spellings, the refusals, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.proxy.http1 import MalformedRequest, RequestHead
from sidecar.proxy.http1read import RequestReader
from sidecar.proxy.paths import InvalidPath, _suspect, normalize_target


@pytest.mark.parametrize(("target", "canonical"), [
    # already canonical: unchanged (and the same object: the fast path)
    (b"/", b"/"),
    (b"/admin/users", b"/admin/users"),
    (b"/a/b/", b"/a/b/"),
    (b"/search?q=/../x&y=%2F", b"/search?q=/../x&y=%2F"),
    # the spellings of /admin/users that once passed `deny /admin/*`
    (b"/%61dmin/users", b"/admin/users"),
    (b"//admin/users", b"/admin/users"),
    (b"/./admin/users", b"/admin/users"),
    (b"/public/../admin/users", b"/admin/users"),
    (b"/secre%74", b"/secret"),
    (b"/%2e%2e/admin", b"/admin"),
    (b"/.%2E/admin", b"/admin"),
    (b"/\\admin\\users", b"/admin/users"),
    # dot segments and slashes (RFC 3986 5.2.4; merge_slashes)
    (b"/..", b"/"),
    (b"/../../etc/passwd", b"/etc/passwd"),
    (b"/a/..", b"/"),
    (b"/a/.", b"/a/"),
    (b"/a/b/..", b"/a/"),
    (b"/a//b///c", b"/a/b/c"),
    (b"/a/b//", b"/a/b/"),
    (b"/.well-known/x", b"/.well-known/x"),
    (b"/a/..b/c", b"/a/..b/c"),
    (b"/a/...", b"/a/..."),
    # reserved and non-ASCII percent-encodings stay encoded, in upper case
    (b"/a%20b", b"/a%20b"),
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/%3fnot-a-query", b"/%3Fnot-a-query"),
    (b"/%7e%41%2d%5f", b"/~A-_"),
    # the query is kept as it came, even with dots and slashes
    (b"//x/./y?a=..%2F//b", b"/x/y?a=..%2F//b"),
])
def test_canonical_forms(target: bytes, canonical: bytes) -> None:
    assert normalize_target(target) == canonical
    assert normalize_target(canonical) == canonical


def test_an_already_canonical_target_is_returned_as_is() -> None:
    target = b"/v1/orders/42?x=1"
    assert normalize_target(target) is target


@pytest.mark.parametrize(("target", "why"), [
    (b"/admin#frag", "fragment"),
    (b"/x?a=1#b", "fragment"),
    (b"/payx/..%2fadmin/users", "encoded slash"),
    (b"/a%2Fb", "encoded slash"),
    (b"/a%5cb", "encoded slash"),
    (b"/a%zz", "invalid percent-encoding"),
    (b"/a%4", "invalid percent-encoding"),
    (b"/a%", "invalid percent-encoding"),
])
def test_refusals(target: bytes, why: str) -> None:
    with pytest.raises(InvalidPath, match=why):
        normalize_target(target)


def test_the_reader_forwards_the_canonical_path_and_refuses_with_400() -> None:
    heads: list[RequestHead] = []

    class Sink:
        def on_request_head(self, head: RequestHead) -> None:
            heads.append(head)

        def on_request_body(self, data: bytes) -> None:
            pass

        def on_request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
            pass

    RequestReader(Sink()).feed(b"GET /public/../%61dmin/users?x=/.. HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert heads[0].target == b"/admin/users?x=/.."
    assert heads[0].path == "/admin/users"
    RequestReader(Sink()).feed(b"GET http://svc//admin HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (heads[1].host, heads[1].target) == ("svc", b"/admin")
    with pytest.raises(MalformedRequest, match="encoded slash") as refused:
        RequestReader(Sink()).feed(b"GET /a/..%2Fadmin HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert refused.value.status == 400


# ------------------------------------------------------------------------------------------ properties

_SEGMENT = st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2e", "a", "b", "admin", "%61", "%7E", "%20", "%c3%a9",
                            "x.y", "..b", "\\", "~"])
_PATHS = st.lists(_SEGMENT, max_size=12).map(lambda segments: ("/" + "/".join(segments)).encode())


@given(_PATHS)
def test_canonical_paths_are_a_fixed_point_inside_the_root(path: bytes) -> None:
    canonical = normalize_target(path)
    assert normalize_target(canonical) == canonical            # idempotent
    assert canonical.startswith(b"/")                          # never outside the root
    assert b"//" not in canonical and b"\\" not in canonical
    segments = canonical.split(b"/")[1:]
    assert b".." not in segments and b"." not in segments      # no dot segment survives, whatever its spelling
    assert all(s.lower() not in (b"%2e", b"%2e%2e", b".%2e", b"%2e.") for s in segments)


@given(st.binary(max_size=64))
def test_any_bytes_give_a_canonical_path_or_a_refusal(tail: bytes) -> None:
    target = b"/" + tail.split(b"?")[0]
    try:
        canonical = normalize_target(target)
    except InvalidPath:
        return
    assert normalize_target(canonical) == canonical
    assert canonical.startswith(b"/")
    assert b".." not in canonical.split(b"/")


# what a target needs work for, as one regular expression: the scan must agree with it byte for byte
_SUSPECT = re.compile(rb"[#%\\]|/[./]")


@given(st.binary(max_size=40) | st.lists(st.sampled_from([b"/", b".", b"%", b"#", b"\\", b"a", b"?", b"-"]),
                                         max_size=12).map(b"".join))
def test_the_scan_finds_what_the_pattern_finds(target: bytes) -> None:
    assert _suspect(target) == (_SUSPECT.search(target) is not None)
