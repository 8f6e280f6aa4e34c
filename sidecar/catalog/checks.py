"""The driver of health checks: runs each service's HTTP, TCP or gRPC check on its interval and feeds the
results to the registry; a ticker expires TTL checks and removes services past ``deregister_after``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from urllib.parse import unquote, urlsplit

from sidecar.catalog.health import CheckResult
from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry, LocalService
from sidecar.clock import Clock
from sidecar.config.model import CheckConfig
from sidecar.config.redact import url_without_credentials
from sidecar.errors import SidecarError
from sidecar.proxy.client import HttpClient

log = logging.getLogger("sidecar.checks")

TICK = 0.1  # seconds between TTL/deregistration sweeps: small next to any sensible ttl
CHECK_BODY_BYTES = 64 << 10   # of a check's answer: read (the status decides), not kept


def status_of_http(code: int) -> HealthStatus:
    """2xx healthy, 429 degraded (alive but shedding load), anything else unhealthy."""
    if 200 <= code < 300:
        return HealthStatus.HEALTHY
    if code == 429:
        return HealthStatus.DEGRADED
    return HealthStatus.UNHEALTHY


async def http_check(client: HttpClient, url: str, timeout: float) -> CheckResult:
    # the output is logged, shown in the catalog and gossiped: the URL's credentials (user info, query) are not
    shown = url_without_credentials(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
    except ValueError as e:
        return CheckResult(HealthStatus.UNHEALTHY, f"HTTP GET {shown}: not a usable URL: {e}")
    headers = []
    if parts.username is not None:   # user info in the URL: sent as Basic credentials
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers.append(("Authorization", "Basic " + base64.b64encode(secret).decode("ascii")))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rpartition("@")[2]
    try:
        answer = await client.request("GET", (host, port), target, b"", headers, timeout=timeout,
                                      limit=CHECK_BODY_BYTES, authority=authority)
    except TimeoutError:
        return CheckResult(HealthStatus.UNHEALTHY, f"HTTP GET {shown}: timed out after {timeout:.3f}s")
    except (SidecarError, OSError, ValueError) as e:
        detail = str(e).replace(url, shown)
        return CheckResult(HealthStatus.UNHEALTHY, f"HTTP GET {shown}: {type(e).__name__}: {detail}")
    return CheckResult(status_of_http(answer.status), f"HTTP GET {shown}: {answer.status}")


async def tcp_check(host: str, port: int, timeout: float) -> CheckResult:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return CheckResult(HealthStatus.UNHEALTHY, f"TCP connect {host}:{port}: timed out after {timeout:.3f}s")
    except OSError as e:
        return CheckResult(HealthStatus.UNHEALTHY, f"TCP connect {host}:{port}: {e.strerror or e}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(HealthStatus.HEALTHY, f"TCP connect {host}:{port}: success")


def check_url(entry: LocalService) -> str:
    check = entry.spec.check
    assert check is not None and check.http is not None
    if check.http.startswith("http://"):
        return check.http
    host = entry.spec.host if ":" not in entry.spec.host else f"[{entry.spec.host}]"
    return f"http://{host}:{entry.spec.port}{check.http}"


class CheckRunner:
    def __init__(self, registry: LocalRegistry, clock: Clock) -> None:
        self.registry = registry
        self.clock = clock
        self._tasks: dict[str, tuple[LocalService, asyncio.Task[None]]] = {}
        self._ticker: asyncio.Task[None] | None = None
        # no connection is kept between checks: each check dials, so it sees whether the app still accepts them
        self._client = HttpClient(max_idle=0)

    async def start(self) -> None:
        self._client = HttpClient(max_idle=0)
        self.registry.listeners.append(self.sync)
        self.sync()

    async def stop(self) -> None:
        if self.sync in self.registry.listeners:
            self.registry.listeners.remove(self.sync)
        tasks = [task for _, task in self._tasks.values()]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._ticker = None
        self._client.close()

    def sync(self) -> None:
        """Start a loop for each service with an HTTP, TCP or gRPC check, stop loops of removed or replaced ones;
        the TTL/deregistration ticker runs while some service has a ``ttl`` or a ``deregister_after`` (an idle
        sidecar whose services have neither does not wake for it)."""
        self._sync_ticker()
        for service_id, (entry, task) in list(self._tasks.items()):
            if self.registry.services.get(service_id) is not entry:
                task.cancel()
                del self._tasks[service_id]
        for service_id, entry in self.registry.services.items():
            check = entry.spec.check
            if check is None or check.kind == "ttl" or service_id in self._tasks:
                continue
            task = asyncio.create_task(self._check_loop(entry, check), name=f"check-{service_id}")
            self._tasks[service_id] = (entry, task)

    async def _check_loop(self, entry: LocalService, check: CheckConfig) -> None:
        while True:
            if check.kind == "http":
                result = await http_check(self._client, check_url(entry), check.timeout)
            elif check.kind == "grpc":
                assert check.grpc is not None
                from sidecar.catalog.grpccheck import grpc_check  # HTTP/2 loaded only with a gRPC check
                result = await grpc_check(entry.spec.host, entry.spec.port, check.grpc, check.timeout)
            else:
                result = await tcp_check(entry.spec.host, entry.spec.port, check.timeout)
            log.debug("check result", extra={"fields": {"id": entry.metadata.id, "status": result.status.value,
                                                         "output": result.output}})
            self.registry.record(entry.metadata.id, result, self.clock.monotonic(), int(self.clock.wall() * 1000))
            await self.clock.sleep(check.interval)

    def _sync_ticker(self) -> None:
        needed = any(entry.spec.check is not None
                     and (entry.spec.check.ttl is not None or entry.spec.check.deregister_after is not None)
                     for entry in self.registry.services.values())
        if needed and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="health-ticker")
        elif not needed and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick_loop(self) -> None:
        while True:
            self.registry.on_tick(self.clock.monotonic(), int(self.clock.wall() * 1000))
            await self.clock.sleep(TICK)
