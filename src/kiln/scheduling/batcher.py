"""Schedulers: how requests reach a model's instances.

- :class:`DirectScheduler`: each request runs alone on the next free instance.
- :class:`DynamicBatcher`: Triton's dynamic batcher. Requests wait in a :class:`RequestQueue`; one worker per
  instance forms a batch of compatible requests (same inputs, dtypes and non-batch shapes, never above
  ``max_batch_size``), merges their inputs along the batch dimension, runs it, and splits the outputs.

Both wrap an ``execute(feeds, outputs, instance)`` callable; neither knows about transports or backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2

from kiln.config import int_parameter
from kiln.errors import UnavailableError
from kiln.scheduling.queue import Pending, RequestQueue

log = logging.getLogger(__name__)

Execute = Callable[[dict[str, np.ndarray], Sequence[str], int], dict[str, np.ndarray]]
Clock = Callable[[], int]


@dataclass
class Work:
    """One request as a scheduler sees it."""

    feeds: dict[str, np.ndarray]
    outputs: list[str]
    batch_size: int
    priority: int = 0
    timeout_us: int | None = None


@dataclass
class Batch:
    """What one execution did, for statistics: attributed to every request in it."""

    size: int
    queue_ns: int = 0  # this request's wait before its batch started
    input_ns: int = 0  # merging inputs
    infer_ns: int = 0
    output_ns: int = 0  # splitting outputs


@dataclass
class Result:
    outputs: dict[str, np.ndarray]
    batch: Batch


ExecutionHook = Callable[[Batch], None]  # called once per execution (statistics)


INLINE_BELOW_NS = 100_000  # executions faster than this run on the event loop: a thread hop costs more
_MEASURED_RUNS = 8  # executions timed on worker threads before inlining is considered


class Scheduler(ABC):
    def __init__(
        self,
        execute: Execute,
        instances: int,
        executor: Executor,
        on_execution: ExecutionHook,
        inline_below_ns: int = INLINE_BELOW_NS,
    ) -> None:
        self.execute = execute
        self.instances = instances
        self.executor = executor
        self.on_execution = on_execution
        self.inline_below_ns = inline_below_ns
        self._runs = 0
        self._avg_ns = 0.0  # moving average of pure execution time

    @abstractmethod
    async def submit(self, work: Work) -> Result:
        """Run ``work``; raises KilnError subclasses for rejections and timeouts."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def _timed(self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int) -> tuple[dict, int]:
        start = time.perf_counter_ns()
        results = self.execute(feeds, outputs, instance)
        return results, time.perf_counter_ns() - start

    async def _run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
    ) -> tuple[dict, int]:
        """Execute on a worker thread; or, for a model measured to run in microseconds, inline on the loop,
        where a thread hop would cost more than the execution itself."""
        if self._runs >= _MEASURED_RUNS and self._avg_ns < self.inline_below_ns:
            results, ns = self._timed(feeds, outputs, instance)
        else:
            loop = asyncio.get_running_loop()
            results, ns = await loop.run_in_executor(self.executor, self._timed, feeds, outputs, instance)
        self._runs += 1
        # a slow execution raises the average at once, so a model that slows down leaves the loop immediately
        self._avg_ns = ns if ns > self._avg_ns else 0.9 * self._avg_ns + 0.1 * ns
        return results, ns


class DirectScheduler(Scheduler):
    """No batching: each request takes the next free instance."""

    async def start(self) -> None:
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.instances):
            self.free.put_nowait(i)

    async def submit(self, work: Work) -> Result:
        enqueued = time.perf_counter_ns()
        instance = await self.free.get()
        try:
            queue_ns = time.perf_counter_ns() - enqueued
            results, infer_ns = await self._run(work.feeds, work.outputs, instance)
        finally:
            self.free.put_nowait(instance)
        batch = Batch(work.batch_size, queue_ns, 0, infer_ns, 0)
        self.on_execution(batch)
        return Result(results, batch)


@dataclass(eq=False)
class _Item:
    work: Work
    future: asyncio.Future[Result]
    pending: Pending | None = None
    queue_ns: int = 0
    outcome: Result | BaseException | None = None


def batch_key(feeds: dict[str, np.ndarray]) -> Hashable:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


@dataclass
class BatcherOptions:
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ns: int = 0
    preserve_ordering: bool = False

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> BatcherOptions:
        db = config.dynamic_batching
        return cls(
            config.max_batch_size,
            tuple(sorted(p for p in db.preferred_batch_size if 0 < p <= config.max_batch_size)),
            db.max_queue_delay_microseconds * 1000,
            db.preserve_ordering,
        )


