"""What every scheduler shares: the model instances it runs work on, and one execution of a batch of requests
in either shape (merged tensors for BATCHED backends, the requests themselves for PER_REQUEST ones)."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

import numpy as np

from kiln import bridge
from kiln.scheduling.work import Batch, Work

Clock = Callable[[], int]
ExecutionHook = Callable[[Batch], None]  # called once per execution (statistics)

INLINE_BELOW_NS = 100_000  # executions faster than this run on the event loop: a thread hop costs more
# Per-request (Python) executions run on the loop below this: Python code holds the GIL, so a worker thread
# gives it no parallelism with the loop, only the hops; only its waits (sleeps, I/O, big numpy calls) gain.
INLINE_REQUESTS_BELOW_NS = 1_000_000
_MEASURED_RUNS = 8  # executions timed on worker threads before inlining is considered
_MIN_CPU_SHARE = 0.5  # a per-request execution on the loop using less of its time in CPU goes back to threads


class Target(Protocol):
    """A model's instances, as a scheduler sees them (implemented by :class:`kiln.model.Model`)."""

    @property
    def batched(self) -> bool:
        """True: merged tensor batches (``execute``); False: the requests themselves (``execute_requests``)."""
        ...

    @property
    def inline_requests(self) -> bool:
        """Whether ``execute_requests`` may run on the loop, in a :mod:`kiln.bridge` greenlet, when it is fast."""
        ...

    def execute(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
    ) -> dict[str, np.ndarray]: ...

    def execute_requests(self, works: list[Work], instance: int) -> None: ...

    @property
    def async_requests(self) -> bool:
        """Whether ``execute_requests_async`` is the call (a backend that waits for another process)."""
        ...

    async def execute_requests_async(self, works: list[Work], instance: int) -> None: ...


