"""The upstream listeners' lifecycle helpers: opening one (again, on a port just released), draining a removed one,
its bound address, and what a reload of ``upstreams`` changed."""

from __future__ import annotations

import asyncio
import errno
import math
from dataclasses import dataclass
from typing import Any

from sidecar.config.model import UpstreamConfig
from sidecar.config.values import HostPort
from sidecar.proxy import HttpProxy, TcpRelay


@dataclass(frozen=True, slots=True)
class UpstreamChange:
    """What :meth:`DataPlane.set_upstreams` did: listeners opened (key → bound address), keys closed."""

    opened: dict[str, HostPort]
    closed: list[str]


async def listen_upstream(proxy: HttpProxy | TcpRelay, upstream: UpstreamConfig, attempts: int) -> asyncio.Server:
    """Listen on the upstream's port. A port this process just released may take a loop iteration or two to be
    free (uvloop closes handles asynchronously): ``attempts`` > 1 tries "address in use" again, 20ms apart."""
    for attempt in range(attempts):
        try:
            return await proxy.listen(upstream.bind, upstream.local_port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise OSError(e.errno, f"upstreams[{upstream.local_port}]: cannot listen on "
                                       f"{upstream.bind}:{upstream.local_port}: {e.strerror or e}") from None
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def drain_upstream(proxy: HttpProxy | TcpRelay, grace: float) -> None:
    """A removed upstream listener: requests in flight (tunnels: connections) may end within ``grace``."""
    if isinstance(proxy, HttpProxy):
        await proxy.close(grace)
        return
    for _ in range(math.ceil(grace / 0.05)):   # polled: a relay tells no one when its last connection ends
        if not proxy.connections:
            break
        await asyncio.sleep(0.05)
    await proxy.close()


def bound_address(server: asyncio.Server) -> HostPort:
    listening: Any = server  # typeshed says Server.sockets is a tuple; uvloop's is a list (compiled code checks)
    address = listening.sockets[0].getsockname()
    return HostPort(str(address[0]), int(address[1]))
