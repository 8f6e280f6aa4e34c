"""What the DNS answerer decides, without dnspython: the outcomes a driver acts on and the settings it answers with.

The answerer (:mod:`sidecar.dns.answerer`) parses and builds messages with dnspython, whose names, rdata and
message modules cost about 3 MiB resident; the server imports it with the first query, so a sidecar nobody
asks a name carries none of it. These types are what the server needs before then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.rcode

from sidecar.config.model import DnsConfig

if TYPE_CHECKING:
    import dns.message

# RFC 1035 4.2.1: without EDNS a UDP response is at most 512 bytes
CLASSIC_UDP_SIZE = 512
MAX_TCP_SIZE = 65535


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class AnswerSettings:
    domain: str = "mesh"
    ttl: int = 5
    # RA is set when the forwarder can recurse for the client, i.e. upstreams are configured
    recursion_available: bool = False
    # the largest UDP response we send, whatever the client offers; loopback does not fragment, and
    # 4096 is what most resolvers advertise
    max_udp_payload: int = 4096
    # pre-rotated answers kept per question; more spreads the first records better, costs memory
    max_variants: int = 8

    @classmethod
    def from_config(cls, config: DnsConfig) -> AnswerSettings:
        return cls(
            domain=config.domain,
            ttl=max(0, round(float(config.ttl))),
            recursion_available=bool(config.upstreams),
        )


@dataclass(frozen=True, slots=True)
class DnsReply:
    """A response to send as is (the driver only patches the query ID in for cached copies)."""

    wire: bytes
    rcode: dns.rcode.Rcode
    # a name of the zone answered from the snapshot: the same question gets the same answer until the
    # snapshot changes
    cacheable: bool = False
    # how many distinct rotations of this answer exist (1 when there is nothing to rotate)
    variants: int = 1


@dataclass(frozen=True, slots=True)
class Forward:
    """The name is outside the domain: ask an upstream. ``limit`` is the largest reply the client takes."""

    query: dns.message.Message
    limit: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing; ``reason`` is for counters and debug logs."""

    reason: str


Outcome = DnsReply | Forward | Drop
