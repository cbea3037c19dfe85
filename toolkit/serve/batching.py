"""Dynamic batching: one asyncio queue per served engine, merged batches run on worker threads.

A `DynamicBatcher` owns a bounded queue. Its collector waits for a free worker slot, then for the first
request, then for more until the batch holds ``max_batch`` rows or ``max_delay_ms`` has passed since the
oldest request arrived; the batch goes to a worker thread, where the engine merges, runs and splits it
(`Engine.run_many`). While a batch runs the queue keeps filling, so under load the next batch is full
at once and the delay is never paid. ``max_batch=1`` turns batching off without changing anything else.

Schedulers are the seam a host plugs into: `BatchingScheduler` (the default: a batcher per engine) or
`DirectScheduler` (every request runs on its own, for hosts that batch upstream, e.g. Ray Serve's
``@serve.batch`` calling `Engine.run_many` itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from toolkit.serve.errors import InferenceTimeoutError, QueueFullError, ServerClosingError
from toolkit.serve.options import BatchOptions

__all__ = [
    "BatchObserver",
    "BatchingScheduler",
    "DirectScheduler",
    "DynamicBatcher",
    "RunMany",
    "Scheduler",
]

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
RunMany = Callable[[Sequence[Feeds]], list["Outputs | BaseException"]]


class BatchObserver(Protocol):
    """Receives batch sizes and queue depths (the server's metrics implement it)."""

    def on_batch(self, label: tuple[str, str], rows: int, requests: int, seconds: float) -> None:
        """A batch of `requests` requests (`rows` rows) ran in `seconds`."""

    def on_depth(self, label: tuple[str, str], depth: int) -> None:
        """`depth` requests now wait in the queue."""


class _Engine(Protocol):
    """What a scheduler needs of an engine (`toolkit.serve.engine.Engine`, `toolkit.serve.decoding.DecodeEngine`)."""

    @property
    def label(self) -> tuple[str, str]: ...

    @property
    def requests_per_run(self) -> int | None:
        """1: each request runs alone (a decoder: seconds per request); None: requests batch freely."""
        ...

    def run_many(self, jobs: Sequence[Feeds]) -> list[Outputs | BaseException]: ...


@dataclass(eq=False)
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Outputs]
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """A bounded queue in front of `run_many`, merging requests into batches (see the module docstring)."""

    def __init__(
        self,
        run_many: RunMany,
        options: BatchOptions,
        *,
        label: tuple[str, str] = ("model", ""),
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_many = run_many
        self.options = options
        self.label = label
        self._observer = observer
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(options.workers)
        self._executor = ThreadPoolExecutor(
            max_workers=options.workers, thread_name_prefix=f"edge-{label[0]}"
        )
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight: set[_Item] = set()
        self._closing = False

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not yet running)."""
        return len(self._pending)

    def _depth_changed(self) -> None:
        if self._observer is not None:
            self._observer.on_depth(self.label, len(self._pending))

    async def submit(self, feeds: Feeds, rows: int, timeout_s: float | None = None) -> Outputs:
        """Queue one request of `rows` rows; its outputs once its batch ran. QueueFullError when full."""
        (outputs,) = await self.submit_pieces([(feeds, rows)], timeout_s)
        return outputs

    async def submit_pieces(
        self, pieces: Sequence[tuple[Feeds, int]], timeout_s: float | None = None
    ) -> list[Outputs]:
        """Queue the pieces of one request (each a feeds and its rows) under one deadline; their outputs in order.

        On timeout (or when the client goes away) every piece not yet run is dropped from the queue, so an
        abandoned request costs at most the batch already running.
        """
        if self._closing:
            raise ServerClosingError("the server is shutting down; send the request to another replica")
        if len(self._pending) + len(pieces) > self.options.max_queue:
            raise QueueFullError(
                f"has {len(self._pending)} requests waiting (the limit is {self.options.max_queue}, --max-queue); "
                "retry shortly or raise --max-queue"
            )
        if self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect_forever())
        loop = asyncio.get_running_loop()
        items = [_Item(feeds, rows, loop.create_future()) for feeds, rows in pieces]
        self._pending.extend(items)
        self._depth_changed()
        self._wake.set()
        try:
            # wait_for cancels the gather, and with it every piece's future, on timeout (or when the client
            # goes away): the collector skips cancelled items and a running batch's result for one is dropped.
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)), timeout_s))
        except TimeoutError:
            raise InferenceTimeoutError(
                f"did not answer within {timeout_s:.3g} s; retry, send fewer rows, or raise --timeout-ms"
            ) from None
        finally:
            dropped = False
            for item in items:
                if not item.future.done():
                    item.future.cancel()
                if item.future.cancelled():
                    with contextlib.suppress(ValueError):
                        self._pending.remove(item)
                        dropped = True
            if dropped:
                self._depth_changed()

    def abort(self, error: BaseException) -> None:
        """Answer every queued and running request with `error` now (a forced shutdown); take no more."""
        self._closing = True
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(error)
        self._pending.clear()
        for item in self._in_flight:
            if not item.future.done():
                item.future.set_exception(error)
        self._wake.set()

    def _live_rows(self) -> int:
        return sum(item.rows for item in self._pending if not item.future.done())

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for a new request (or closing); False when `timeout` passed first."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _next_batch(self) -> list[_Item] | None:
        while True:
            while self._pending and self._pending[0].future.done():
                self._pending.popleft()
            if self._pending:
                break
            if self._closing:
                return None
            await self._wait(None)
        deadline = self._pending[0].arrived + self.options.max_delay_ms / 1000
        while not self._closing and self._live_rows() < self.options.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._wait(remaining):
                break
        batch: list[_Item] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():
                self._pending.popleft()
                continue
            if batch and rows + item.rows > self.options.max_batch:
                break
            batch.append(self._pending.popleft())
            rows += item.rows
        self._depth_changed()
        return batch

    async def _collect_forever(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if batch is None:
                self._slots.release()
                return
            if not batch:  # every waiting request timed out meanwhile
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        self._in_flight.update(batch)
        try:
            results: Sequence[Outputs | BaseException] = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_many, [item.feeds for item in batch]
            )
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the collector
            results = [exc] * len(batch)
        finally:
            self._slots.release()
            self._in_flight.difference_update(batch)
        seconds = time.perf_counter() - started
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self._observer is not None:
            self._observer.on_batch(self.label, sum(i.rows for i in batch), len(batch), seconds)

    async def aclose(self) -> None:
        """Stop taking requests, run what is queued without waiting for the delay, and wait for it."""
        self._closing = True
        self._wake.set()
        if self._collector is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)


class Scheduler(Protocol):
    """How the app gets an engine to run one request's feeds (batched or not)."""

    async def submit(self, engine: Any, feeds: Feeds, rows: int, timeout_s: float | None) -> Outputs:
        """The request's outputs, or the error its run raised."""

    async def aclose(self) -> None:
        """Finish queued and running work, then release threads."""

    def abort(self, error: BaseException) -> None:
        """Answer every waiting request with `error` at once (a forced shutdown)."""


