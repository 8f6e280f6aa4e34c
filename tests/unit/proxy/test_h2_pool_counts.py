"""HTTP/2 pools' connections by state, as sidecar_upstream_connections{state} counts them: idle (no stream open)
or busy (one or more), summed over the pools of apps (h2c) and of peers (h2)."""

from __future__ import annotations

import asyncio

from sidecar.proxy.h2pool import H2UpstreamPool
from sidecar.proxy.h2up import H2UpstreamConnection, H2UpstreamStream
from sidecar.proxy.pool import Pools
from sidecar.proxy.target import H2cKey, H2PeerKey, Target


def with_streams(pool: H2UpstreamPool, *open_streams: int) -> None:
    """Connections, never dialed, holding that many streams each (counts reads only their ``streams``)."""
    for n in open_streams:
        conn = H2UpstreamConnection(pool, "10.0.0.2:15006", None)
        conn.streams = {2 * i + 1: H2UpstreamStream(conn) for i in range(n)}
        pool.conns.append(conn)


def test_connections_with_no_stream_are_idle_and_with_one_or_more_busy_across_apps_and_peers() -> None:
    loop = asyncio.new_event_loop()
    try:
        pools = Pools(loop=loop)
        app = pools.get(Target(("127.0.0.1", 50051), pool_key=H2cKey("127.0.0.1", 50051)))
        first = Target(("10.0.0.2", 15006), pool_key=("http", ("10.0.0.2", 15006), "echo", 1))
        peer = pools.get(Target(("10.0.0.2", 15006), pool_key=H2PeerKey(("10.0.0.2", 15006), "echo", 1, first)))
        assert isinstance(app, H2UpstreamPool) and isinstance(peer, H2UpstreamPool)
        assert pools.h2_connections() == {"idle": 0, "busy": 0}
        with_streams(app, 0, 3)
        with_streams(peer, 1, 0, 0, 100)
        assert (app.counts()["idle"], app.counts()["busy"]) == (1, 1)
        assert (peer.counts()["idle"], peer.counts()["busy"], peer.counts()["streams"]) == (2, 2, 101)
        assert pools.h2_connections() == {"idle": 3, "busy": 3}
        assert list(pools) == []   # no HTTP/1.1 pool: those are counted by their own idle and busy
    finally:
        loop.close()