class Scheduler(ABC):
    def __init__(
        self,
        target: Target,
        instances: int,
        executor: Executor,
        on_execution: ExecutionHook,
        inline_below_ns: int = INLINE_BELOW_NS,
    ) -> None:
        self.target = target
        self.instances = instances
        self.executor = executor
        self.on_execution = on_execution
        # a per-request backend may block on other models: it runs on the loop only where its blocking calls
        # switch to the loop instead (a bridge greenlet)
        self.inline_below_ns = inline_below_ns if target.batched or target.inline_requests else 0
        self._runs = 0
        self._avg_ns = 0.0  # moving average of pure execution time
        self._inline_from = _MEASURED_RUNS  # executions before the loop is considered (again)
        self._loop_runs = 0  # per-request executions run on the loop (bridge) since it was last considered
        self._cpu_share = 1.0  # their moving average of CPU time / time run
        self._backoffs = 0  # times a per-request model went back to threads for waiting on the loop

    @abstractmethod
    async def submit(self, work: Work) -> None:
        """Run ``work``; returns once it has executed (its answers go to ``work.sender``). Raises KilnError
        subclasses for rejections and queue timeouts."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    async def _run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
        """Execute on a worker thread; or, for a model measured to run in microseconds, inline on the loop,
        where a thread hop would cost more than the execution itself. Returns the results and the wall time."""
        foreign = bridge.foreign_waits()
        if self._runs >= self._inline_from and self._avg_ns < self.inline_below_ns:
            if self.target.batched:
                results, ns, busy, _ = bridge.timed(fn, *args)
            else:
                results, ns, busy = await self._run_on_loop(fn, *args)
        else:
            loop = asyncio.get_running_loop()
            results, ns, busy, _ = await loop.run_in_executor(self.executor, bridge.timed, fn, *args)
        self._runs += 1
        if bridge.foreign_waits() != foreign and not self.target.batched:
            # it may wait for threads of its own that call the core: never on the loop
            self.inline_below_ns = 0
        # A moving average of the time the execution itself takes (not the models it waits for) decides: one
        # execution slowed by the machine (a GC pause, a busy core) must not send a microsecond model to the
        # thread pool, where every hop costs more than it; a really slow one (10x the threshold) leaves the loop
        # at once.
        if busy > 10 * self.inline_below_ns:
            self._avg_ns = busy
        else:
            self._avg_ns = 0.9 * self._avg_ns + 0.1 * busy
        return results, ns

    async def _run_on_loop(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, int, int]:
        """A per-request execution in a bridge greenlet. One that mostly waits (sleeps, I/O) while it holds the
        loop goes back to worker threads, where the loop runs meanwhile; it is tried on the loop again after 32
        executions, then 128, then 512 each time: a burst of load on the machine (other processes, a VM's stolen
        time) looks like waiting too, and must not keep a fast model off the loop for long."""
        # the CPU share is sampled (its clock is a system call): every execution at first, then one in 4
        sample = self._loop_runs < 2 * _MEASURED_RUNS or self._loop_runs % 4 == 0
        results, ns, busy, cpu = await bridge.run(fn, *args, cpu=sample)
        self._loop_runs += 1
        if sample:
            self._cpu_share = 0.9 * self._cpu_share + 0.1 * (cpu / busy if busy else 1.0)
        if self._loop_runs >= _MEASURED_RUNS and self._cpu_share < _MIN_CPU_SHARE:
            self._backoffs += 1
            self._inline_from = self._runs + 1 + _MEASURED_RUNS * 4 ** min(self._backoffs, 3)
            self._loop_runs, self._cpu_share = 0, 1.0
        return results, ns, busy

    async def execute(self, works: list[Work], instance: int, queue_ns: Sequence[int]) -> None:
        """Run one scheduled batch on ``instance``; every request is answered through its sender."""
        if self.target.batched:
            await self._execute_merged(works, instance, queue_ns)
        else:
            await self._execute_requests(works, instance, queue_ns)

    async def _execute_merged(self, works: list[Work], instance: int, queue_ns: Sequence[int]) -> None:
        if len(works) == 1:
            await self._execute_one(works[0], instance, queue_ns[0])
            return
        t0 = time.perf_counter_ns()
        size = sum(w.batch_size for w in works)
        try:
            feeds = merge([w.feeds for w in works])
            outputs = sorted({name for w in works for name in w.outputs})
            t1 = time.perf_counter_ns()
            results, infer_ns = await self._run(self.target.execute, feeds, outputs, instance)
            t2 = time.perf_counter_ns()
            parts = split(results, [w.batch_size for w in works])
            output_ns = time.perf_counter_ns() - t2
        except Exception as e:
            if len(works) == 1:
                works[0].sender.fail(e)
                return
            # errors are per request: run each alone, so only the request that fails is failed
            for work, waited in zip(works, queue_ns, strict=True):
                await self._execute_one(work, instance, waited)
            return
        self.on_execution(Batch(size, 0, t1 - t0, infer_ns, output_ns))
        for work, part, waited in zip(works, parts, queue_ns, strict=True):
            work.timing = Batch(size, waited, t1 - t0, infer_ns, output_ns)
            work.sender.send({name: part[name] for name in work.outputs}, final=True)

    async def _execute_one(self, work: Work, instance: int, queue_ns: int) -> None:
        """The common case of a batch of one: no merge, no split."""
        try:
            results, infer_ns = await self._run(self.target.execute, work.feeds, work.outputs, instance)
        except Exception as e:
            work.sender.fail(e)
            return
        timing = Batch(work.batch_size, queue_ns, 0, infer_ns, 0)
        self.on_execution(timing)
        work.timing = timing
        work.sender.send(results, final=True)

    async def _execute_requests(self, works: list[Work], instance: int, queue_ns: Sequence[int]) -> None:
        size = sum(w.batch_size for w in works)
        infer_ns = 0
        t0 = time.perf_counter_ns()
        try:
            if self.target.async_requests:
                await self.target.execute_requests_async(works, instance)
                infer_ns = time.perf_counter_ns() - t0
            else:
                _, infer_ns = await self._run(self.target.execute_requests, works, instance)
        except Exception as e:
            infer_ns = time.perf_counter_ns() - t0
            # a KilnError is the backend's message for the client; anything else is a bug, which the transport
            # logs and answers as INTERNAL without leaking its text
            for work in works:
                work.sender.fail_if_open(e)
        self.on_execution(Batch(size, 0, 0, infer_ns, 0))
        for work, waited in zip(works, queue_ns, strict=True):
            work.timing = Batch(size, waited, 0, infer_ns, 0)


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
