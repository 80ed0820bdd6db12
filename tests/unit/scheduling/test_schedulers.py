"""The dynamic batcher and the direct scheduler on real asyncio, over small in-process targets: merged batches,
per-request execution, per-request errors inside one batch, timeouts, cancellation, ordering, inlining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kiln.errors import InvalidArgumentError, UnavailableError
from kiln.scheduling import (
    Batch,
    BatcherOptions,
    DirectScheduler,
    DynamicBatcher,
    QueuePolicy,
    Reply,
    RequestQueue,
    ResponseSender,
    Scheduler,
    Work,
)
from kiln.types import InferRequest

MS = 1_000_000
Fn = Callable[[dict[str, np.ndarray], Sequence[str], int], dict[str, np.ndarray]]


class Merged:
    """A BATCHED target: y = x * 2, remembering each batch's size; ``gate`` can hold it to fill the queue."""

    batched = True
    inline_requests = False
    async_requests = False

    def __init__(self, fn: Fn | None = None) -> None:
        self.sizes: list[int] = []
        self.entered = 0  # executions started (held at the gate or not)
        self.gate = threading.Event()
        self.gate.set()
        self.fn = fn

    def execute(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
    ) -> dict[str, np.ndarray]:
        self.entered += 1
        self.gate.wait(10)
        self.sizes.append(len(feeds["x"]))
        if self.fn is not None:
            return self.fn(feeds, outputs, instance)
        if np.isnan(feeds["x"]).any():
            raise InvalidArgumentError("NaN in x")
        return {"y": feeds["x"] * 2}

    def execute_requests(self, works: list[Work], instance: int) -> None:
        raise AssertionError("a batched target is never given the requests")


class PerRequest:
    """A PER_REQUEST target: answers each request itself; a request with x < 0 gets an error of its own."""

    batched = False
    inline_requests = False
    async_requests = False

    def __init__(self) -> None:
        self.calls: list[int] = []

    def execute(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
    ) -> dict[str, np.ndarray]:
        raise AssertionError("a per-request target is never given merged tensors")

    def execute_requests(self, works: list[Work], instance: int) -> None:
        self.calls.append(len(works))
        for w in works:
            if (w.feeds["x"] < 0).any():
                w.sender.fail(InvalidArgumentError(f"request {w.request.id}: negative x"))
            else:
                w.sender.send({"y": w.feeds["x"] + 1}, final=True)


def work(value: float, rows: int = 1, cols: int = 2, *, rid: str = "", **kw: int | None) -> Work:
    request = InferRequest("m", id=rid, priority=kw.get("priority") or 0, timeout_us=kw.get("timeout_us"))
    sender = ResponseSender(asyncio.get_running_loop())
    return Work(request, {"x": np.full((rows, cols), value, np.float32)}, ["y"], rows, sender)


async def answer(scheduler: Scheduler, w: Work) -> Reply:
    await scheduler.submit(w)
    return await w.sender.result()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.001)


def batcher(target: Merged | PerRequest, opts: BatcherOptions, queue: RequestQueue | None = None,
            instances: int = 1) -> tuple[DynamicBatcher, list[Batch]]:  # fmt: skip
    executions: list[Batch] = []
    return DynamicBatcher(
        target, instances, ThreadPoolExecutor(4), executions.append, opts, queue
    ), executions


def test_concurrent_requests_are_merged_and_answered_in_their_own_rows() -> None:
    async def main() -> None:
        target = Merged()
        b, executions = batcher(target, BatcherOptions(max_batch_size=8, max_queue_delay_ns=200 * MS))
        await b.start()
        works = [work(v) for v in range(6)]
        replies = await asyncio.gather(*[answer(b, w) for w in works])
        await b.stop()
        assert [float(r.outputs["y"][0, 0]) for r in replies] == [2 * v for v in range(6)]  # type: ignore[index]
        assert target.sizes == [6] and executions[0].size == 6
        assert all(w.timing is not None and w.timing.size == 6 for w in works)

    asyncio.run(main())


def test_one_bad_request_in_a_merged_batch_fails_only_itself() -> None:
    async def main() -> None:
        target = Merged()
        b, _ = batcher(target, BatcherOptions(max_batch_size=8, max_queue_delay_ns=200 * MS))
        await b.start()
        replies = await asyncio.gather(*[answer(b, work(v)) for v in (1.0, float("nan"), 3.0)])
        await b.stop()
        assert target.sizes[0] == 3  # merged first, then each alone after the failure
        assert float(replies[0].outputs["y"][0, 0]) == 2.0  # type: ignore[index]
        assert isinstance(replies[1].error, InvalidArgumentError) and replies[1].outputs is None
        assert float(replies[2].outputs["y"][0, 0]) == 6.0  # type: ignore[index]

    asyncio.run(main())


