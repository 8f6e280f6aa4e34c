"""The Python client for apps: the sidecar's app API in Python style, mirroring the original TypeScript API.

    async with SidecarClient("http://127.0.0.1:3500") as sidecar:
        service_id = await sidecar.register_service("payment-service", "1.0.0", 3000, tags=["payments"])
        reply = await sidecar.send_message("inventory", "reserve", {"sku": "A1"})     # request-response
        message_id = await sidecar.publish("orders", "order_created", {"id": 7})       # durable, at least once
        ids = await sidecar.publish_many("orders", [{"type": "order_created", "payload": {"id": 8}}, ...])
        async for message in sidecar.subscribe("orders"):                              # SSE, resumes itself
            ...
        handle = await sidecar.subscribe_to_service("payment-service", on_message)     # serve its messages

``subscribe_to_service(service, handler)`` (the TypeScript ``subscribeToService``) receives the ServiceMessages
addressed to ``service``: it serves ``handler`` at a local port and path, registers the service with the sidecar
there (``messages_path``), and returns a handle whose ``close()`` deregisters and stops serving. The handler's
return value is the answer (request-response) or the ack (publish-subscribe; ``{"status": "DROP"}`` drops).

Errors the sidecar reports (SPEC's shape, ``x-sidecar-error``) are raised as :class:`MicroserviceError`
subclasses, one per code; an app's own non-2xx answer to ``send_message`` is returned in the :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
from aiohttp import web

from sidecar.catalog.model import ServiceMetadata
from sidecar.messaging.envelope import ServiceMessage

__all__ = [
    "DeadlineExceededError", "InternalError", "InvalidArgumentError", "MethodNotAllowedError", "MicroserviceError",
    "NotFoundError", "PermissionDeniedError", "Reply", "ResourceExhaustedError", "ServiceHandle", "ServiceMessage",
    "ServiceMetadata", "ServicePerformanceMetric", "SidecarClient", "UnauthenticatedError", "UnavailableError",
]


# ------------------------------------------------------------------------------------------------ errors


class MicroserviceError(Exception):
    """An error the sidecar reported: ``code`` (e.g. "UNAVAILABLE"), ``grpc_code`` (14), HTTP ``status``,
    ``details``."""

    code: ClassVar[str] = "INTERNAL"
    grpc_code: ClassVar[int] = 13

    def __init__(self, message: str, status: int = 500, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = dict(details or {})


class InvalidArgumentError(MicroserviceError):
    code, grpc_code = "INVALID_ARGUMENT", 3


class NotFoundError(MicroserviceError):
    code, grpc_code = "NOT_FOUND", 5


class PermissionDeniedError(MicroserviceError):
    code, grpc_code = "PERMISSION_DENIED", 7


class UnauthenticatedError(MicroserviceError):
    code, grpc_code = "UNAUTHENTICATED", 16


class ResourceExhaustedError(MicroserviceError):
    code, grpc_code = "RESOURCE_EXHAUSTED", 8


class UnavailableError(MicroserviceError):
    code, grpc_code = "UNAVAILABLE", 14


class DeadlineExceededError(MicroserviceError):
    code, grpc_code = "DEADLINE_EXCEEDED", 4


class MethodNotAllowedError(MicroserviceError):
    code, grpc_code = "METHOD_NOT_ALLOWED", 12


class InternalError(MicroserviceError):
    code, grpc_code = "INTERNAL", 13


_ERRORS: dict[str, type[MicroserviceError]] = {cls.code: cls for cls in (
    InvalidArgumentError, NotFoundError, PermissionDeniedError, UnauthenticatedError, ResourceExhaustedError,
    UnavailableError, DeadlineExceededError, MethodNotAllowedError, InternalError)}


def error_from_response(status: int, body: bytes) -> MicroserviceError:
    """SPEC's ``{"error": {code, grpcCode, message, details}}`` as the matching exception."""
    try:
        error = json.loads(body)["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        return InternalError(f"HTTP {status} from the sidecar: {body[:200]!r}", status)
    return _ERRORS.get(code, InternalError)(message, status, details if isinstance(details, dict) else {})


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True, slots=True)
class ServicePerformanceMetric:
    """``{serviceMethod, latency, timestamp, status}``: latency in ms, timestamp epoch ms."""

    service_method: str
    latency: float
    timestamp: int
    status: Literal["success", "error"]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServicePerformanceMetric:
        status = data["status"]
        if status not in ("success", "error"):
            raise ValueError(f"status must be success or error (got {status!r})")
        return cls(str(data["serviceMethod"]), float(data["latency"]), int(data["timestamp"]), status)

    def to_json(self) -> dict[str, Any]:
        return {"serviceMethod": self.service_method, "latency": self.latency, "timestamp": self.timestamp,
                "status": self.status}