class BatchingScheduler:
    """A `DynamicBatcher` per engine, created on first use (so it binds to the serving event loop)."""

    def __init__(self, options: BatchOptions, observer: BatchObserver | None = None) -> None:
        self.options = options
        self._observer = observer
        self._batchers: dict[int, DynamicBatcher] = {}

    def batcher(self, engine: _Engine) -> DynamicBatcher:
        """The engine's batcher; an engine whose ``requests_per_run`` is 1 (a decoder: seconds per request)
        gets one request per run, sent at once, so no request waits for a batch-mate's work."""
        key = id(engine)
        if key not in self._batchers:
            options = self.options
            if engine.requests_per_run == 1:
                options = replace(options, max_batch=1, max_delay_ms=0.0)
            self._batchers[key] = DynamicBatcher(
                engine.run_many, options, label=engine.label, observer=self._observer
            )
        return self._batchers[key]

    async def submit(self, engine: Any, feeds: Feeds, rows: int, timeout_s: float | None) -> Outputs:
        """Queue the request on the engine's batcher, split into pieces of at most ``max_batch`` rows when the
        engine merges requests (so a timed-out request's unrun pieces are dropped, and no run exceeds the batch)."""
        step = self.options.max_batch
        batcher = self.batcher(engine)
        if rows <= step or not getattr(engine, "merge", False):
            return await batcher.submit(feeds, rows, timeout_s)
        pieces = [
            ({name: array[start : start + step] for name, array in feeds.items()}, min(step, rows - start))
            for start in range(0, rows, step)
        ]
        outputs = await batcher.submit_pieces(pieces, timeout_s)
        return {name: np.concatenate([piece[name] for piece in outputs]) for name in outputs[0]}

    async def aclose(self) -> None:
        """Close every batcher (queued requests still run)."""
        await asyncio.gather(*(b.aclose() for b in self._batchers.values()))

    def abort(self, error: BaseException) -> None:
        """Answer every queued and running request of every batcher with `error`."""
        for batcher in self._batchers.values():
            batcher.abort(error)


class DirectScheduler:
    """No batching and no queue: each request runs alone on a thread (for hosts that batch upstream)."""

    def __init__(self, threads: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edge-direct")

    async def submit(self, engine: Any, feeds: Feeds, rows: int, timeout_s: float | None) -> Outputs:
        """Run the request on its own."""
        call = asyncio.get_running_loop().run_in_executor(self._executor, engine.run_many, [feeds])
        try:
            (result,) = await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            raise InferenceTimeoutError(
                f"did not answer within {timeout_s:.3g} s; retry or raise the timeout"
            ) from None
        if isinstance(result, BaseException):
            raise result
        outputs: Outputs = result
        return outputs

    async def aclose(self) -> None:
        """Wait for running requests and release the threads."""
        self._executor.shutdown(wait=True)

    def abort(self, error: BaseException) -> None:
        """Drop requests not started yet (those running finish; their callers were answered by the host)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