def test_per_request_target_gets_the_whole_batch_and_answers_each() -> None:
    async def main() -> None:
        target = PerRequest()
        b, executions = batcher(target, BatcherOptions(max_batch_size=8, max_queue_delay_ns=200 * MS))
        await b.start()
        works = [work(v, rid=f"r{i}") for i, v in enumerate((1.0, -1.0, 2.0))]
        replies = await asyncio.gather(*[answer(b, w) for w in works])
        await b.stop()
        assert target.calls == [3] and executions[0].size == 3
        assert float(replies[0].outputs["y"][0, 0]) == 2.0  # type: ignore[index]
        assert isinstance(replies[1].error, InvalidArgumentError) and "r1" in str(replies[1].error)
        assert float(replies[2].outputs["y"][0, 0]) == 3.0  # type: ignore[index]

    asyncio.run(main())


def test_preferred_size_dispatches_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        target = Merged()
        opts = BatcherOptions(max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_ns=10_000 * MS)
        b, _ = batcher(target, opts)
        await b.start()
        await asyncio.wait_for(asyncio.gather(*[answer(b, work(v)) for v in range(4)]), timeout=5)
        await b.stop()
        assert target.sizes == [4]

    asyncio.run(main())


def test_incompatible_shapes_are_never_merged_and_max_is_respected() -> None:
    async def main() -> None:
        target = Merged()
        target.gate.clear()  # hold the first execution so the rest queue up
        b, _ = batcher(target, BatcherOptions(max_batch_size=4, max_queue_delay_ns=50 * MS))
        await b.start()
        first = asyncio.ensure_future(answer(b, work(0)))
        await until(lambda: target.entered == 1)  # taken by the worker, held at the gate
        rest = [asyncio.ensure_future(answer(b, work(v, rows=2, cols=c))) for v, c in
                [(1, 2), (2, 3), (3, 2), (4, 2), (5, 3)]]  # fmt: skip
        await until(lambda: len(b.queue) == 5)
        target.gate.set()
        replies = await asyncio.gather(first, *rest)
        await b.stop()
        assert max(target.sizes) <= 4
        assert sorted(target.sizes) == [1, 2, 4, 4]  # cols=2 rows: 2+2 | 2 ; cols=3 rows: 2+2
        assert [r.outputs["y"].shape for r in replies[1:]] == [(2, 2), (2, 3), (2, 2), (2, 2), (2, 3)]  # type: ignore[index]

    asyncio.run(main())


def test_queue_timeout_is_answered_with_an_error() -> None:
    async def main() -> None:
        target = Merged()
        target.gate.clear()
        queue = RequestQueue(default_policy=QueuePolicy(default_timeout_us=50_000))
        b, _ = batcher(target, BatcherOptions(max_batch_size=1), queue)
        await b.start()
        busy = asyncio.ensure_future(answer(b, work(0)))
        await until(lambda: target.entered == 1)
        with pytest.raises(UnavailableError, match="timed out"):
            await b.submit(work(1))
        target.gate.set()
        await busy
        await b.stop()

    asyncio.run(main())


def test_cancelled_request_leaves_the_queue_never_runs_and_is_signalled() -> None:
    async def main() -> None:
        target = Merged()
        target.gate.clear()
        b, _ = batcher(target, BatcherOptions(max_batch_size=1))
        await b.start()
        busy = asyncio.ensure_future(answer(b, work(0)))
        await until(lambda: target.entered == 1)
        doomed_work = work(1)
        doomed = asyncio.ensure_future(b.submit(doomed_work))
        await until(lambda: len(b.queue) == 1)
        doomed.cancel()
        await until(lambda: len(b.queue) == 0)
        assert doomed_work.is_cancelled()  # the backend-visible signal is set too
        target.gate.set()
        await busy
        await b.stop()
        assert target.sizes == [1]  # only the first request ran

    asyncio.run(main())


