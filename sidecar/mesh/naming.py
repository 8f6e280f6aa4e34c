"""Which service a request names: ``Host: pay``, ``Host: pay.service.mesh``, ``Host: v2.pay.service.mesh``
(only instances tagged v2), or the authority of an absolute-form target (``GET http://pay/x``)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple


class ServiceName(NamedTuple):
    """A service, and the tag its instances must carry (None: any instance).

    A named tuple rather than a frozen dataclass: it keys the router's and the resilience layers' tables on
    every request, and a tuple hashes and compares in C, a dataclass through generated Python methods."""

    service: str
    tag: str | None = None


def authority_of_target(target: bytes) -> bytes | None:
    """``http://host:port/path`` → ``host:port``; origin-form (``/path``) → None."""
    lowered = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = target[len(scheme):]
            end = len(rest)
            for sep in (b"/", b"?", b"#"):
                i = rest.find(sep)
                if 0 <= i < end:
                    end = i
            return rest[:end]
    return None


def path_of_target(target: bytes) -> bytes:
    """The origin-form of a target: absolute-form loses its scheme and authority."""
    authority = authority_of_target(target)
    if authority is None:
        return target
    start = target.find(authority) + len(authority)
    rest = target[start:]
    if not rest or rest.startswith(b"?"):
        return b"/" + rest
    return rest


def parse_service(authority: str, domain: str) -> ServiceName | None:
    """The service an authority names, or None for IP addresses, ``localhost`` and names of other domains."""
    host = authority.strip().lower()
    if host.startswith("["):
        return None  # an IPv6 literal is an address, not a service
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.rstrip(".")
    if not host or host == "localhost":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    labels = host.split(".")
    suffix = ["service", *domain.lower().strip(".").split(".")]
    if len(labels) == 1:
        return ServiceName(labels[0])
    if labels[-len(suffix):] == suffix:
        head = labels[: -len(suffix)]
        if len(head) == 1:
            return ServiceName(head[0])
        if len(head) == 2:
            return ServiceName(head[1], head[0])
    return None


class Names:
    """``parse_service`` with a bounded cache: a client sends the same few Host values again and again."""

    __slots__ = ("_cache", "_domain", "_max")

    def __init__(self, domain: str, max_entries: int = 4096) -> None:
        self._domain = domain
        self._cache: dict[str, ServiceName | None] = {}
        self._max = max_entries

    def parse(self, host: str) -> ServiceName | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        name = parse_service(host, self._domain)
        if len(self._cache) >= self._max:
            self._cache.clear()  # a client spraying Host values costs a re-parse, never memory
        self._cache[host] = name
        return name

