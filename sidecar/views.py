"""Terminal tables of the admin views (``sidecar members|catalog|clusters``), with rich."""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

_STATE_STYLE = {"alive": "green", "healthy": "green", "suspect": "yellow", "degraded": "yellow",
                "dead": "red", "unhealthy": "red", "left": "dim", "closed": "green", "open": "red",
                "half_open": "yellow"}


def _styled(value: str) -> str:
    style = _STATE_STYLE.get(value)
    return f"[{style}]{value}[/{style}]" if style else value


def _age(epoch_ms: int) -> str:
    if not epoch_ms:
        return "-"
    then = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    seconds = (datetime.datetime.now(tz=datetime.UTC) - then).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else then.strftime("%H:%M:%S")


def members_table(members: list[dict[str, Any]]) -> Table:
    table = Table(title="members")
    for column in ("name", "address", "state", "incarnation", "cluster"):
        table.add_column(column)
    for m in sorted(members, key=lambda m: str(m.get("name"))):
        table.add_row(str(m["name"]), str(m["address"]), _styled(str(m["state"])), str(m.get("incarnation", "")),
                      str(m.get("cluster", "")))
    return table


def catalog_table(catalog: dict[str, list[dict[str, Any]]]) -> Table:
    table = Table(title="catalog")
    for column in ("service", "id", "node", "address", "version", "status", "tags", "last heartbeat"):
        table.add_column(column)
    for name in sorted(catalog):
        for i in catalog[name]:
            table.add_row(name, str(i["id"]), str(i.get("node", "")), f"{i['host']}:{i['port']}", str(i["version"]),
                          _styled(str(i["status"])), ",".join(i.get("tags", [])), _age(int(i.get("lastHeartbeat", 0))))
    return table


def clusters_table(clusters: dict[str, Any]) -> Table:
    table = Table(title="clusters")
    for column in ("service", "endpoint", "health", "ejected", "in-flight", "ewma ms", "breaker"):
        table.add_column(column)
    for name in sorted(clusters):
        cluster = clusters[name]
        breaker = cluster.get("breaker", {})
        breaker_text = ", ".join(f"{k}={v}" for k, v in breaker.items()) if isinstance(breaker, dict) else str(breaker)
        for e in cluster.get("endpoints", []):
            table.add_row(name, str(e.get("address", "")), _styled(str(e.get("health", ""))),
                          "yes" if e.get("ejected") else "no", str(e.get("inFlight", 0)),
                          f"{float(e.get('latencyEwmaMs', 0.0)):.1f}", breaker_text)
    return table


def render_view(view: str, data: Any, console: Console | None = None) -> None:
    console = console or Console()
    if view == "members":
        console.print(members_table(data))
    elif view == "catalog":
        console.print(catalog_table(data))
    else:
        console.print(clusters_table(data))