def test_preserve_ordering_answers_in_arrival_order() -> None:
    async def main() -> None:
        order: list[int] = []

        def slow_first(
            feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
        ) -> dict[str, np.ndarray]:
            if feeds["x"][0, 0] == 0:
                threading.Event().wait(0.2)
            return {"y": feeds["x"]}

        opts = BatcherOptions(max_batch_size=1, preserve_ordering=True)
        b = DynamicBatcher(Merged(slow_first), 2, ThreadPoolExecutor(2), lambda _: None, opts)
        await b.start()

        async def one(v: int) -> None:
            await answer(b, work(v))
            order.append(v)

        await asyncio.gather(one(0), one(1), one(2))
        await b.stop()
        assert order == [0, 1, 2]

    asyncio.run(main())


def test_instances_run_concurrently() -> None:
    """Two instances overlap in time: proved from execution timestamps, not from the total duration."""

    async def main() -> None:
        spans: list[tuple[float, float]] = []
        both_running = threading.Barrier(2, timeout=5)

        def hold(
            feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
        ) -> dict[str, np.ndarray]:
            start = time.monotonic()
            both_running.wait()  # only returns when two executions are in flight at once
            spans.append((start, time.monotonic()))
            return {"y": feeds["x"]}

        direct = DirectScheduler(Merged(hold), 2, ThreadPoolExecutor(2), lambda _: None)
        await direct.start()
        await asyncio.gather(answer(direct, work(0)), answer(direct, work(1)))
        (s1, e1), (s2, e2) = spans
        assert s1 < e2 and s2 < e1  # the two executions overlap

    asyncio.run(main())


def test_direct_scheduler_runs_one_request_per_instance() -> None:
    async def main() -> None:
        target = Merged()
        executions: list[Batch] = []
        direct = DirectScheduler(target, 2, ThreadPoolExecutor(2), executions.append)
        await direct.start()
        replies = await asyncio.gather(*[answer(direct, work(v)) for v in range(4)])
        assert target.sizes == [1, 1, 1, 1] and len(executions) == 4
        assert [float(r.outputs["y"][0, 0]) for r in replies] == [0, 2, 4, 6]  # type: ignore[index]

    asyncio.run(main())


@pytest.mark.parametrize(("threshold_ns", "inlined"), [(10_000_000, True), (0, False)])
def test_fast_models_run_inline_after_being_measured(threshold_ns: int, inlined: bool) -> None:
    async def main() -> None:
        threads: list[int] = []

        def fast(
            feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
        ) -> dict[str, np.ndarray]:
            threads.append(threading.get_ident())
            return {"y": feeds["x"]}

        direct = DirectScheduler(
            Merged(fast), 1, ThreadPoolExecutor(1), lambda _: None, inline_below_ns=threshold_ns
        )
        await direct.start()
        for v in range(12):
            await answer(direct, work(v))
        loop_thread = threading.get_ident()
        assert all(t != loop_thread for t in threads[:8])  # measured on a worker thread first
        assert all((t == loop_thread) is inlined for t in threads[8:])

    asyncio.run(main())


def test_per_request_targets_never_run_inline() -> None:
    """A per-request backend may block on other models (BLS): it must never run on the event loop."""

    async def main() -> None:
        target = PerRequest()
        direct = DirectScheduler(target, 1, ThreadPoolExecutor(1), lambda _: None, inline_below_ns=10**12)
        assert direct.inline_below_ns == 0
        await direct.start()
        for v in range(10):
            assert (await answer(direct, work(v))).error is None

    asyncio.run(main())


def test_instance_pool_serves_waiters_first_come_first_served() -> None:
    """A released instance goes to the longest waiting request, never to a newcomer (no starvation)."""
    from kiln.scheduling.direct import InstancePool

    async def main() -> None:
        pool = InstancePool(1)
        order: list[str] = []
        held = await pool.acquire()

        async def take(name: str) -> None:
            instance = await pool.acquire()
            order.append(name)
            pool.release(instance)

        waiting = asyncio.ensure_future(take("waiting"))
        await until(lambda: len(pool.waiters) == 1)
        pool.release(held)
        newcomer = asyncio.ensure_future(take("newcomer"))  # arrives before the waiter has run
        await asyncio.gather(waiting, newcomer)
        assert order == ["waiting", "newcomer"]
        held = await pool.acquire()
        cancelled = asyncio.ensure_future(pool.acquire())
        await until(lambda: len(pool.waiters) == 1)  # really waiting in line
        cancelled.cancel()  # a waiter that goes away leaves the line
        await asyncio.gather(cancelled, return_exceptions=True)
        assert not pool.waiters
        pool.release(held)
        assert list(pool.free) == [0]  # not handed to the departed waiter

    asyncio.run(main())
