"""The gRPC test service as its own process: ``python -m tests.grpcapps.server --port 0 --instance a
[--unavailable-every 3] [--workers 64]``. It prints ``PORT <n>`` once listening and stops on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.grpcapps.service import Knobs, serve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--instance", default="echo", help="the id every answer carries (x-instance)")
    parser.add_argument("--unavailable-every", type=int, default=0, metavar="N",
                        help="every Nth Unary call answers UNAVAILABLE (0: never)")
    parser.add_argument("--workers", type=int, default=64, help="calls in progress at once")
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running = serve(Knobs(args.instance, args.unavailable_every), args.host, args.port, args.workers)
    print(f"PORT {running.port}", flush=True)
    stop.wait()
    running.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
