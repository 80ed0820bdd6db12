"""Triton's dynamic batcher. Requests wait in a :class:`RequestQueue`; one worker per instance forms a batch of
compatible requests (same inputs, dtypes and non-batch shapes, never above ``max_batch_size``) and runs it in
the backend's shape (merged tensors, or the requests themselves).

It wraps a model's instances through the :class:`~kiln.scheduling.base.Target` protocol; it knows nothing about
transports or runtimes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from kiln.config import int_parameter
from kiln.config.schema import model_config_pb2
from kiln.errors import UnavailableError
from kiln.scheduling.base import (
    INLINE_BELOW_NS,
    INLINE_REQUESTS_BELOW_NS,
    Clock,
    ExecutionHook,
    Scheduler,
    Target,
)
from kiln.scheduling.direct import DirectScheduler
from kiln.scheduling.queue import Pending, RequestQueue
from kiln.scheduling.work import Work

log = logging.getLogger(__name__)

_DONE = object()  # an executed request's outcome (its answers went to its sender)


@dataclass(eq=False)
class _Item:
    work: Work
    future: asyncio.Future[None]
    pending: Pending | None = None
    queue_ns: int = 0
    outcome: object = None  # _DONE or the exception that ended it before execution


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
        target: Target,
        instances: int,
        executor: Executor,
        on_execution: ExecutionHook,
        options: BatcherOptions,
        queue: RequestQueue | None = None,
        clock: Clock = time.perf_counter_ns,
        inline_below_ns: int = INLINE_BELOW_NS,
    ) -> None:
        super().__init__(target, instances, executor, on_execution, inline_below_ns)
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

    async def submit(self, work: Work) -> None:
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
            work.request.cancellation.cancel()
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
                pending.payload,
                UnavailableError("Request timeout expired: the request timed out in the queue"),
            )
        self._arm_timer()
        self.changed.set()

    def _finish(self, item: _Item, outcome: object) -> None:
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
            works = [it.work for it in items if not it.work.is_cancelled()]
            if works:
                await self.execute(
                    works, instance, [it.queue_ns for it in items if not it.work.is_cancelled()]
                )
            for it in items:
                self._finish(it, _DONE)


def _resolve(item: _Item) -> None:
    if item.future.done():
        return
    if isinstance(item.outcome, BaseException):
        if isinstance(item.outcome, asyncio.CancelledError):
            item.future.cancel()
        else:
            item.future.set_exception(item.outcome)
    else:
        item.future.set_result(None)


def make_scheduler(
    config: model_config_pb2.ModelConfig,
    target: Target,
    instances: int,
    executor: Executor,
    on_execution: ExecutionHook,
) -> Scheduler:
    """Dynamic batching when the config asks for it and the model batches; else one request per execution."""
    inline_below_ns = _inline_threshold_ns(config, target.batched)
    if config.HasField("dynamic_batching"):
        if config.max_batch_size > 0:
            options = BatcherOptions.from_config(config)
            queue = RequestQueue.from_config(config.dynamic_batching)
            return DynamicBatcher(
                target, instances, executor, on_execution, options, queue, inline_below_ns=inline_below_ns
            )
        log.warning(
            "model '%s': dynamic_batching needs max_batch_size > 0; requests run one by one", config.name
        )
    return DirectScheduler(target, instances, executor, on_execution, inline_below_ns)


def _inline_threshold_ns(config: model_config_pb2.ModelConfig, batched: bool) -> int:
    """``parameters { key: "inline_execution_threshold_us" ... }``: 0 turns inline execution off."""
    default = INLINE_BELOW_NS if batched else INLINE_REQUESTS_BELOW_NS
    return int_parameter(config, "inline_execution_threshold_us", default // 1000) * 1000
