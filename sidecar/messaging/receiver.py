"""The receiver of sidecar-to-sidecar deliveries: a loopback-only HTTP server that the mTLS inbound listener
hands ``/.sidecar/v1/deliver/TOPIC`` (one message) and ``/.sidecar/v1/deliver-batch/TOPIC`` (a JSON array of one
stream's messages) requests to (:meth:`Receiver.route`). A batch is for this node's stream readers, or, with
``x-sidecar-subscriber: SERVICE``, for a local app's push subscription (its inbox, :mod:`sidecar.messaging.inbox`,
with the publisher's sequence numbers in ``x-sidecar-seqs`` and its node and store epoch in
``x-sidecar-origin``). What it answers for is stored: one commit for a batch, before the answer.

Who may deliver (zero trust between members): only a peer sidecar, through the inbound (the request carries a
token only this process knows); whose SPIFFE ID is the message's sender; which the authorization rules admit to
the services reading the topic here (or, for a push batch, to the subscribing service as ``POST`` to its
subscription's path); which the topic's scope lets publish; and only for a topic this node has readers of (or a
subscription of that service to it).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from itertools import pairwise

from sidecar.config.values import HostPort
from sidecar.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from sidecar.httpd import App, Request, Response, Site, WebLimits, post
from sidecar.mesh.inbound_routes import CALLER_HEADER
from sidecar.messaging.context import DELIVER_BATCH_PREFIX, DELIVER_PREFIX, MessagingContext
from sidecar.messaging.courier import AFTER_HEADER, ORIGIN_HEADER, SEQS_HEADER, SUBSCRIBER_HEADER
from sidecar.messaging.envelope import Received, ServiceMessage, batch_from_bytes, check_topic
from sidecar.messaging.inbox import Inbox
from sidecar.messaging.readers import StreamReaders
from sidecar.messaging.streams import MAX_BULK_BYTES
from sidecar.messaging.topic_log import TopicLog
from sidecar.proxy import RequestHead, Target
from sidecar.tls.errors import SpiffeIdError
from sidecar.tls.identity import PeerIdentity, SpiffeId
from sidecar.web import errors_middleware, json_response

_INTERNAL_HEADER = b"x-sidecar-internal"
_ORIGIN = re.compile(r"^[A-Za-z0-9._-]{1,300}$")
# its only client is this process's inbound listener, whose pooled connections (one per request in flight from
# every peer) it must never refuse; the inbound itself caps what peers may open
RECEIVER_LIMITS = WebLimits(max_connections=1 << 16)


def parse_seqs(text: str, count: int, header: str = SEQS_HEADER) -> list[int]:
    """A push batch's sequence numbers (``header``'s value): ``count`` ascending positive integers, comma-separated."""
    try:
        seqs = [int(part) for part in text.split(",")] if text else []
    except ValueError:
        raise InvalidArgument(f"{header} is comma-separated integers", {"header": header}) from None
    if len(seqs) != count or any(b <= a for a, b in pairwise(seqs)) or (seqs and seqs[0] < 1):
        raise InvalidArgument(f"{header} must give {count} ascending positive sequence number(s), one a message",
                              {"header": header})
    return seqs


def _all_stored(messages: list[Received]) -> Response:
    """The answer to a batch stored whole: a SUCCESS per message."""
    return json_response({"statuses": [{"id": message_id, "status": "SUCCESS"} for message_id, _, _ in messages]})


class Receiver:
    def __init__(self, ctx: MessagingContext, readers: StreamReaders, topic_log: TopicLog, inbox: Inbox) -> None:
        self.ctx = ctx
        self.readers = readers
        self.topic_log = topic_log
        self.inbox = inbox
        self.target: Target | None = None   # where the inbound sends deliveries, once started
        self._site: Site | None = None
        self._token = secrets.token_urlsafe(32).encode()

    async def start(self) -> None:
        # a batch is cut at MAX_BULK_BYTES, but its last message may be up to a whole message over
        app = App(middlewares=[errors_middleware], max_body=MAX_BULK_BYTES + (2 << 20))
        app.add_routes([post(DELIVER_PREFIX + "{topic}", self._receive),
                        post(DELIVER_BATCH_PREFIX + "{topic}", self._receive_batch)])
        site = self._site = Site("messaging", app, HostPort("127.0.0.1", 0), limits=RECEIVER_LIMITS)
        bound = await site.start()
        self.target = Target((bound.host, bound.port), timeout=30.0, tag="messaging")

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()

    async def _receive(self, request: Request) -> Response:
        topic, caller = self._checked(request)
        raw = await request.read()
        try:
            message = ServiceMessage.from_bytes(raw)
        except ValueError as e:
            raise InvalidArgument(f"not a ServiceMessage: {e}") from None
        self._check_sender([(message.id, message.service, raw)], caller, topic)
        event_id = await self.topic_log.append(topic, raw)
        return json_response({"status": "ok", "eventId": event_id, "duplicate": event_id is None})

    async def _receive_batch(self, request: Request) -> Response:
        """A JSON array of ServiceMessages of one stream, in order: all stored in one commit before the answer,
        ``{"statuses": [{"id", "status": "SUCCESS"}, ...]}`` (a duplicate is a success: it is stored already). Each
        message is stored as it came when it came as the sender's sidecar writes it (:func:`batch_from_bytes`)."""
        topic, caller = self._checked(request)
        try:
            messages = batch_from_bytes(await request.read())
        except (ValueError, RecursionError) as e:
            raise InvalidArgument(f"not a batch of ServiceMessages: {e}") from None
        service = request.headers.get(SUBSCRIBER_HEADER)
        if service is not None:
            return await self._receive_push(request, topic, caller, service, messages)
        self._check_sender(messages, caller, topic)
        await self.topic_log.append_items(topic, [(message_id, body) for message_id, _, body in messages])
        self.ctx.counters["stream_batches"] += 1
        return _all_stored(messages)

    async def _receive_push(self, request: Request, topic: str, caller: str, service: str,
                            messages: list[Received]) -> Response:
        """A publisher's stream for a local app: into its inbox, duplicates (at or below the mark) dropped."""
        seqs = parse_seqs(request.headers.get(SEQS_HEADER) or "", len(messages))
        origin = request.headers.get(ORIGIN_HEADER) or ""
        if not _ORIGIN.match(origin):
            raise InvalidArgument(f"{ORIGIN_HEADER} must name the publishing node and epoch", {"header": ORIGIN_HEADER})
        after_text = request.headers.get(AFTER_HEADER)
        after = parse_seqs(after_text, 1, AFTER_HEADER)[0] if after_text is not None else None
        proven = self._proven(messages, caller)
        items = [(seq, message_id, body) for seq, (message_id, _, body) in zip(seqs, messages, strict=True)]
        await self.inbox.receive(f"{proven}@{origin}", topic, service, items, after)
        self.ctx.counters["push_batches"] += 1
        return _all_stored(messages)

    def _checked(self, request: Request) -> tuple[str, str]:
        """(topic, caller's SPIFFE ID) of a request that came through the inbound (it carries the token)."""
        given = request.headers.get_bytes(_INTERNAL_HEADER) or b""
        if not hmac.compare_digest(given, self._token):
            raise Unauthenticated("sidecar-internal deliveries come only through the mTLS inbound listener")
        return check_topic(request.match_info["topic"]), request.headers.get(CALLER_HEADER) or ""

    def _proven(self, messages: list[Received], caller: str) -> str:
        """The caller's service, when every message says it is from it; else PermissionDenied."""
        try:
            proven = SpiffeId.from_text(caller).service or ""
        except SpiffeIdError:
            proven = ""
        for _, sender, _ in messages:
            if sender != proven:
                # the sender is whoever holds the certificate: a member cannot put words in another service's mouth
                self.ctx.counters["deliveries_refused:sender"] += 1
                raise PermissionDenied(f"the message says it is from {sender!r}, but the caller is "
                                       f"{caller}", {"service": sender, "caller": caller})
        return proven

    def _check_sender(self, messages: list[Received], caller: str, topic: str) -> None:
        self._proven(messages, caller)
        if topic not in self.readers.by_topic:
            raise NotFound(f"this node has no readers of {topic!r}", {"topic": topic})

    def route(self, head: RequestHead, caller: PeerIdentity,
              authorize: Callable[[PeerIdentity, str, str, str], None]) -> Target:
        """For the inbound listener: a request to ``/.sidecar/...`` from a verified peer goes to the receiver,
        with the caller's SPIFFE ID and the receiver's token set (whatever the peer sent in their place is
        removed). Refused before any body is read: a topic this node has no readers of (404), a caller ``authorize``
        refuses for any service reading the topic here (403; the request is matched as
        ``POST /.sidecar/v1/deliver/TOPIC`` to that service), a caller the topic's scope does not let publish (403)."""
        prefix = next((p for p in (DELIVER_PREFIX, DELIVER_BATCH_PREFIX) if head.path.startswith(p)), None)
        if self.target is None or prefix is None or head.method != "POST":
            raise NotFound(f"no such sidecar-internal resource: {head.method} {head.path}")
        topic = head.path[len(prefix):]
        subscriber = head.headers.get(SUBSCRIBER_HEADER) if prefix == DELIVER_BATCH_PREFIX else None
        if subscriber is not None:
            subscription = self.inbox.book.local.get((subscriber, topic))
            if subscription is None:
                raise NotFound(f"{subscriber} has no subscription to {topic!r} here",
                               {"service": subscriber, "topic": topic})
            authorize(caller, subscriber, head.method, subscription.path)
        else:
            readers = self.readers.by_topic.get(topic)
            if not readers:
                raise NotFound(f"this node has no readers of {topic!r}", {"topic": topic})
            for service in sorted(readers):
                authorize(caller, service, head.method, head.path)
        scopes = self.ctx.scopes
        if not scopes.may_publish(caller.service, topic):
            self.ctx.counters["deliveries_refused:scope"] += 1
            where = scopes.where(topic, "publishers")
            raise PermissionDenied(f"{caller.service} may not publish to {topic} ({where})",
                                   {"caller": caller.spiffe_id, "topic": topic, "rule": where})
        items = [i for i in head.headers.items if i[0] not in (_INTERNAL_HEADER, CALLER_HEADER)]
        items.append((CALLER_HEADER, CALLER_HEADER, caller.spiffe_id.encode("latin-1")))
        items.append((_INTERNAL_HEADER, _INTERNAL_HEADER, self._token))
        head.headers.items = items
        return self.target
