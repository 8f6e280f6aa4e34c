"""The open-file limit: raised at start from the soft to the hard limit, as Envoy and HAProxy users expect
thousands of connections to work. Each connection is a descriptor (two when proxied), and the soft limit
of a shell or a systemd unit is often 1024 while the hard one is 64k to 1M."""

from __future__ import annotations

import logging

log = logging.getLogger("sidecar.overload")

# with no hard limit (RLIM_INFINITY) the soft one is raised to the first of these the kernel accepts: Linux
# refuses more than fs.nr_open (default 1,048,576), macOS more than OPEN_MAX (10,240)
UNLIMITED_TARGETS = (1 << 20, 1 << 16, 10240)


def raise_open_files_limit(wanted: int = 0) -> tuple[int, int] | None:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns (soft, hard) after, or None where the
    platform has no such limit. Never fails: the process runs with what it gets. Logs the result at debug,
    and a warning when the soft limit stays under ``wanted`` descriptors."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    infinity = resource.RLIM_INFINITY
    targets = UNLIMITED_TARGETS if hard == infinity else (hard,)
    for target in targets:
        if soft == infinity or soft >= target:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            break
        except (OSError, ValueError) as e:
            log.debug("could not raise the open-file limit to %d: %s", target, e)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.debug("open-file limit: soft %d, hard %d", soft, hard)
    if soft != infinity and soft < wanted:
        log.warning("the open-file limit (%d, hard %d) is under the %d descriptors the connection caps allow: "
                    "at the limit, new connections fail on every listener, the admin port included; raise "
                    "ulimit -n or lower overload.max_connections_per_listener", soft, hard, wanted)
    return soft, hard
