"""The request queue (deterministic, explicit clock) and the dynamic batcher (real asyncio, a pure execute)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kiln.errors import InvalidArgumentError, UnavailableError
from kiln.scheduling import Batch, DirectScheduler, DynamicBatcher, Pending, QueuePolicy, RequestQueue, Work
from kiln.scheduling.batcher import BatcherOptions, merge, split
from kiln.scheduling.queue import TimeoutAction

MS = 1_000_000


def pending(key: str = "a", size: int = 1, t: int = 0, level: int = 0) -> Pending:
    return Pending(key, size, t, level=level)


# -- queue ------------------------------------------------------------------------------------------------
def test_batches_take_only_compatible_requests_and_never_exceed_max() -> None:
    q = RequestQueue()
    for item in [pending("a", 3), pending("b", 1), pending("a", 4), pending("a", 2), pending("a", 1)]:
        q.put(item, 0)
    batch = q.form_batch(max_batch_size=8)
    assert [(p.key, p.batch_size) for p in batch] == [("a", 3), ("a", 4), ("a", 1)]
    q.remove(batch)
    assert [(p.key, p.batch_size) for p in q.form_batch(8)] == [("b", 1)]


def test_priority_levels_are_served_first_and_default_level_applies() -> None:
    q = RequestQueue(priority_levels=3, default_priority_level=2)
    assert q.level_for(0) == 1 and q.level_for(1) == 0 and q.level_for(3) == 2
    with pytest.raises(InvalidArgumentError, match="out of range"):
        q.level_for(4)
    low, mid, high = pending("a", level=2), pending("a", level=1), pending("a", level=0)
    for item in (low, mid, high):
        q.put(item, 0)
    assert q.ordered() == [high, mid, low]


def test_full_level_rejects_at_once() -> None:
    q = RequestQueue(default_policy=QueuePolicy(max_queue_size=2))
    q.put(pending(), 0)
    q.put(pending(), 0)
    with pytest.raises(UnavailableError, match="full"):
        q.put(pending(), 0)


def test_timeouts_reject_or_delay() -> None:
    reject = QueuePolicy(TimeoutAction.REJECT, default_timeout_us=100)
    delay = QueuePolicy(TimeoutAction.DELAY, default_timeout_us=100)
    q = RequestQueue(priority_levels=2, default_priority_level=1, level_policies={1: reject, 2: delay})
    r, d, fresh = pending(level=0), pending(level=1), pending(level=1)
    q.put(r, 0)
    q.put(d, 0)
    q.put(fresh, 50_000)
    assert q.next_deadline() == 100_000
    assert q.expire(120_000) == [r]  # REJECT: removed and returned
    assert d.delayed and not fresh.delayed
    assert q.ordered() == [fresh, d]  # DELAY: served after requests that have not timed out


def test_timeout_override_only_when_allowed() -> None:
    strict = RequestQueue(default_policy=QueuePolicy(default_timeout_us=100))
    loose = RequestQueue(default_policy=QueuePolicy(default_timeout_us=100, allow_timeout_override=True))
    assert strict.timeout_ns(0, 5) == 100_000
    assert loose.timeout_ns(0, 5) == 5_000
    assert RequestQueue().timeout_ns(0, None) is None


def test_merge_and_split() -> None:
    a = {"x": np.zeros((1, 2)), "y": np.ones((1, 3))}
    b = {"x": np.ones((2, 2)), "y": np.zeros((2, 3))}
    merged = merge([a, b])
    assert merged["x"].shape == (3, 2)
    parts = split(merged, [1, 2])
    np.testing.assert_array_equal(parts[1]["x"], b["x"])
    np.testing.assert_array_equal(parts[0]["y"], a["y"])


# -- batcher ----------------------------------------------------------------------------------------------
class Recorder:
    """A pure execute function: y = x * 2, remembering each batch's size; can be held to fill the queue."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int
    ) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.sizes.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}


def work(value: float, rows: int = 1, cols: int = 2, **kw: int | None) -> Work:
    return Work({"x": np.full((rows, cols), value, np.float32)}, ["y"], rows, **kw)  # type: ignore[arg-type]


def run(coro_fn, *args):  # type: ignore[no-untyped-def]
    return asyncio.run(coro_fn(*args))


