"""Group commit: every write to the store goes through one task, and everything queued while a commit runs is
written by the next one, in one transaction and one fsync. Each caller still waits for its own commit.

    writer = Writer(store, clock)
    writer.start()
    seq = await writer.submit(lambda s: s.w_publish(...)[0], size=len(body))
    await writer.stop()      # drains what is queued, then closes
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sidecar.clock import Clock
from sidecar.errors import Unavailable
from sidecar.messaging.store import Evicted, Store

log = logging.getLogger("sidecar.messaging")

T = TypeVar("T")
Op = Callable[[Store], Any]
MAX_BATCH = 4096  # operations per transaction: bounds one commit's time (and the wait of the first in it)
# when only operations that need no fsync are queued (acks), the writer waits this long for more before it commits:
# a subscriber acking one message at a time would otherwise cost a commit (a trip to the thread) per ack
ACK_LINGER = 0.002


class Writer:
    def __init__(self, store: Store, clock: Clock, on_evicted: Callable[[list[Evicted]], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.on_evicted = on_evicted
        self._queue: deque[tuple[Op, asyncio.Future[Any], int, bool]] = deque()
        self.queued_bytes = 0
        self._durable_queued = 0   # queued operations that need an fsync
        self._lingering: asyncio.Event | None = None   # set to end the acks' linger early
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="messaging-writer")
        self._stopping = False
        # counters: commits, operations, operations per commit (the group-commit effect)
        self.commits = 0
        self.operations = 0
        self.failures = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="messaging-writer")

    def submit(self, op: Callable[[Store], T], size: int = 0, durable: bool = True) -> asyncio.Future[T]:
        """Queue ``op`` for the next commit; the future resolves with its result once committed (fsync'd, unless
        every operation of the commit was submitted with ``durable=False``: see :meth:`Store.begin`)."""
        if self._stopping:
            raise Unavailable("messaging is shutting down")
        future: asyncio.Future[T] = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue.append((op, future, size, durable))
        self.queued_bytes += size
        self._durable_queued += durable
        if durable and self._lingering is not None:
            self._lingering.set()   # a publish does not wait out the acks' linger
        self._wake.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if not self._durable_queued and not self._stopping:
                    await self._linger()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                self.queued_bytes -= sum(item[2] for item in batch)
                self._durable_queued -= sum(1 for item in batch if item[3])
                now_ms = int(self.clock.wall() * 1000)
                try:
                    results, evicted, hooks = await loop.run_in_executor(self._thread, self._commit, batch, now_ms)
                except Exception as exc:  # the whole transaction rolled back: every caller learns it
                    self.failures += 1
                    log.error("messaging store commit failed: %s", exc)
                    error = Unavailable(f"the message store could not commit: {exc}")
                    for _, future, _, _ in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.commits += 1
                self.operations += len(batch)
                for (_, future, _, _), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                if evicted and self.on_evicted is not None:
                    self.on_evicted(evicted)
                for hook in hooks:
                    try:
                        hook()
                    except Exception:  # a bug in one hook: logged, the others still run
                        log.exception("messaging: an after-commit hook failed")
            if self._stopping and not self._queue:
                return

    async def _linger(self) -> None:
        """Wait up to ACK_LINGER for more operations; an operation that needs an fsync ends the wait."""
        event = self._lingering = asyncio.Event()
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter}, timeout=ACK_LINGER)
        finally:
            waiter.cancel()
            self._lingering = None

    def _commit(self, batch: list[tuple[Op, asyncio.Future[Any], int, bool]], now_ms: int
                ) -> tuple[list[tuple[bool, Any]], list[Evicted], list[Callable[[], None]]]:
        store = self.store
        results: list[tuple[bool, Any]] = []
        store.begin(durable=any(durable for _, _, _, durable in batch))
        try:
            for op, _, _, _ in batch:
                store.w.execute("SAVEPOINT op")
                asked = len(store.hooks)
                try:
                    results.append((True, op(store)))
                    store.w.execute("RELEASE op")
                except Exception as exc:  # one bad operation fails alone, with what it asked to run after
                    del store.hooks[asked:]
                    store.w.execute("ROLLBACK TO op")
                    store.w.execute("RELEASE op")
                    results.append((False, exc))
            evicted = store.w_enforce_retention(now_ms)
            store.commit()
        except BaseException:
            store.rollback()
            store.reload()
            raise
        hooks, store.hooks = store.hooks, []
        return results, evicted, hooks

    def tick(self) -> None:
        """Run retention (age) even when nothing is written."""
        if not self._queue and not self._stopping:
            self.submit(lambda s: None, durable=False)

    async def stop(self, timeout: float = 5.0) -> None:
        """Commit what is queued (within ``timeout``), then stop the task and close the thread."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)
