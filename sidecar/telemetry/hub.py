"""One object per process that every finished request and message reports to, and that the admin port reads.

    telemetry = Telemetry(config, clock)
    dataplane.request_listeners.append(telemetry.on_request)    # after the DataPlane is built
    telemetry.start()                                           # in the loop: loop clock, lag timer
    ...
    await telemetry.stop()                                      # flushes the span exporter

Per request (:meth:`Telemetry.on_request`, on the proxy's hot path, after the response was flushed): one
:class:`~sidecar.telemetry.records.Record` appended to the ring, one counter/histogram update, and only when
configured a sampled request queued for its span, an access-log line formatted and queued (both written by their
own worker threads, never on the loop). Everything else happens when someone reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from sidecar.clock import Clock
from sidecar.config.model import AccessLogConfig, Config, TracingConfig
from sidecar.http2.grpc import SERVER_ERRORS as GRPC_SERVER_ERRORS
from sidecar.mesh.naming import Names
from sidecar.proxy.target import RequestStats
from sidecar.telemetry.access import AccessLog
from sidecar.telemetry.grpcmethods import MethodNames
from sidecar.telemetry.looplag import LoopLag
from sidecar.telemetry.propagation import MessageTrace
from sidecar.telemetry.records import GRPC_NO_STATUS, RecordStore
from sidecar.telemetry.requests import GrpcCalls, RequestMetrics
from sidecar.telemetry.sampling import Sampler

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracer

UNKNOWN: Final = "unknown"


def local_service_name(config: Config) -> str:
    """The ``source`` of this node's outbound requests: its first service (a sidecar usually serves one app),
    else the node's name."""
    return config.services[0].name if config.services else config.node.name


def tracer_for(config: TracingConfig, resource: dict[str, str]) -> Tracer | None:
    """The tracer the config asks for, or None for ``exporter: none``; only then is the OpenTelemetry SDK (and only
    the chosen exporter) imported, which a sidecar without tracing never pays for."""
    if config.exporter == "none":
        return None
    from sidecar.telemetry.tracing import Tracer
    return Tracer.from_config(config, resource)


def access_log_for(config: AccessLogConfig, clock: Clock) -> AccessLog | None:
    return AccessLog(config.format, path=config.path, wall=clock.wall) if config.enabled else None