class DynamicBatcher(Scheduler):
    def __init__(
        self,
        execute: Execute,
        instances: int,
        executor: Executor,
        on_execution: ExecutionHook,
        options: BatcherOptions,
        queue: RequestQueue | None = None,
        clock: Clock = time.perf_counter_ns,
        inline_below_ns: int = INLINE_BELOW_NS,
    ) -> None:
        super().__init__(execute, instances, executor, on_execution, inline_below_ns)
        self.options = options
        self.queue = queue if queue is not None else RequestQueue()
        self.clock = clock
        self.changed = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self._released = 0  # preserve_ordering: next sequence number to answer
        self._finished: dict[int, _Item] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self.workers = [
            asyncio.create_task(self._worker(i), name=f"batcher-{i}") for i in range(self.instances)
        ]

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for pending in self.queue.ordered():
            self._finish(pending.payload, UnavailableError("the model is being unloaded"))
        self.queue.remove(self.queue.ordered())

    async def submit(self, work: Work) -> Result:
        loop = asyncio.get_running_loop()
        item = _Item(work, loop.create_future())
        level = self.queue.level_for(work.priority)
        now = self.clock()
        pending = Pending(batch_key(work.feeds), work.batch_size, now, item, level)
        self.queue.put(pending, now, work.timeout_us)  # raises at once when the level is full
        item.pending = pending
        if pending.deadline_ns is not None:
            self._arm_timer()
        self.changed.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The client went away: a request still queued leaves the queue and never runs.
            if item.pending is not None and not item.future.done():
                self.queue.remove([item.pending])
                self._finish(item, asyncio.CancelledError())
            raise

    def _arm_timer(self) -> None:
        """One timer for the queue's earliest deadline; re-armed after every expiry."""
        deadline = self.queue.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            delay = max(0.0, (deadline - self.clock()) / 1e9) + 1e-4
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        for pending in self.queue.expire(self.clock()):
            self._finish(
                pending.payload, UnavailableError("request timed out in the queue (timeout expired)")
            )
        self._arm_timer()
        self.changed.set()

    def _finish(self, item: _Item, outcome: Result | BaseException) -> None:
        if item.outcome is not None:
            return  # already answered (e.g. cancelled while its batch was running)
        item.outcome = outcome
        if not self.options.preserve_ordering or item.pending is None:
            _resolve(item)
            return
        self._finished[item.pending.seq] = item
        while self._released in self._finished:
            _resolve(self._finished.pop(self._released))
            self._released += 1

    def _ready_to_run(self, batch: list[Pending], now: int) -> bool:
        total = sum(p.batch_size for p in batch)
        opts = self.options
        if total >= opts.max_batch_size or opts.max_queue_delay_ns == 0:
            return True
        if opts.preferred_batch_sizes and total >= opts.preferred_batch_sizes[-1]:
            return True
        if (
            opts.preferred_batch_sizes
            and total in opts.preferred_batch_sizes
            and len(batch) == len(self.queue)
        ):
            return True  # a preferred size and nothing else queued that could join
        return now - min(p.enqueued_ns for p in batch) >= opts.max_queue_delay_ns

    async def _worker(self, instance: int) -> None:
        while True:
            batch = self.queue.form_batch(self.options.max_batch_size)
            if not batch:
                self.changed.clear()
                await self.changed.wait()
                continue
            now = self.clock()
            if not self._ready_to_run(batch, now):
                oldest = min(p.enqueued_ns for p in batch)
                wait_ns = oldest + self.options.max_queue_delay_ns - now
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=max(wait_ns, 0) / 1e9)
                except TimeoutError:
                    pass
                continue
            self.queue.remove(batch)
            items = [p.payload for p in batch]
            for it in items:
                it.queue_ns = now - it.pending.enqueued_ns
            self.changed.set()  # let another idle worker look at what is left
            await self._execute(items, instance)

    async def _execute(self, items: list[_Item], instance: int) -> None:
        t0 = time.perf_counter_ns()
        size = sum(it.work.batch_size for it in items)
        try:
            feeds = merge([it.work.feeds for it in items])
            outputs = sorted({name for it in items for name in it.work.outputs})
            t1 = time.perf_counter_ns()
            results, infer_ns = await self._run(feeds, outputs, instance)
            t2 = time.perf_counter_ns()
            parts = split(results, [it.work.batch_size for it in items])
            output_ns = time.perf_counter_ns() - t2
        except Exception as e:
            for it in items:
                self._finish(it, e)
            return
        stats = Batch(size, 0, t1 - t0, infer_ns, output_ns)
        self.on_execution(stats)
        for it, part in zip(items, parts, strict=True):
            mine = {name: part[name] for name in it.work.outputs}
            self._finish(it, Result(mine, Batch(size, it.queue_ns, stats.input_ns, infer_ns, output_ns)))


def _resolve(item: _Item) -> None:
    if item.future.done():
        return
    if isinstance(item.outcome, BaseException):
        if isinstance(item.outcome, asyncio.CancelledError):
            item.future.cancel()
        else:
            item.future.set_exception(item.outcome)
    elif item.outcome is not None:
        item.future.set_result(item.outcome)


def merge(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def split(results: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    if len(sizes) == 1:
        return [results]
    bounds = np.cumsum([0, *sizes])
    return [
        {name: arr[bounds[i] : bounds[i + 1]] for name, arr in results.items()} for i in range(len(sizes))
    ]


def make_scheduler(
    config: model_config_pb2.ModelConfig,
    execute: Execute,
    instances: int,
    executor: Executor,
    on_execution: ExecutionHook,
) -> Scheduler:
    """Dynamic batching when the config asks for it and the model batches; else one request per execution."""
    inline_below_ns = _inline_threshold_ns(config)
    if config.HasField("dynamic_batching"):
        if config.max_batch_size > 0:
            options = BatcherOptions.from_config(config)
            queue = RequestQueue.from_config(config.dynamic_batching)
            return DynamicBatcher(
                execute, instances, executor, on_execution, options, queue, inline_below_ns=inline_below_ns
            )
        log.warning(
            "model '%s': dynamic_batching needs max_batch_size > 0; requests run one by one", config.name
        )
    return DirectScheduler(execute, instances, executor, on_execution, inline_below_ns)


def _inline_threshold_ns(config: model_config_pb2.ModelConfig) -> int:
    """``parameters { key: "inline_execution_threshold_us" ... }``: 0 turns inline execution off."""
    return int_parameter(config, "inline_execution_threshold_us", INLINE_BELOW_NS // 1000) * 1000
