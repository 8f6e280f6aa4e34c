"""The overload guard: shed new requests with 503 before the process degrades (Envoy's overload manager,
simplified). ``guard`` is the pure core (samples in, shedding state out, with hysteresis), ``monitor`` the
asyncio driver that samples resident memory and event-loop lag, ``metrics`` its Prometheus families and admin
view, ``rlimit`` the open-file limit raised at start.

Listeners that shed hold the guard and read ``guard.shedding`` per request and ``guard.refusing`` per
connection: the proxy engine's ``HttpProxy.overload`` (outbound, inbound, upstream listeners) and
``Site(overload=...)`` (the app API). The admin port is never shed.
"""

from sidecar.overload.guard import OverloadGuard, Reason, Sample, Transition
from sidecar.overload.monitor import OverloadMonitor, ResidentMemory
from sidecar.overload.rlimit import raise_open_files_limit

__all__ = ["OverloadGuard", "OverloadMonitor", "Reason", "ResidentMemory", "Sample", "Transition",
           "raise_open_files_limit"]
