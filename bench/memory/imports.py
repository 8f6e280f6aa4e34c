"""Where an idle sidecar's resident memory goes, by imported package: each measured in fresh interpreters.

    python -m bench.memory.imports

Two columns per package, both the growth of VmRSS (/proc/self/status) across one import after ``gc.collect()``:

  alone     the interpreter with asyncio and ssl loaded first (what every sidecar has), then the package
  marginal  every other package of the list loaded first, then this one: what leaving it out would save,
            shared dependencies (attrs, yarl, email, ...) counted with whoever else still needs them

and the interpreter's own cost (``python -c pass``, then asyncio + ssl). The packages are those an idle
``sidecar run`` with one service and mTLS imports, plus the ones it no longer does (aiohttp, prometheus_client,
dnspython's message codec, cryptography: sidecar.tls.libcrypto calls the libcrypto ssl maps), for comparison.
"""

from __future__ import annotations

import subprocess
import sys

PACKAGES = [
    "uvloop",
    "aiohttp",
    "aiohttp.web",
    "cryptography.x509",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "dns.message",
    "prometheus_client",
    "yaml",
    "sqlite3",
    "httptools",
]
# one package per group is measured marginally against the others: cryptography's two entry points share one
# Rust extension, aiohttp.web includes aiohttp
GROUPS = {"aiohttp": "aiohttp", "aiohttp.web": "aiohttp", "cryptography.x509": "cryptography",
          "cryptography.hazmat.primitives.asymmetric.ec": "cryptography"}

_PROBE = r"""
import gc, importlib, sys
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
start = rss()
import asyncio, ssl
base = rss()
for name in sys.argv[2:]:
    importlib.import_module(name)
gc.collect()
before = rss()
if sys.argv[1] != "-":
    importlib.import_module(sys.argv[1])
gc.collect()
print(start, base, before, rss())
"""


def probe(target: str, first: list[str]) -> tuple[int, int, int, int]:
    """KiB: at start, after asyncio + ssl, after ``first``, after ``target`` (each in a fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", _PROBE, target, *first], capture_output=True, text=True,
                          check=True)
    start, base, before, after = (int(x) for x in done.stdout.split())
    return start, base, before, after


def main() -> int:
    start, base, _, _ = probe("-", [])
    print(f"interpreter {start / 1024:.1f} MiB; with asyncio and ssl {base / 1024:.1f} MiB\n")
    print("| package | alone | marginal |")
    print("|---|---:|---:|")
    for name in PACKAGES:
        _, _, before, after = probe(name, [])
        group = GROUPS.get(name, name)
        others = [other for other in PACKAGES if GROUPS.get(other, other) != group]
        _, _, m_before, m_after = probe(name, others)
        print(f"| {name} | {(after - before) / 1024:.1f} MiB | {(m_after - m_before) / 1024:.1f} MiB |")
    _, _, before, after = probe("sidecar.app", [])
    print(f"| sidecar.app (the whole process's imports at start) | {(after - before) / 1024:.1f} MiB | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