@dataclass(frozen=True, slots=True)
class Reply:
    """The target app's answer to a request-response message."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Handler = Callable[[ServiceMessage], Awaitable[Any]]


class ServiceHandle:
    """What :meth:`SidecarClient.subscribe_to_service` started: the serving port and the registration."""

    def __init__(self, client: SidecarClient, service_id: str | None, runner: web.AppRunner, port: int) -> None:
        self.client = client
        self.id = service_id
        self.port = port
        self._runner = runner

    async def close(self) -> None:
        if self.id is not None:
            with contextlib.suppress(NotFoundError):
                await self.client.deregister_service(self.id)
            self.id = None
        await self._runner.cleanup()


# ------------------------------------------------------------------------------------------------ the client


def token_from_environment() -> str | None:
    """The app API token (``api.token_file`` on the sidecar) as the environment gives it: ``SIDECAR_API_TOKEN``,
    else the content of the file ``SIDECAR_API_TOKEN_FILE`` names (Dapr's ``DAPR_API_TOKEN``)."""
    token = os.environ.get("SIDECAR_API_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("SIDECAR_API_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return None


class SidecarClient:
    """``token``: the app API token, sent as ``Authorization: Bearer`` on every API call; by default
    :func:`token_from_environment`'s. ``admin_token``: the admin token, for ``metrics()`` on a sidecar with
    ``admin.token_file`` set."""

    def __init__(self, api_url: str = "http://127.0.0.1:3500", *, admin_url: str | None = None,
                 timeout: float = 30.0, session: aiohttp.ClientSession | None = None,
                 token: str | None = None, admin_token: str | None = None) -> None:
        token = token if token is not None else token_from_environment()
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._admin_auth = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.api_url = api_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/") if admin_url else None
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> SidecarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        return self._session

    async def _call(self, method: str, path: str, body: Any = None, *, base: str | None = None,
                    headers: Mapping[str, str] | None = None) -> Any:
        headers = {**(self._auth if base is None else self._admin_auth), **(headers or {})}
        async with self.session.request(method, (base or self.api_url) + path, json=body, headers=headers,
                                        timeout=self.timeout) as response:
            raw = await response.read()
            if response.status >= 400:
                raise error_from_response(response.status, raw)
            return json.loads(raw) if raw else None

    # -------------------------------------------------------------------------------- registration

    async def register_service(self, name: str, version: str, port: int, *, host: str | None = None,
                               tags: Sequence[str] = (), capabilities: Sequence[str] = (),
                               check: Mapping[str, Any] | None = None, messages_path: str | None = None,
                               service_id: str | None = None) -> str:
        """Register an instance with this sidecar; returns its id."""
        body: dict[str, Any] = {"name": name, "version": version, "port": port, "tags": list(tags),
                                "capabilities": list(capabilities)}
        for key, value in (("host", host), ("check", check), ("messagesPath", messages_path), ("id", service_id)):
            if value is not None:
                body[key] = dict(value) if isinstance(value, Mapping) else value
        return str((await self._call("PUT", "/v1/services", body))["id"])

    async def deregister_service(self, service_id: str) -> None:
        await self._call("DELETE", f"/v1/services/{service_id}")

    async def heartbeat(self, service_id: str, status: Literal["healthy", "degraded", "unhealthy"] = "healthy",
                        note: str = "") -> ServiceMetadata:
        """For TTL checks: say the instance is alive (and how it is)."""
        data = await self._call("PUT", f"/v1/services/{service_id}/heartbeat", {"status": status, "note": note})
        return ServiceMetadata.from_json(data)

    async def services(self) -> list[ServiceMetadata]:
        return [ServiceMetadata.from_json(i) for i in await self._call("GET", "/v1/services")]

    async def catalog(self, name: str) -> list[ServiceMetadata]:
        """Every instance of ``name`` in the mesh (NotFoundError when there is none)."""
        return [ServiceMetadata.from_json(i) for i in await self._call("GET", f"/v1/catalog/{name}")]

    # -------------------------------------------------------------------------------- messages

    async def send_message(self, target: str, type: str, payload: Any, metadata: Mapping[str, Any] | None = None,
                           *, sender: str | None = None) -> Reply:
        """Request-response: ``target``'s app gets a ServiceMessage; its answer comes back as a Reply. Mesh
        errors (no instance, timeout, refused) raise."""
        body: dict[str, Any] = {"type": type, "payload": payload}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {**self._auth, **({"x-sidecar-service": sender} if sender else {})}
        async with self.session.post(f"{self.api_url}/v1/messages/{target}", json=body, headers=headers,
                                     timeout=self.timeout) as response:
            raw = await response.read()
            if "x-sidecar-error" in response.headers:
                raise error_from_response(response.status, raw)
            return Reply(response.status, dict(response.headers), raw)

    async def publish(self, topic: str, type: str, payload: Any, metadata: Mapping[str, Any] | None = None) -> str:
        """Publish durably (the sidecar answers once it is on disk); returns the message id.
        ResourceExhaustedError when the outbox is full: back off and publish again."""
        body: dict[str, Any] = {"type": type, "payload": payload}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return str((await self._call("POST", f"/v1/publish/{topic}", body))["id"])

    async def publish_many(self, topic: str, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """A bulk publish: ``messages`` are bodies ``{"type", "payload", "metadata"?}`` (1 to 1,000), stored durably
        in one commit, in this order; returns their ids in the same order. All or nothing: InvalidArgumentError
        naming the first bad entry (``[3].type: ...``), ResourceExhaustedError when the outbox cannot take them
        all (none is stored: back off and publish again, or publish fewer)."""
        body = [dict(message) for message in messages]
        return [str(i) for i in (await self._call("POST", f"/v1/publish/bulk/{topic}", body))["ids"]]

    async def add_subscription(self, topic: str, path: str, service: str | None = None) -> None:
        """A push subscription: ``topic``'s messages are POSTed to ``path`` of one instance of ``service``."""
        body = {"topic": topic, "path": path, **({"service": service} if service else {})}
        await self._call("POST", "/v1/subscriptions", body)

    async def subscribe(self, topic: str, last_event_id: int | None = None, *, reconnect_delay: float = 0.5,
                        max_reconnects: int | None = None) -> AsyncIterator[ServiceMessage]:
        """The topic's messages as they arrive (Server-Sent Events). A dropped stream is reopened with
        ``Last-Event-ID``, so nothing kept within the sidecar's retention is missed."""
        reconnects = 0
        while True:
            headers = {**self._auth, **({"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {})}
            try:
                async with self.session.get(f"{self.api_url}/v1/subscribe/{topic}", headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
                    if response.status >= 400:
                        raise error_from_response(response.status, await response.read())
                    reconnects = 0
                    event_id: int | None = None
                    data: list[str] = []
                    async for line in response.content:
                        text = line.decode("utf-8").rstrip("\r\n")
                        if text.startswith("id:"):
                            event_id = int(text[3:].strip())
                        elif text.startswith("data:"):
                            data.append(text[5:].strip())
                        elif not text and data:
                            message = ServiceMessage.from_json(json.loads("\n".join(data)))
                            data = []
                            if event_id is not None:
                                last_event_id = event_id
                            yield message
            except (TimeoutError, aiohttp.ClientConnectionError):
                pass
            reconnects += 1
            if max_reconnects is not None and reconnects > max_reconnects:
                raise UnavailableError(f"the stream of {topic} ended {reconnects} times in a row", 503)
            await asyncio.sleep(reconnect_delay)

    async def subscribe_to_service(self, service: str, handler: Handler, *, version: str = "0.0.0",
                                   port: int = 0, path: str = "/messages", host: str = "127.0.0.1",
                                   register: bool = True, **registration: Any) -> ServiceHandle:
        """Receive the ServiceMessages addressed to ``service``: ``handler`` is served at ``host:port`` + ``path``
        and the service registered there (unless ``register`` is False). ``await handle.close()`` stops."""

        async def receive(request: web.Request) -> web.Response:
            try:
                message = ServiceMessage.from_bytes(await request.read())
            except ValueError as e:
                return web.json_response({"error": str(e)}, status=400)
            answer = await handler(message)
            return web.json_response(answer if answer is not None else {})

        app = web.Application()
        app.router.add_post(path, receive)
        app.router.add_get("/health", _healthy)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        service_id = None
        if register:
            service_id = await self.register_service(service, version, bound, host=host, messages_path=path,
                                                     **registration)
        return ServiceHandle(self, service_id, runner, bound)

    # -------------------------------------------------------------------------------- admin

    async def metrics(self, service: str | None = None, since: int | None = None,
                      limit: int | None = None) -> list[ServicePerformanceMetric]:
        """ServicePerformanceMetric records from the admin port (``admin_url`` must be given)."""
        if self.admin_url is None:
            raise InvalidArgumentError("admin_url is not set on this client", 400)
        query = "&".join(f"{k}={v}" for k, v in (("service", service), ("since", since), ("limit", limit))
                         if v is not None)
        data = await self._call("GET", "/v1/metrics" + (f"?{query}" if query else ""), base=self.admin_url)
        return [ServicePerformanceMetric.from_json(m) for m in data]


async def _healthy(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
