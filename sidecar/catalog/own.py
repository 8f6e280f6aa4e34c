"""No service may be registered at one of this sidecar's own listeners.

Theory of operation
-------------------
The inbound listener relays a peer's request to the registered ``host:port`` from this host, so a registration
that names one of the sidecar's own listeners hands peers that listener as a loopback caller: the admin port
(which takes changes from loopback without ``admin.token_file``), the app API (register, publish as this node's
services), the outbound listener (calls to any service under this node's identity), DNS or gossip. Such a
registration is refused with 400 INVALID_ARGUMENT naming the field, whether it comes from the app API, the
configuration at start or a reload.

A registration names a listener when the ports are equal and the addresses meet: the same IP; a listener bound
to every address (``0.0.0.0``, ``::``) and a registered address of this host (a loopback address, or one a socket
can bind to); a registered ``0.0.0.0``/``::``, which dials this host; ``localhost`` stands for 127.0.0.1 and ::1,
and other names are resolved as the inbound would resolve them.

:func:`listener_named` is the pure rule (addresses and "is this address mine" in, a listener name out);
:class:`OwnListeners` resolves the registered host and applies it to the listeners bound now.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping

from sidecar.config.model import ServiceConfig
from sidecar.config.values import HostPort
from sidecar.errors import InvalidArgument

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCALHOST = ("127.0.0.1", "::1")
# a registered name resolved for the check; longer is a resolver in trouble, and the registration waits on it
RESOLVE_TIMEOUT = 2.0


def parse_address(text: str) -> Address | None:
    """An IP address (a v4-mapped v6 address as its v4 form, a zone dropped), None for a name."""
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def loopback_or_any(address: Address) -> bool:
    """The addresses that are this host's on any host (what a check without the host's interfaces can know)."""
    return address.is_loopback or address.is_unspecified


def bindable(address: Address) -> bool:
    """Whether ``address`` is one of this host's: loopback, unspecified, or an address a socket can bind to."""
    if loopback_or_any(address):
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def listener_named(addresses: Iterable[Address], port: int, listeners: Mapping[str, HostPort],
                   is_local: Callable[[Address], bool]) -> str | None:
    """The name of the listener that ``addresses`` (one registered host, resolved) at ``port`` reach, or None."""
    wanted = list(addresses)
    for name, listen in listeners.items():
        if listen.port != port or port == 0:
            continue
        bound = [parse_address(h) for h in (LOCALHOST if listen.host == "localhost" else (listen.host,))]
        for listener in (b for b in bound if b is not None):
            for address in wanted:
                if address == listener or address.is_unspecified:
                    return name
                if listener.is_unspecified and is_local(address):
                    return name
    return None


def refusal(name: str, listeners: Mapping[str, HostPort], spec: ServiceConfig, where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where}port: {spec.host}:{spec.port} is this sidecar's own {name} listener ({listeners[name]}); register"
        " the address where the app itself listens", {"field": f"{where}port", "listener": name})


class OwnListeners:
    """The sidecar's listeners as they are bound now (configured addresses until then), and the check."""

    def __init__(self, listeners: Callable[[], Mapping[str, HostPort]],
                 is_local: Callable[[Address], bool] = bindable) -> None:
        self._listeners = listeners
        self._is_local = is_local

    async def check(self, spec: ServiceConfig, where: str = "") -> None:
        """Raise InvalidArgument when ``spec`` names one of the listeners; ``where`` prefixes the field
        (``services[2].``)."""
        listeners = self._listeners()
        if not any(listen.port == spec.port for listen in listeners.values()):
            return   # the usual case: no resolution needed
        name = listener_named(await resolve(spec.host), spec.port, listeners, self._is_local)
        if name is not None:
            raise refusal(name, listeners, spec, where)


async def resolve(host: str) -> list[Address]:
    """``host``'s addresses: itself for an IP literal, 127.0.0.1 and ::1 for localhost, else the resolver's
    answer (nothing when it fails: the inbound could not dial it either)."""
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    if host.lower().rstrip(".") == "localhost":
        return [a for a in map(parse_address, LOCALHOST) if a is not None]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError):
        return []
    return [a for a in (parse_address(str(info[4][0])) for info in infos) if a is not None]


__all__ = ["OwnListeners", "bindable", "listener_named", "loopback_or_any", "parse_address", "resolve"]
