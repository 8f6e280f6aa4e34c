"""`python -m bench.proxy.gcfreeze run -c FILE`: `sidecar run`, with gc.freeze() called once it has started.

The sidecar has no switch for it; this measures what one would bring. The freeze runs from a timer thread a few
seconds after start (``BENCH_GC_FREEZE_AFTER``, default 3 s), when the process has built its long-lived objects
(modules, config, catalog, contexts): the collector then never walks them again.
``BENCH_GC_THRESHOLD`` (e.g. ``50000,20,100``) also sets ``gc.set_threshold`` at start.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import threading


def main() -> None:
    delay = float(os.environ.get("BENCH_GC_FREEZE_AFTER", "3"))
    threshold = os.environ.get("BENCH_GC_THRESHOLD")
    if threshold:
        gc.set_threshold(*(int(part) for part in threshold.split(",")))
    timer = threading.Timer(delay, gc.freeze)
    timer.daemon = True
    timer.start()
    sys.argv = ["sidecar", *sys.argv[1:]]
    runpy.run_module("sidecar", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