class Telemetry:
    """See the module's doc. ``tracer`` and ``access_log`` default to what ``config.telemetry`` asks for."""

    def __init__(self, config: Config, clock: Clock, *, tracer: Tracer | bool | None = True,
                 access_log: AccessLog | bool | None = True) -> None:
        settings = config.telemetry
        self.config = config
        self.clock = clock
        self.records = RecordStore(settings.max_samples, float(settings.retention))
        self.requests = RequestMetrics()
        self.grpc_calls = GrpcCalls()
        self.grpc_methods = MethodNames()
        self.source = local_service_name(config)
        self.resource = {"service.name": self.source, "service.instance.id": config.node.name,
                         "service.namespace": config.node.cluster, "sidecar.node": config.node.name}
        if tracer is True:
            tracer = tracer_for(settings.tracing, self.resource)
        self.tracer: Tracer | None = tracer or None
        if access_log is True:
            access_log = access_log_for(settings.access_log, clock)
        self.access: AccessLog | None = access_log or None
        self.lag = LoopLag()
        self.names = Names(config.dns.domain)
        self.now: Callable[[], float] = clock.monotonic   # the loop's clock once started, like the engine's
        self._offset = 0.0            # wall minus loop clock, as of loop time _offset_at
        self._offset_at = float("-inf")
        self.messages = 0

    def start(self) -> None:
        """In the running loop: read time as the engine does (``loop.time``) and start the lag timer."""
        self.now = asyncio.get_running_loop().time
        self._offset_at = float("-inf")
        self.lag.start()

    async def stop(self) -> None:
        self.lag.stop()
        loop = asyncio.get_running_loop()
        # both drain their queues, blocking on the network or the disk (bounded): not on the loop
        if self.tracer is not None:
            await loop.run_in_executor(None, self.tracer.shutdown)
        if self.access is not None:
            await loop.run_in_executor(None, self.access.close)

    def wall_offset(self) -> float:
        """Wall clock minus loop clock: turns loop times into epoch seconds."""
        return self.clock.wall() - self.now()

    def _wall_offset_at(self, loop_time: float) -> float:
        """:meth:`wall_offset`, read again at most once a second of loop time (the two clocks drift by parts per
        million): a request's end (loop time) becomes its wall time without reading a clock per request."""
        if not self._offset_at <= loop_time < self._offset_at + 1.0:
            self._offset = self.wall_offset()
            self._offset_at = loop_time
        return self._offset

    # ------------------------------------------------------------------------------------ hot path

    def on_request(self, listener: str, stats: RequestStats) -> None:
        """``DataPlane.request_listeners`` callback: ``listener`` is outbound, upstream or inbound."""
        inbound = listener == "inbound"
        direction = "inbound" if inbound else "outbound"
        service = getattr(stats.tag, "service", None)
        label = service or UNKNOWN
        if service is None:
            name = self.names.parse(stats.host)
            service = name.service if name is not None else UNKNOWN
        status = stats.status
        failed = stats.error is not None or status == 0 or status >= 500
        duration = stats.duration
        peer = getattr(stats, "conn", None) if inbound else None
        if inbound:
            caller = None if peer is None else peer.data.get("caller")
            source = UNKNOWN if caller is None else getattr(caller, "service", UNKNOWN)
        else:
            source = self.source
        if stats.grpc:
            grpc_status = stats.grpc_status
            if grpc_status in GRPC_SERVER_ERRORS:
                failed = True
            method = self.grpc_methods.name(label, stats.target)
            self.grpc_calls.record(direction, source, label, method, grpc_status)
            self.records.append(service, method, duration, stats.started, not failed, direction,
                                GRPC_NO_STATUS if grpc_status is None else grpc_status)
        else:
            self.records.append(service, stats.method, duration, stats.started, not failed, direction)
        self.requests.record(direction, source, label, stats.method, status, failed, duration,
                             stats.request_bytes, stats.response_bytes)
        tracer = self.tracer
        access = self.access
        if tracer is not None or access is not None:
            offset = self._wall_offset_at(stats.ended)
            if tracer is not None:
                tracer.request(direction, stats, service, offset, peer)
            if access is not None:
                access.request(direction, service, stats, peer, stats.ended + offset)

    # ------------------------------------------------------------------------------------ messages

    def on_message(self, service: str, method: str, started: float, ended: float, ok: bool, *,
                   direction: str = "outbound", trace: MessageTrace | None = None, message_id: str | None = None,
                   error: str | None = None) -> None:
        """For the messaging engine: one performance record per message operation (``service`` the target
        service or topic, ``method`` ``publish`` | ``request`` | ``deliver``; ``started``/``ended`` in loop
        time, i.e. :meth:`now`), and its span when ``trace`` is given and tracing is on."""
        self.messages += 1
        self.records.append(service, method, ended - started, started, ok, direction)
        if self.tracer is not None and trace is not None:
            operation = {"publish": "publish", "request": "send", "deliver": "process"}.get(method, method)
            self.tracer.message(operation, service, trace, started, ended, self.wall_offset(),
                                message_id=message_id, error=error if error is not None or ok else "error")

    # ------------------------------------------------------------------------------------ reload

    async def reconfigure(self, config: Config, access_log: AccessLog | None = None) -> None:
        """A reloaded configuration: tracing (a new sample ratio in place; another exporter or endpoint starts a
        new tracer and the old one is flushed off the loop), the access log, the local service's name. Records
        and counters are kept. ``access_log``: the new access log already opened (:func:`access_log_for`), so that
        a file that cannot be opened refuses the reload before anything changed; None opens it here."""
        old, new = self.config.telemetry, config.telemetry
        self.config = config
        self.source = local_service_name(config)
        if new.tracing != old.tracing:
            retired = self.tracer
            if retired is not None and (new.tracing.exporter, new.tracing.endpoint) == (old.tracing.exporter,
                                                                                       old.tracing.endpoint):
                retired.sampler = Sampler(new.tracing.sample_ratio)
            else:
                self.tracer = tracer_for(new.tracing, self.resource)
                if retired is not None:
                    await asyncio.get_running_loop().run_in_executor(None, retired.shutdown)
        if new.access_log != old.access_log:
            retired_log = self.access
            self.access = access_log if access_log is not None else access_log_for(new.access_log, self.clock)
            if retired_log is not None:
                await asyncio.get_running_loop().run_in_executor(None, retired_log.close)

    def request_counts(self) -> tuple[int, int]:
        """(requests, failed) since start, every direction; failed as :meth:`on_request` counts it."""
        return self.requests.totals()

    def recent_counts(self, seconds: float) -> tuple[int, int]:
        """(requests and messages, failed) that started in the last ``seconds``."""
        records = self.records.window(seconds, self.now())
        return len(records), sum(1 for r in records if not r.ok)

    # ------------------------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        return {"records": len(self.records), "maxSamples": self.records.max_samples,
                "retentionSeconds": self.records.retention,
                "tracing": None if self.tracer is None else self.tracer.status(),
                "accessLog": None if self.access is None else self.access.status(),
                "eventLoopLagMs": round(self.lag.last * 1000.0, 3)}
