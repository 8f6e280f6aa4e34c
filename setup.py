"""Builds the request path's modules to C with mypyc; everything else (and the metadata) is in pyproject.toml.

The listed modules are ordinary, fully typed Python (mypy --strict). Compiled, a proxied request costs about a
third less CPU; without a C compiler, or with SIDECAR_PURE_PYTHON=1, the same modules run as plain Python.
After editing one of them in a checkout, `make native` rebuilds them in place (the test suite refuses to start
on a compiled module older than its source).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules every proxied request runs through: HTTP/1.1 and HTTP/2 framing, the exchange and its client and upstream
# sides, the caller's resilience policy, routing and authorization (and the catalog snapshot they read), the
# per-request telemetry: record, access-log line, span and its OTLP bytes; and the HTTP/1.1 server every request of
# the app API, the admin port and messaging's receiver goes through (sidecar.httpd, the access rules), with the
# messages' envelopes and the bytes and the verdict of a delivery to an app (one POST a message).
NATIVE = [
    "sidecar/access.py",
    "sidecar/api/guard.py",
    "sidecar/catalog/mesh.py",
    "sidecar/clock.py",
    "sidecar/dns/cache.py",
    "sidecar/dns/counters.py",
    "sidecar/dns/server.py",
    "sidecar/dns/wire.py",
    "sidecar/errors.py",
    "sidecar/http2/core.py",
    "sidecar/http2/events.py",
    "sidecar/http2/flow.py",
    "sidecar/http2/frames.py",
    "sidecar/http2/grpc.py",
    "sidecar/http2/guard.py",
    "sidecar/http2/headercheck.py",
    "sidecar/http2/hpack.py",
    "sidecar/http2/huffman.py",
    "sidecar/http2/limits.py",
    "sidecar/http2/streamstate.py",
    "sidecar/httpd/app.py",
    "sidecar/httpd/connection.py",
    "sidecar/httpd/limits.py",
    "sidecar/httpd/request.py",
    "sidecar/httpd/response.py",
    "sidecar/httpd/router.py",
    "sidecar/httpd/site.py",
    "sidecar/mesh/authorization.py",
    "sidecar/mesh/dataplane.py",
    "sidecar/mesh/inbound.py",
    "sidecar/mesh/inbound_routes.py",
    "sidecar/mesh/local_apps.py",
    "sidecar/mesh/naming.py",
    "sidecar/mesh/peers.py",
    "sidecar/mesh/router.py",
    "sidecar/mesh/stats.py",
    "sidecar/mesh/tunnel_header.py",
    "sidecar/mesh/upstream_listeners.py",
    "sidecar/messaging/apprequest.py",
    "sidecar/messaging/delivery.py",
    "sidecar/messaging/envelope.py",
    "sidecar/proxy/downstream.py",
    "sidecar/proxy/engine.py",
    "sidecar/proxy/client.py",
    "sidecar/proxy/clientwire.py",
    "sidecar/proxy/connector.py",
    "sidecar/proxy/exchange.py",
    "sidecar/proxy/failures.py",
    "sidecar/proxy/grpcheads.py",
    "sidecar/proxy/h2down.py",
    "sidecar/proxy/h2heads.py",
    "sidecar/proxy/h2pool.py",
    "sidecar/proxy/h2up.py",
    "sidecar/proxy/http1.py",
    "sidecar/proxy/http1read.py",
    "sidecar/proxy/limits.py",
    "sidecar/proxy/paths.py",
    "sidecar/proxy/pool.py",
    "sidecar/proxy/relay.py",
    "sidecar/proxy/sides.py",
    "sidecar/proxy/target.py",
    "sidecar/proxy/tracecontext.py",
    "sidecar/proxy/tunnel.py",
    "sidecar/proxy/upstream.py",
    "sidecar/proxy/writebatch.py",
    "sidecar/resilience/backoff.py",
    "sidecar/resilience/balancer.py",
    "sidecar/resilience/breaker.py",
    "sidecar/resilience/budget.py",
    "sidecar/resilience/cluster.py",
    "sidecar/resilience/deadline.py",
    "sidecar/resilience/outlier.py",
    "sidecar/resilience/policy.py",
    "sidecar/resilience/readiness.py",
    "sidecar/resilience/retry.py",
    "sidecar/resilience/rules.py",
    "sidecar/resilience/views.py",
    "sidecar/telemetry/access.py",
    "sidecar/telemetry/accessline.py",
    "sidecar/telemetry/batcher.py",
    "sidecar/telemetry/hub.py",
    "sidecar/telemetry/otlp.py",
    "sidecar/telemetry/otlphops.py",
    "sidecar/telemetry/propagation.py",
    "sidecar/telemetry/records.py",
    "sidecar/telemetry/requests.py",
    "sidecar/telemetry/sampling.py",
    "sidecar/telemetry/spans.py",
    "sidecar/telemetry/tracing.py",
]


def pure(reason: str) -> list[object]:
    if os.environ.get("SIDECAR_REQUIRE_NATIVE") == "1":
        # `make native` builds in place: a fallback there would leave the previous library loaded, stale
        raise SystemExit(f"error: {reason}; SIDECAR_REQUIRE_NATIVE=1 wants the compiled request path")
    print(f"note: {reason}; the request path runs as plain Python (slower, same behaviour)", file=sys.stderr)
    return []


def glibc_at_least(major: int, minor: int) -> bool:
    """Whether this machine's C library is glibc of at least that version (False for musl and the rest)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()   # "glibc 2.36"
        return name == "glibc" and tuple(int(n) for n in version.split(".")[:2]) >= (major, minor)
    except (AttributeError, OSError, TypeError, ValueError):
        return False


def native_extensions() -> list[object]:
    if os.environ.get("SIDECAR_PURE_PYTHON") == "1":
        return pure("SIDECAR_PURE_PYTHON=1")
    try:
        from mypyc.build import mypycify
    except ImportError:
        return pure("mypyc is not installed")
    try:
        # one shared library inside the package (found wherever the package is), named rather than hashed
        extensions = list(mypycify(NATIVE, opt_level="3", group_name="sidecar._native"))
    except (Exception, SystemExit) as e:  # mypyc exits on a failed type check (a dependency or stub missing)
        return pure(f"mypyc could not compile the request path ({type(e).__name__}: {e})")
    if sys.platform.startswith("linux"):
        # What the loader reads of the 9.5 MB library stays resident in every sidecar: with every symbol exported,
        # its symbol tables were 0.35 MB, and its relocations 0.45 MB (RELA, 24 bytes per pointer in its data).
        # Only PyInit_ need exporting (the modules' shims reach their code through capsules), and packed relative
        # relocations take a few KB: 0.45 MiB less RSS. Packed relocations (DT_RELR) need glibc 2.36 to load: asked
        # for only where the building glibc has it (an older linker ignores the option).
        relr = ["-Wl,-z,pack-relative-relocs"] if glibc_at_least(2, 36) else []
        for extension in extensions:
            extension.extra_compile_args = [*(extension.extra_compile_args or []), "-fvisibility=hidden"]
            extension.extra_link_args = [*(extension.extra_link_args or []), *relr]
    return extensions


class OptionalBuildExt(build_ext):
    """A failed C build (no compiler, no Python headers) leaves the modules as Python instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, DistutilsExecError, DistutilsPlatformError
            pure(f"compiling the request path failed ({e})")


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
