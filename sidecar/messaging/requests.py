"""Request-response: a ServiceMessage to one instance of a service, through this sidecar's outbound listener
(mTLS, authorization, balancing, retries and tracing apply), and the app's answer back."""

from __future__ import annotations

from sidecar.errors import DeadlineExceeded, SidecarError, Unavailable
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import endpoint_set
from sidecar.messaging.context import MessagingContext
from sidecar.messaging.envelope import MessageBody, ServiceMessage

MAX_RESPONSE = 8 << 20       # a request-response answer larger than this is refused (the API takes 1 MiB in)
_PASSED_ON = ("content-type", "x-sidecar-error", "x-request-id", "traceparent")


async def send(ctx: MessagingContext, service: str, body: MessageBody, sender_header: str | None = None,
               trace: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Deliver a ServiceMessage to one instance of ``service`` at its messages_path and return the app's answer
    (status, headers worth passing on, body). Errors of the mesh come back as the mesh answered them."""
    ctx.require()
    snapshot = ctx.catalog.snapshot()
    instances = snapshot.service(service)
    if not instances:
        raise endpoint_set(snapshot, ServiceName(service)).no_endpoint()
    routable = snapshot.routable(service)
    path = (routable or instances)[0].messages_path
    message = ServiceMessage.new(ctx.sender(sender_header), body, ctx.now_ms())
    timeout = float(ctx.settings.request_timeout)
    ctx.counters["requests"] += 1
    assert ctx.client is not None and ctx.outbound is not None
    headers = [*(trace or {}).items(), ("Content-Type", "application/json"), ("x-sidecar-message-id", message.id)]
    try:
        answer = await ctx.client.post((ctx.outbound.host, ctx.outbound.port), path, message.to_bytes(), headers,
                                       timeout=timeout, limit=MAX_RESPONSE + 1, authority=service)
    except TimeoutError:
        ctx.counters["request_timeouts"] += 1
        raise DeadlineExceeded(f"{service} did not answer the message within {timeout:.3f}s",
                               {"service": service, "messageId": message.id}) from None
    except (SidecarError, OSError) as e:
        ctx.counters["request_errors"] += 1
        raise Unavailable(f"the message to {service} could not be sent: {type(e).__name__}: {e}",
                          {"service": service, "messageId": message.id}) from None
    if len(answer.body) > MAX_RESPONSE:
        raise Unavailable(f"{service} answered more than {MAX_RESPONSE} bytes", {"service": service})
    keep = {k: v for k, v in answer.headers if k.lower() in _PASSED_ON}
    return answer.status, keep, answer.body