def make(
    execute: Recorder, opts: BatcherOptions, queue: RequestQueue | None = None, instances: int = 1
) -> tuple:
    executions: list[Batch] = []
    pool = ThreadPoolExecutor(4)
    return DynamicBatcher(execute, instances, pool, executions.append, opts, queue), executions


def test_concurrent_requests_are_merged_and_answered_in_their_own_rows() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher, executions = make(rec, BatcherOptions(max_batch_size=8, max_queue_delay_ns=200 * MS))
        await batcher.start()
        results = await asyncio.gather(*[batcher.submit(work(v)) for v in range(6)])
        await batcher.stop()
        assert [float(r.outputs["y"][0, 0]) for r in results] == [2 * v for v in range(6)]
        assert rec.sizes == [6] and executions[0].size == 6

    asyncio.run(main())


def test_preferred_size_dispatches_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        rec = Recorder()
        opts = BatcherOptions(max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_ns=10_000 * MS)
        batcher, _ = make(rec, opts)
        await batcher.start()
        await asyncio.wait_for(asyncio.gather(*[batcher.submit(work(v)) for v in range(4)]), timeout=5)
        await batcher.stop()
        assert rec.sizes == [4]

    asyncio.run(main())


def test_incompatible_shapes_are_never_merged_and_max_is_respected() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()  # hold the first execution so the rest queue up
        batcher, _ = make(rec, BatcherOptions(max_batch_size=4, max_queue_delay_ns=50 * MS))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(work(0)))
        await asyncio.sleep(0.1)
        rest = [asyncio.ensure_future(batcher.submit(work(v, rows=2, cols=c))) for v, c in
                [(1, 2), (2, 3), (3, 2), (4, 2), (5, 3)]]  # fmt: skip
        await asyncio.sleep(0)
        rec.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        assert max(rec.sizes) <= 4
        assert sorted(rec.sizes) == [1, 2, 4, 4]  # cols=2 rows: 2+2 | 2 ; cols=3 rows: 2+2
        assert [r.outputs["y"].shape for r in results[1:]] == [(2, 2), (2, 3), (2, 2), (2, 2), (2, 3)]

    asyncio.run(main())


def test_queue_timeout_is_answered_with_an_error() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        queue = RequestQueue(default_policy=QueuePolicy(default_timeout_us=50_000))
        batcher, _ = make(rec, BatcherOptions(max_batch_size=1), queue)
        await batcher.start()
        busy = asyncio.ensure_future(batcher.submit(work(0)))
        await asyncio.sleep(0.05)
        with pytest.raises(UnavailableError, match="timed out"):
            await batcher.submit(work(1))
        rec.gate.set()
        await busy
        await batcher.stop()

    asyncio.run(main())


def test_cancelled_request_leaves_the_queue_and_never_runs() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher, _ = make(rec, BatcherOptions(max_batch_size=1))
        await batcher.start()
        busy = asyncio.ensure_future(batcher.submit(work(0)))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(batcher.submit(work(1)))
        await asyncio.sleep(0.01)
        assert len(batcher.queue) == 1
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert len(batcher.queue) == 0
        rec.gate.set()
        await busy
        await batcher.stop()
        assert rec.sizes == [1]  # only the first request ran

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
        batcher = DynamicBatcher(slow_first, 2, ThreadPoolExecutor(2), lambda b: None, opts)
        await batcher.start()

        async def one(v: int) -> None:
            await batcher.submit(work(v))
            order.append(v)

        await asyncio.gather(one(0), one(1), one(2))
        await batcher.stop()
        assert order == [0, 1, 2]

    asyncio.run(main())


def test_direct_scheduler_runs_one_request_per_instance() -> None:
    async def main() -> None:
        rec = Recorder()
        executions: list[Batch] = []
        direct = DirectScheduler(rec, 2, ThreadPoolExecutor(2), executions.append)
        await direct.start()
        results = await asyncio.gather(*[direct.submit(work(v)) for v in range(4)])
        assert rec.sizes == [1, 1, 1, 1] and len(executions) == 4
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0, 2, 4, 6]

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

        direct = DirectScheduler(fast, 1, ThreadPoolExecutor(1), lambda b: None, inline_below_ns=threshold_ns)
        await direct.start()
        for v in range(12):
            await direct.submit(work(v))
        loop_thread = threading.get_ident()
        assert all(t != loop_thread for t in threads[:8])  # measured on a worker thread first
        assert all((t == loop_thread) is inlined for t in threads[8:])

    asyncio.run(main())
