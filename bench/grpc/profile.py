"""Where a call's CPU goes in each sidecar of the pair: py-spy samples (with C frames, so the compiled request
path shows) taken while one load runs, each sample charged to the layer of its innermost frame that belongs to
one. Each process's user CPU over the load (utime, /proc) is shared out by its samples' layers, and its kernel
CPU (stime) is one row of its own; all in µs per call.

Layers, innermost first (a sample in ``Py_DECREF`` under ``hpack.Encoder.encode`` is HPACK's):
  TLS              OpenSSL (libssl, libcrypto) and uvloop's SSL protocol
  h2 core          python-hyper's h2 and hyperframe (the state machine, frame objects)
  our HPACK/frames sidecar/http2/hpack.py, huffman.py, frames.py (compiled)
  H2Connection     sidecar/http2/connection.py and guard.py: our wrapper around h2 (flow control, guard, events)
  h2down/h2up      sidecar/proxy/h2down.py, h2up.py, h2heads.py, http2/grpc.py: HTTP/2 streams <-> exchanges
  HTTP/1.1         the HTTP/1.1 hop between the sidecars: http1, http1read, upstream, downstream, pool, relay,
                   the inbound, llhttp
  exchange         sidecar/proxy/exchange.py and what it calls per request: routing, the resilience policy,
                   authorization, records and metrics, trace context, the error shape
  syscalls         libc's read/write/send/recv: left out of the user share, the kernel row stands for them
  event loop       uvloop/libuv and asyncio: callbacks, timers, transports
  GC               the cyclic garbage collector
  other            the rest (gossip, health checks, the interpreter itself with no frame of ours above it)

py-spy samples wall time of the running thread: on a loaded machine a process that waits for a core is
charged to the frame it stopped in, and stopping the process for each sample slows it (the totals come out
1.4-2.6x the unprofiled CPU per call), so the split is a guide to where to cut, not an exact CPU account.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.proxy.__main__ import cpu_times
from bench.proxy.mesh import spy, stacks

RATE = 200  # samples a second: py-spy stops the process for each (C frames), which slows it
SETTLE = 3.0  # seconds between py-spy's start and the load's

# (layer, pattern on a frame "function (file:line)"); the first that matches the innermost frame wins
_LAYERS: list[tuple[str, re.Pattern[str]]] = [(layer, re.compile(pattern)) for layer, pattern in [
    ("GC", r"^(gc_collect|collect_generation|gc_collect_main)"),
    ("TLS", r"\(libssl|\(libcrypto|SSLProtocol|sslproto|^_ssl|\(ssl\.py"),
    ("syscalls", r"^(write|read|writev|sendmsg|recvmsg|send|recv|__libc_\w+|epoll_ctl) \(libc"),
    ("h2 core", r"\(h2/|\(hyperframe/|\(hpack/"),
    ("our HPACK/frames", r"\(sidecar/http2/(hpack|huffman|frames)\.py|CPy[A-Za-z]+_(hpack|huffman|frames)___"),
    ("H2Connection", r"\(sidecar/http2/(connection|guard|events|limits)\.py"),
    ("h2down/h2up", r"\(sidecar/proxy/h2(down|up|heads)\.py|\(sidecar/http2/grpc\.py"
                    r"|CPy[A-Za-z]+_(h2down|h2up|h2heads)___"),
    ("HTTP/1.1", r"CPy[A-Za-z]+_(http1|http1read|upstream|downstream|pool|relay|inbound|inbound_routes|tunnel|"
                 r"connector)___"
                 r"|\(sidecar/proxy/(http1|http1read|upstream|downstream|pool|relay)\.py|\(sidecar/mesh/inbound"
                 r"|llhttp|\(parser\.c|httptools"),
    ("exchange", r"CPy[A-Za-z]+_(exchange|sides|router|dataplane|authorization|naming|local_apps|stats|target|paths|"
                 r"tracecontext|errors|failures|limits|engine|policy|retry|budget|breaker|outlier|balancer|cluster|"
                 r"deadline|readiness|rules|views|records|requests|hub|spans|sampling|propagation|accessline|otlp)___"
                 r"|\(sidecar/(proxy|mesh|resilience|telemetry|overload)/|\(sidecar/errors\.py"),
    ("event loop", r"\(loop\.c|\(uv|\(core\.c|\(linux\.c|\(stream\.c|\(handles/|\(asyncio/|\(libuv|^uv_|^epoll"),
]]
LAYERS = [layer for layer, _ in _LAYERS] + ["other"]
# a thread waiting (the loop in epoll, an executor's idle workers on their queue): with C frames py-spy records
# these too; they are counted apart and cost nothing
_IDLE = re.compile(r"^(epoll_pwait|epoll_wait|pthread_cond_\w*wait|nanosleep|clock_nanosleep|select|poll) \("
                   r"|^PyThread_acquire_lock")


def split(raw: str) -> tuple[int, Counter[str], dict[str, Counter[str]]]:
    """From py-spy's raw output: samples (idle ones left out), samples per layer, and per layer its costliest
    frames (the frame that picked the layer: the innermost one that belongs to a layer)."""
    per_layer: Counter[str] = Counter()
    frames_of: dict[str, Counter[str]] = {layer: Counter() for layer in LAYERS}
    samples = 0
    for frames, count in stacks(raw):
        if any(_IDLE.search(frame) for frame in frames[-4:]):
            continue
        samples += count
        layer, where = _layer(frames)
        per_layer[layer] += count
        frames_of[layer][_short(where)] += count
    return samples, per_layer, frames_of


def _layer(frames: list[str]) -> tuple[str, str]:
    for frame in reversed(frames):
        for layer, pattern in _LAYERS:
            if pattern.search(frame):
                return layer, frame
    return "other", frames[-1]


@dataclass(frozen=True, slots=True)
class Sampled:
    """One process's samples over a load and the CPU it used meanwhile (from /proc, seconds)."""

    name: str
    raw: str
    user: float
    system: float


