"""Micro-batching: concurrent requests are gathered into one forward pass per model.

A request's texts are queued with a future. A dispatcher takes a free worker, then collects whatever
is queued (waiting at most ``max_wait_ms`` for more while the batch is below ``max_batch`` texts),
and runs it on the worker thread; results go back to each request's future. Under load, requests
pile up while a batch runs, so the next batch is larger and throughput grows with load; alone, a
request waits at most the short window.

Faults: when the model fails on a batch, the batch runs again one request at a time, so a text that
breaks the model fails only its own request. ``max_queue`` bounds the requests waiting for or in
inference: beyond it ``submit`` raises ``QueueFull`` at once (the server answers 503) instead of letting
latency grow without end. A request whose caller stops waiting (a timeout, a client gone) is dropped
from the queue; one already running finishes and its result is discarded.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..inference.engines import ModelRegistry


@dataclass
class _Item:
    model: str
    texts: list[str]
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Closed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class QueueFull(RuntimeError):
    """``max_queue`` requests are already waiting for or in inference."""


class MicroBatcher:
    def __init__(self, registry: ModelRegistry, *, max_batch: int = 32, max_wait_ms: float = 2.0,
                 workers: int = 1, threads_per_worker: int | None = None, max_queue: int | None = None,
                 on_batch: Callable[[str, int, float], None] | None = None):
        if max_batch < 1 or workers < 1 or max_wait_ms < 0 or (max_queue is not None and max_queue < 1):
            raise ValueError("max_batch, workers and max_queue must be at least 1, max_wait_ms at least 0")
        self.registry = registry
        self.max_queue = max_queue
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._carry: _Item | None = None
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._inflight = 0  # submitted requests whose future is not done yet

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        threads = self.threads_per_worker
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="emotune-infer",
                                            initializer=(lambda: torch.set_num_threads(threads)) if threads
                                            else None)
        self._task = asyncio.create_task(self._dispatch())

    async def close(self) -> None:
        """Finish everything queued or running, then stop."""
        self._closing = True
        while self._inflight or self._running:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def pending(self) -> int:
        """Requests submitted and not answered yet."""
        return self._inflight

    @property
    def closing(self) -> bool:
        """Whether ``close`` has begun (no new work is taken)."""
        return self._closing

    # ---- requests -----------------------------------------------------------------------------
    async def submit(self, model: str, texts: list[str]) -> torch.Tensor:
        """Class probabilities for ``texts`` (one row each) from the named model."""
        if self._closing or self._queue is None:
            raise Closed("the server is shutting down")
        if self.max_queue is not None and self._inflight >= self.max_queue:
            raise QueueFull(f"{self._inflight} requests are already waiting (at most {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._inflight += 1
        future.add_done_callback(self._done)
        self._queue.put_nowait(_Item(model, list(texts), future))
        return await future

    def _done(self, _future: asyncio.Future) -> None:
        self._inflight -= 1

    # ---- the dispatcher -----------------------------------------------------------------------
    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        assert self._queue is not None
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        assert first is not None
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            if item.future.done():  # the client went away
                continue
            if size + len(item.texts) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _dispatch(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        try:
            by_model: dict[str, list[_Item]] = {}
            for item in batch:
                if not item.future.done():
                    by_model.setdefault(item.model, []).append(item)
            for model, items in by_model.items():
                try:
                    await self._infer(model, items)
                    continue
                except Exception as e:  # noqa: BLE001 - handed to the waiting request(s)
                    error = e
                if len(items) == 1:
                    self._fail(items, error)
                    continue
                for it in items:  # again one request at a time, so one bad text fails only its own request
                    if it.future.done():
                        continue
                    try:
                        await self._infer(model, [it])
                    except Exception as e:  # noqa: BLE001
                        self._fail([it], e)
        finally:
            self._slots.release()

    async def _infer(self, model: str, items: list[_Item]) -> None:
        texts = [t for it in items for t in it.texts]
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        probs = await loop.run_in_executor(self._executor, self.registry[model].probabilities, texts)
        if self.on_batch:
            self.on_batch(model, len(texts), time.perf_counter() - t0)
        start = 0
        for it in items:
            if not it.future.done():
                it.future.set_result(probs[start:start + len(it.texts)])
            start += len(it.texts)

    @staticmethod
    def _fail(items: list[_Item], error: BaseException) -> None:
        for it in items:
            if not it.future.done():
                it.future.set_exception(error)
