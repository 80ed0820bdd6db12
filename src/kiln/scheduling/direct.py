"""No batching: each request takes the next free instance."""

from __future__ import annotations

import asyncio
import time

from kiln.scheduling.base import Scheduler
from kiln.scheduling.work import Work


class DirectScheduler(Scheduler):
    async def start(self) -> None:
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.instances):
            self.free.put_nowait(i)

    async def submit(self, work: Work) -> None:
        enqueued = time.perf_counter_ns()
        instance = await self.free.get()
        try:
            waited = time.perf_counter_ns() - enqueued
            if self.target.batched:
                await self._execute_one(work, instance, waited)
            else:
                await self._execute_requests([work], instance, [waited])
        finally:
            self.free.put_nowait(instance)
