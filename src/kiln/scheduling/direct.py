"""No batching: each request takes the next free instance."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from kiln.scheduling.base import Scheduler
from kiln.scheduling.work import Work


class InstancePool:
    """Free instances handed out strictly first come, first served: a released instance goes straight to the
    longest waiting request (``asyncio.Queue`` would let a newcomer take it first and starve the waiters)."""

    def __init__(self, count: int) -> None:
        self.free = deque(range(count))
        self.waiters: deque[asyncio.Future[int]] = deque()

    async def acquire(self) -> int:
        if self.free and not self.waiters:
            return self.free.popleft()
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed over just as the request went away: pass it on
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def release(self, instance: int) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        self.free.append(instance)


class DirectScheduler(Scheduler):
    async def start(self) -> None:
        self.pool = InstancePool(self.instances)

    async def submit(self, work: Work) -> None:
        enqueued = time.perf_counter_ns()
        instance = await self.pool.acquire()
        try:
            await self.execute([work], instance, [time.perf_counter_ns() - enqueued])
        finally:
            self.pool.release(instance)
