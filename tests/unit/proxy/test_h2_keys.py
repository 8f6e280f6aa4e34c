"""Which pool an HTTP/2 peer Target lands in, and what the inbound offers in ALPN."""

from __future__ import annotations

from sidecar.proxy.target import H2cKey, H2Key, H2PeerKey, Target
from sidecar.tls.context import ALPN_H2, ALPN_HTTP, ALPN_TCP_TUNNEL, server_alpn


def test_a_peer_key_is_its_address_service_and_generation_whatever_its_fallback() -> None:
    first = Target(("10.0.0.2", 15006), pool_key=("http", ("10.0.0.2", 15006), "echo", 1))
    later = Target(("10.0.0.2", 15006), pool_key=("http", ("10.0.0.2", 15006), "echo", 1), timeout=3.0)
    a = H2PeerKey(("10.0.0.2", 15006), "echo", 1, first)
    b = H2PeerKey(("10.0.0.2", 15006), "echo", 1, later)
    assert a == b and hash(a) == hash(b)   # Targets rebuilt on a catalog change keep their pool
    assert a != H2PeerKey(("10.0.0.2", 15006), "web", 1, first)      # another service: another SNI and identity
    assert a != H2PeerKey(("10.0.0.2", 15006), "echo", 2, first)     # a rotated TLS context: new connections
    assert a != H2PeerKey(("10.0.0.3", 15006), "echo", 1, first)
    assert a != H2cKey("10.0.0.2", 15006)
    assert isinstance(a, H2Key) and isinstance(H2cKey("127.0.0.1", 1), H2Key)
    assert Target(("10.0.0.2", 15006), pool_key=a).key is a


def test_the_inbound_prefers_h2_to_http1_and_offers_it_only_when_enabled() -> None:
    assert server_alpn(True) == (ALPN_TCP_TUNNEL, ALPN_H2, ALPN_HTTP)
    assert server_alpn(False) == (ALPN_TCP_TUNNEL, ALPN_HTTP)
