"""``sidecar members|catalog|clusters``: an admin view, as a terminal table (with rich) or as its JSON."""

from __future__ import annotations

import datetime
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from sidecar.cli.admin import fetch_json

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


def _breaker_text(breaker: Any) -> str:
    """``conn 1/1024 pend 0/1024 rq 1/1024 retry 0/3``, open caps in red, then the refusals if any."""
    if not isinstance(breaker, dict):
        return str(breaker)
    parts = []
    refused = 0
    for key, short in (("connections", "conn"), ("pendingRequests", "pend"), ("requests", "rq"), ("retries", "retry")):
        gauge = breaker.get(key)
        if isinstance(gauge, dict):
            text = f"{short} {gauge.get('active', 0)}/{gauge.get('max', '?')}"
            parts.append(f"[red]{text}[/red]" if gauge.get("state") == "open" else text)
            refused += int(gauge.get("rejected", 0))
        elif gauge is not None:
            parts.append(f"{key}={gauge}")
    if refused:
        parts.append(f"refused {refused}")
    return " ".join(parts)


def _ejection_text(endpoint: dict[str, Any]) -> str:
    ejection = endpoint.get("ejection")
    if not endpoint.get("ejected"):
        state = ejection.get("state") if isinstance(ejection, dict) else None
        return "probation" if state == "probation" else "no"
    if isinstance(ejection, dict):
        return f"[red]yes[/red] {int(ejection.get('remainingMs', 0)) / 1000:.0f}s x{ejection.get('times', 1)}"
    return "[red]yes[/red]"


def breaker_text(breaker: Any) -> str:
    """The resilience view's breaker (``{cap: {active, max, state, rejected}}``) as ``closed`` or the open caps;
    any other shape as ``key=value`` pairs."""
    if not isinstance(breaker, dict):
        return str(breaker) if breaker not in (None, "") else "-"
    caps = {k: v for k, v in breaker.items() if isinstance(v, dict) and "state" in v}
    if caps:
        opened = [k for k, v in caps.items() if v.get("state") == "open"]
        return "closed" if not opened else "open: " + ", ".join(opened)
    return ", ".join(f"{k}={v}" for k, v in breaker.items()) or "-"


def clusters_table(clusters: dict[str, Any]) -> Table:
    table = Table(title="clusters")
    for column in ("service", "endpoint", "node", "health", "ejected", "in-flight", "ewma ms", "requests", "failures",
                   "breaker", "retries"):
        table.add_column(column, justify="right" if column in ("in-flight", "ewma ms", "requests", "failures",
                                                                  "retries") else "left")
    for name in sorted(clusters):
        cluster = clusters[name] if isinstance(clusters[name], dict) else {}
        state = breaker_text(cluster.get("breaker"))
        breaker = _styled("closed") if state == "closed" else (f"[red]{state}[/red]" if state.startswith("open")
                                                                 else state)
        counters = cluster.get("counters", {}) if isinstance(cluster.get("counters"), dict) else {}
        retries = str(counters.get("retries", "")) if counters else ""
        endpoints = cluster.get("endpoints", [])
        if not endpoints:
            table.add_row(name, "-", "", "", "", "", "", "", "", breaker, retries)
        for e in endpoints:
            table.add_row(name, str(e.get("address", "")), str(e.get("node", "")), _styled(str(e.get("health", ""))),
                          "[red]yes[/red]" if e.get("ejected") else "no", str(e.get("inFlight", 0)),
                          f"{float(e.get('latencyEwmaMs', 0.0)):.1f}", str(e.get("requests", "")),
                          str(e.get("failures", "")), breaker, retries)
    return table


def render_view(view: str, data: Any, console: Console | None = None) -> None:
    console = console or Console()
    if view == "members":
        console.print(members_table(data))
    elif view == "catalog":
        console.print(catalog_table(data))
    else:
        console.print(clusters_table(data))


def show_view(view: str, admin: str, as_json: bool, token: str | None = None) -> int:
    data = fetch_json(admin.rstrip("/") + "/" + view, token)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render_view(view, data)
    return 0
