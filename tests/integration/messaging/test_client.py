"""sidecar.client against real sidecars (in one loop): registration, request-response, publish, subscribe,
subscribe_to_service, and the error tree."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import (
    InvalidArgumentError,
    MicroserviceError,
    NotFoundError,
    ServiceMessage,
    ServicePerformanceMetric,
    SidecarClient,
    error_from_response,
)
from sidecar.config.model import ServiceConfig
from tests.harness import wait_for_async
from tests.integration.messaging.inproc import Mesh


def test_client_end_to_end(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = Mesh(tmp_path, ["checkout", "payment-service"])
        try:
            async with asyncio.timeout(30):
                await mesh.add("a", "checkout", [ServiceConfig(name="checkout", port=1)])
                await mesh.add("b", "payment-service")
                a, b = mesh.nodes["a"], mesh.nodes["b"]
                async with SidecarClient(a.api_url) as client_a, SidecarClient(b.api_url) as client_b:
                    got: list[ServiceMessage] = []

                    async def on_message(message: ServiceMessage) -> dict[str, Any]:
                        got.append(message)
                        return {"charged": message.payload["amount"]}

                    handle = await client_b.subscribe_to_service("payment-service", on_message, version="1.2.3",
                                                                 tags=["payments"], check={"ttl": "30s"})
                    assert handle.id is not None
                    await client_b.heartbeat(handle.id, "healthy")  # a ttl check starts unhealthy
                    instances = await wait_for_async(lambda: a.catalog.snapshot().routable("payment-service"),
                                                 what="payment-service in a's catalog")
                    assert instances[0].version == "1.2.3" and instances[0].port == handle.port
                    reply = await client_a.send_message("payment-service", "pay", {"amount": 42}, {"trace": "t"})
                    assert reply.ok and reply.json() == {"charged": 42}
                    assert got[0].service == "checkout" and got[0].metadata == {"trace": "t"}
                    with pytest.raises(NotFoundError) as caught:
                        await client_a.send_message("nowhere", "t", 1)
                    assert caught.value.code == "NOT_FOUND" and caught.value.grpc_code == 5
                    with pytest.raises(InvalidArgumentError):
                        await client_a.publish("bad topic", "t", 1)

                    # subscribe (SSE) on b, publish on a
                    received: list[ServiceMessage] = []

                    async def consume() -> None:
                        async for message in client_b.subscribe("news"):
                            received.append(message)
                            if len(received) == 3:
                                return
                    reader = asyncio.create_task(consume())
                    await wait_for_async(lambda: ("news", "node:b") in a.messaging.book.wanted(), what="stream sub")
                    ids = [await client_a.publish("news", "n", i) for i in range(3)]
                    await asyncio.wait_for(reader, 10)
                    assert [m.id for m in received] == ids and [m.payload for m in received] == [0, 1, 2]

                    service_id = handle.id
                    assert service_id is not None
                    assert [s.name for s in await client_b.services()] == ["payment-service"]
                    meta = await client_b.heartbeat(service_id, "degraded", "busy")
                    assert meta.status.value == "degraded"
                    await handle.close()
                    assert await client_b.services() == []
        finally:
            await mesh.close()
    asyncio.run(main())


def test_error_tree_and_models() -> None:
    error = error_from_response(429, b'{"error": {"code": "RESOURCE_EXHAUSTED", "grpcCode": 8, "message": "full",'
                                     b' "details": {"pending": 3}}}')
    assert isinstance(error, MicroserviceError) and error.code == "RESOURCE_EXHAUSTED" and error.grpc_code == 8
    assert error.status == 429 and error.details == {"pending": 3} and str(error) == "full"
    assert error_from_response(500, b"garbage").code == "INTERNAL"
    metric = ServicePerformanceMetric.from_json({"serviceMethod": "a.b", "latency": 1.5, "timestamp": 3,
                                                 "status": "success"})
    assert metric.to_json() == {"serviceMethod": "a.b", "latency": 1.5, "timestamp": 3, "status": "success"}
    with pytest.raises(ValueError):
        ServicePerformanceMetric.from_json({"serviceMethod": "a", "latency": 1, "timestamp": 3, "status": "meh"})