def report(title: str, processes: list[Sampled], calls: int, top: int = 5) -> str:
    """µs of CPU per call by layer for each process: its user-space CPU (utime) shared out by the samples'
    layers, its kernel CPU (stime) as one row; then each layer's costliest frames."""
    if not calls:
        return f"### {title}\n\nno call completed; nothing to divide by"
    splits = [(process, *split(process.raw)) for process in processes]
    header = "| layer | " + " | ".join(f"{p.name} µs/call" for p in processes) + " |"
    lines = [f"### {title}", "", f"{calls} calls while sampled", "", header, "|---|" + "---:|" * len(processes)]
    user_us: list[float] = []   # µs of user CPU per sample, per process
    for process, _, per_layer, _ in splits:
        user_samples = sum(n for layer, n in per_layer.items() if layer != "syscalls")
        user_us.append(process.user / calls * 1e6 / user_samples if user_samples else 0.0)
    for layer in LAYERS:
        if layer == "syscalls" or not any(per_layer[layer] for _, _, per_layer, _ in splits):
            continue
        cells = " | ".join(f"{per_layer[layer] * scale:.1f}" for (_, _, per_layer, _), scale in
                           zip(splits, user_us, strict=True))
        lines.append(f"| {layer} | {cells} |")
    lines.append("| kernel (stime: syscalls, TCP) | " + " | ".join(f"{p.system / calls * 1e6:.1f}" for p in processes)
                 + " |")
    lines.append("| **all** | " + " | ".join(f"**{(p.user + p.system) / calls * 1e6:.1f}**" for p in processes) + " |")
    lines += ["", "top frames per layer (µs of CPU per call, both processes):"]
    for layer in LAYERS:
        if layer == "syscalls":
            continue
        merged: Counter[str] = Counter()
        for (_, _, _, frames_of), scale in zip(splits, user_us, strict=True):
            for frame, n in frames_of[layer].items():
                merged[frame] += n * scale   # type: ignore[assignment]
        if merged:
            tops = "; ".join(f"{name} {us:.1f}" for name, us in merged.most_common(top))
            lines.append(f"  {layer}: {tops}")
    return "\n".join(lines)


def profile_load(title: str, pids: dict[str, int], seconds: float, folder: Path, load: Callable[[], int]) -> str:
    """Record ``pids`` (name -> pid) while ``load()`` runs for about ``seconds`` (it returns the calls that
    completed); the report. py-spy attaches first and the load waits for the sidecars' overload guard to
    forget the pause (its hold is 1 s): a load started at once is shed with 503s."""
    calls = 0
    used: dict[int, tuple[float, float]] = {}

    def run() -> None:
        nonlocal calls
        before = {pid: cpu_times(pid) for pid in pids.values()}
        calls = load()
        for pid, (user, system) in before.items():
            after = cpu_times(pid)
            used[pid] = (after[0] - user, after[1] - system)

    recorded = spy(list(pids.values()), seconds, folder, run, native=True, settle=SETTLE, rate=RATE)
    failed = [raw for ok, raw in recorded if not ok]
    if failed:
        return f"### {title}\n\n" + "\n".join(failed)
    return report(title, [Sampled(name, raw, *used[pid]) for (name, pid), (_, raw)
                          in zip(pids.items(), recorded, strict=True)], calls)


def _short(frame: str) -> str:
    """``function (file)`` without the line; a mypyc symbol as module.Class.method."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    function, path = match.groups() if match else (frame, "")
    native = re.match(r"CPy(?:Def|Py|L)_(\w+?)___(\w+)", function)
    if native:
        return native.group(1) + "." + native.group(2).replace("___", ".")
    return f"{function} ({'/'.join(path.split('/')[-2:])})" if path else function
