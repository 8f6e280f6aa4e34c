"""Scalar value types of the configuration: durations and host:port addresses, text in and text out."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """Seconds, written in YAML as ``250ms``, ``5s``, ``1m``, ``24h``, ``1h30m`` or a plain number of seconds."""

    @classmethod
    def from_text(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("must be a duration like 250ms, 5s, 1m, 24h or a number of seconds")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("must not be negative")
            return cls(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                return cls.from_text(number)
            if text and _DURATION_PART.sub("", text) == "":
                return cls(sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))
        raise ValueError("must be a duration like 250ms, 5s, 1m, 24h or a number of seconds")

    def to_text(self) -> str:
        seconds = float(self)
        for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if seconds >= size and (seconds / size).is_integer():
                return f"{int(seconds / size)}{unit}"
        if (seconds * 1000).is_integer():
            return f"{int(seconds * 1000)}ms"
        return f"{seconds}s"


_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


@dataclass(frozen=True, slots=True)
class HostPort:
    """An address ``host:port``; IPv6 hosts are bracketed in text (``[::1]:53``)."""

    host: str
    port: int

    @classmethod
    def from_text(cls, value: object, default_port: int | None = None) -> HostPort:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be host:port")
        text = value.strip()
        host, port_text = text, ""
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError("must be host:port (unclosed '[')")
            host, rest = text[1:end], text[end + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError("must be host:port")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        elif text.count(":") > 1:
            raise ValueError("must be host:port; write an IPv6 host in brackets, like [::1]:53")
        if not port_text:
            if default_port is None:
                raise ValueError("must be host:port (the port is missing)")
            port = default_port
        else:
            if not port_text.isdigit():
                raise ValueError("must be host:port with a numeric port")
            port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError("port must be in [0, 65535]")
        if not host:
            raise ValueError("must be host:port (the host is missing)")
        if not _is_ip(host) and not _HOSTNAME.match(host):
            raise ValueError("host must be an IP address or a DNS name")
        return cls(host, port)

    def to_text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.to_text()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
