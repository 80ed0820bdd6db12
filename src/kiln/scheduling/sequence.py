"""Triton's sequence batcher: requests that belong together (one correlation id, START ... END) reach the model
in order, with the control tensors Kiln fills in (START, END, READY, CORRID) and the implicit state it keeps
between a sequence's requests.

Two strategies, as in Triton:

- **direct**: each sequence holds one batch slot of one instance (``max(1, max_batch_size)`` slots per
  instance) from START to END; an instance's batch takes the next request of each of its slots, up to the
  highest slot with one, empty slots below it filled with a request marked not READY. Sequences beyond the
  slots wait in a backlog for a free slot. ``minimum_slot_utilization`` and ``max_queue_delay_microseconds``
  hold a batch back until enough slots have a request or the oldest has waited long enough.
- **oldest**: dynamic batching across sequences (``max_candidate_sequences``, ``preferred_batch_size``,
  ``max_queue_delay_microseconds``, ``preserve_ordering``); a sequence has one request in flight at a time, so a
  batch never holds two of one sequence.

A sequence idle for ``max_sequence_idle_microseconds`` (default 1 s) is released with its state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from kiln.config.sequence import CORRID, END, READY, START, SequenceOptions
from kiln.errors import InvalidArgumentError, UnavailableError
from kiln.scheduling.base import ExecutionHook, Scheduler, Target
from kiln.scheduling.direct import DirectScheduler
from kiln.scheduling.dynamic import BatcherOptions, DynamicBatcher
from kiln.scheduling.work import Reply, ResponseSender, Work
from kiln.types.protocol import CorrelationId

log = logging.getLogger(__name__)

_EXPIRED_REMEMBERED = 10_000  # correlation ids whose sequence timed out, remembered for a clear error


@dataclass(eq=False)
class _Sequence:
    correlation_id: CorrelationId
    state: dict[str, np.ndarray]
    last_ns: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # oldest: one request in flight
    slot: tuple[int, int] | None = None  # direct: (instance, slot)
    queue: deque[tuple[Work, asyncio.Future[None], int]] = field(default_factory=deque)  # direct
    pending: int = 0  # requests submitted, not answered yet
    ended: bool = False


class SequenceBatcher(Scheduler):
    def __init__(
        self,
        target: Target,
        instances: int,
        executor: Executor,
        on_execution: ExecutionHook,
        options: SequenceOptions,
        model_name: str,
        max_batch_size: int,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        super().__init__(target, instances, executor, on_execution, inline_below_ns=0)
        self.options = options
        self.model_name = model_name
        self.batched = max_batch_size > 0
        self.clock = clock
        self.sequences: dict[CorrelationId, _Sequence] = {}
        self.expired: OrderedDict[CorrelationId, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.inner: Scheduler | None = None
        if options.strategy == "oldest":
            if self.batched:
                batching = BatcherOptions(
                    max_batch_size, tuple(sorted(options.preferred_batch_sizes)), options.max_queue_delay_us * 1000,
                    options.preserve_ordering,
                )  # fmt: skip
                self.inner = DynamicBatcher(
                    target, instances, executor, on_execution, batching, inline_below_ns=0
                )
            else:
                self.inner = DirectScheduler(target, instances, executor, on_execution, inline_below_ns=0)
            self.candidates = options.max_candidate_sequences * instances  # 0: no limit
        else:
            self.slots_per_instance = max(1, max_batch_size)
            self.slots: list[list[_Sequence | None]] = [
                [None] * self.slots_per_instance for _ in range(instances)
            ]
            self.backlog: deque[_Sequence] = deque()
            self.wake = [asyncio.Event() for _ in range(instances)]
        self._admitted: asyncio.Condition | None = None

    # -- start, stop -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._admitted = asyncio.Condition()
        if self.inner is not None:
            await self.inner.start()
        else:
            self._tasks += [asyncio.create_task(self._instance_loop(i)) for i in range(self.instances)]
        self._tasks.append(asyncio.create_task(self._reaper()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.inner is not None:
            await self.inner.stop()

    # -- one request -----------------------------------------------------------------------------------------
    async def submit(self, work: Work) -> None:
        sequence = self._sequence_for(work)
        sequence.pending += 1
        sequence.last_ns = self.clock()
        try:
            if self.inner is not None:
                await self._run_oldest(sequence, work)
            else:
                await self._run_direct(sequence, work)
        finally:
            sequence.pending -= 1
            sequence.last_ns = self.clock()
            if work.request.sequence_end:
                self._release(sequence)

    def _sequence_for(self, work: Work) -> _Sequence:
        request = work.request
        corr = request.correlation_id
        if corr == 0 or corr == "":
            raise InvalidArgumentError(
                f"inference request to model '{self.model_name}' must specify a non-zero or non-empty "
                f"correlation ID"
            )
        if self.batched and work.batch_size != 1:
            raise InvalidArgumentError(
                f"inference request to model '{self.model_name}' must specify batch-size 1 due to requirements "
                f"of sequence batcher"
            )
        sequence = self.sequences.get(corr)
        if request.sequence_start:
            if sequence is not None and not sequence.ended:
                log.warning(
                    "sequence %s to model '%s' started again before it ended: the previous one ends now",
                    corr, self.model_name,
                )  # fmt: skip
                sequence.ended = True
                if sequence.pending == 0:
                    self._release(sequence)
            fresh = _Sequence(corr, {s.input_name: s.initial for s in self.options.states}, self.clock())
            if sequence is not None:
                # as Triton: the old sequence's queued requests run first, in the same slot
                fresh.lock, fresh.queue = sequence.lock, sequence.queue
                if sequence.slot is not None and self.inner is None:
                    fresh.slot = sequence.slot
                    self._slot_set(sequence.slot, fresh)
                    sequence.slot = None
            self.sequences[corr] = fresh
            self.expired.pop(corr, None)
            if self.inner is None and fresh.slot is None:
                self._assign_slot(fresh)
            return fresh
        if sequence is None or sequence.ended:
            why = ""
            if corr in self.expired:
                why = (
                    f": timeout of the corresponding sequence has been expired (idle for more than "
                    f"{self.options.idle_us} us)"
                )
            raise InvalidArgumentError(
                f"inference request for sequence {corr} to model '{self.model_name}' must specify the START flag "
                f"on the first request of the sequence{why}"
            )
        return sequence

    def _inner_work(self, sequence: _Sequence, work: Work, ready: bool = True) -> Work:
        """``work`` with the control tensors and the sequence's state added, answering to a sender of its own."""
        request = work.request
        feeds = dict(work.feeds)
        flags = {START: request.sequence_start, END: request.sequence_end, READY: ready}
        for control in self.options.controls:
            if control.kind == CORRID:
                value = self._corrid(control.datatype.name, sequence.correlation_id if ready else 0)
            else:
                value = np.array(
                    control.values[1 if flags[control.kind] and ready else 0], control.datatype.numpy
                )
            feeds[control.name] = value.reshape((1, 1) if self.batched else (1,))
        for state in self.options.states:
            current = sequence.state[state.input_name]
            feeds[state.input_name] = current[np.newaxis] if self.batched else current
        outputs = list(work.outputs) + [n for n in self.options.state_outputs if n not in work.outputs]
        sender = ResponseSender(asyncio.get_running_loop())
        return Work(request, feeds, outputs, work.batch_size, sender)

    @staticmethod
    def _corrid(type_name: str, corr: CorrelationId) -> np.ndarray:
        if type_name == "BYTES":
            return np.array([str(corr).encode()], dtype=np.object_)
        if isinstance(corr, str):
            raise InvalidArgumentError(
                f"sequence id '{corr}' is a string but the model's CORRID control is {type_name}; send an integer"
            )
        dtype = np.dtype(
            {"UINT64": np.uint64, "INT64": np.int64, "UINT32": np.uint32, "INT32": np.int32}[type_name]
        )
        return np.array([corr & ((1 << (8 * dtype.itemsize)) - 1)], np.uint64).astype(dtype)

    async def _forward(self, sequence: _Sequence, work: Work, inner: Work) -> None:
        """The inner request's answer to the client's sender, keeping the state it returned."""
        reply: Reply = await inner.sender.result()
        work.timing = inner.timing
        if reply.error is not None:
            work.sender.fail(reply.error)
            return
        assert reply.outputs is not None
        for state in self.options.states:
            value = reply.outputs.get(state.output_name)
            if value is None:
                work.sender.fail(
                    UnavailableError(
                        f"model '{self.model_name}' returned no state output '{state.output_name}'"
                    )
                )
                return
            sequence.state[state.input_name] = value[0] if self.batched else value
        work.sender.send(reply.outputs, final=True, parameters=reply.parameters)

    # -- oldest ----------------------------------------------------------------------------------------------
    async def _run_oldest(self, sequence: _Sequence, work: Work) -> None:
        assert self.inner is not None
        async with sequence.lock:  # the sequence's next request waits for this one: never two in one batch
            if work.request.sequence_start and self.candidates:
                await self._admit_candidate(sequence)
            inner = self._inner_work(sequence, work)
            await self.inner.submit(inner)
            await self._forward(sequence, work, inner)

    async def _admit_candidate(self, sequence: _Sequence) -> None:
        """Wait until fewer than ``max_candidate_sequences`` sequences per instance are active."""
        assert self._admitted is not None
        async with self._admitted:
            await self._admitted.wait_for(
                lambda: sum(1 for s in self.sequences.values() if s.slot is not None) < self.candidates
            )
            sequence.slot = (0, 0)  # counted as a candidate until released

    # -- direct ----------------------------------------------------------------------------------------------
    def _assign_slot(self, sequence: _Sequence) -> None:
        for instance, slots in enumerate(self.slots):
            for index, holder in enumerate(slots):
                if holder is None:
                    slots[index] = sequence
                    sequence.slot = (instance, index)
                    return
        self.backlog.append(sequence)

    def _slot_set(self, slot: tuple[int, int], sequence: _Sequence | None) -> None:
        self.slots[slot[0]][slot[1]] = sequence

    async def _run_direct(self, sequence: _Sequence, work: Work) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sequence.queue.append((work, done, self.clock()))
        if sequence.slot is not None:
            self.wake[sequence.slot[0]].set()
        await done

    def _take_batch(self, instance: int) -> list[tuple[_Sequence, Work, asyncio.Future[None], int]] | None:
        slots = self.slots[instance]
        heads = [i for i, s in enumerate(slots) if s is not None and s.queue]
        if not heads:
            return None
        opts = self.options
        if opts.minimum_slot_utilization > 0 and opts.max_queue_delay_us > 0:
            oldest = min(slots[i].queue[0][2] for i in heads)  # type: ignore[union-attr]
            waited_us = (self.clock() - oldest) / 1000
            if (
                len(heads) / self.slots_per_instance < opts.minimum_slot_utilization
                and waited_us < opts.max_queue_delay_us
            ):
                return []
        batch = []
        for i in heads:
            sequence = slots[i]
            assert sequence is not None
            work, done, enqueued = sequence.queue.popleft()
            batch.append((sequence, work, done, enqueued))
        return batch

    async def _instance_loop(self, instance: int) -> None:
        wake = self.wake[instance]
        while True:
            batch = self._take_batch(instance)
            if not batch:
                wake.clear()
                timeout = None
                if batch == [] and self.options.max_queue_delay_us:
                    timeout = self.options.max_queue_delay_us / 1e6
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            await self._execute_direct(instance, batch)

    async def _execute_direct(
        self, instance: int, batch: list[tuple[_Sequence, Work, asyncio.Future[None], int]]
    ) -> None:
        by_slot = {seq.slot[1]: (seq, work, done, t) for seq, work, done, t in batch if seq.slot is not None}
        top = max(by_slot) if by_slot else -1
        template = batch[0]
        works: list[Work] = []
        inners: list[tuple[_Sequence, Work, Work, asyncio.Future[None]]] = []
        now = self.clock()
        queue_ns = []
        for index in range(top + 1):
            entry = by_slot.get(index)
            if entry is None and not self.target.batched:
                continue  # a per-request backend gets only the real requests
            if entry is None:  # an empty slot below a busy one: a request marked not READY, answered nowhere
                works.append(self._null_work(template[0], template[1]))
                queue_ns.append(0)
                continue
            seq, work, done, enqueued = entry
            inner = self._inner_work(seq, work)
            works.append(inner)
            inners.append((seq, work, inner, done))
            queue_ns.append(now - enqueued)
        await self.execute(works, instance, queue_ns)  # answers every inner request (or its error)
        for seq, work, inner, done in inners:
            try:
                await self._forward(seq, work, inner)
            except Exception as e:
                work.sender.fail_if_open(e)
            if not done.done():
                done.set_result(None)

    def _null_work(self, sequence: _Sequence, like: Work) -> Work:
        """A stand-in for an empty slot: zeros shaped like a real request, every flag false, CORRID 0."""
        feeds = {
            name: (np.full(a.shape, b"", np.object_) if a.dtype == np.object_ else np.zeros_like(a))
            for name, a in like.feeds.items()
        }
        filler = Work(
            like.request, feeds, like.outputs, like.batch_size, ResponseSender(asyncio.get_running_loop())
        )
        null = self._inner_work(sequence, filler, ready=False)
        for state in self.options.states:
            null.feeds[state.input_name] = np.zeros_like(null.feeds[state.input_name])
        return null

    # -- releasing sequences ---------------------------------------------------------------------------------
    def _release(self, sequence: _Sequence) -> None:
        sequence.ended = True
        if self.sequences.get(sequence.correlation_id) is sequence:
            del self.sequences[sequence.correlation_id]
        slot, sequence.slot = sequence.slot, None
        if slot is not None and self.inner is None and self.slots[slot[0]][slot[1]] is sequence:
            self._slot_set(slot, None)
            while self.backlog:
                waiting = self.backlog.popleft()
                if not waiting.ended:
                    self._slot_set(slot, waiting)
                    waiting.slot = slot
                    self.wake[slot[0]].set()
                    break
        elif self.inner is not None and self._admitted is not None:
            asyncio.get_running_loop().create_task(self._notify_admitted())

    async def _notify_admitted(self) -> None:
        assert self._admitted is not None
        async with self._admitted:
            self._admitted.notify_all()

    async def _reaper(self) -> None:
        """Release sequences idle for longer than ``max_sequence_idle_microseconds``."""
        idle_ns = self.options.idle_us * 1000
        while True:
            await asyncio.sleep(min(0.1, idle_ns / 2e9))
            now = self.clock()
            for sequence in list(self.sequences.values()):
                if sequence.pending == 0 and now - sequence.last_ns > idle_ns:
                    log.info(
                        "sequence %s to model '%s' idle for more than %d us: released",
                        sequence.correlation_id, self.model_name, self.options.idle_us,
                    )  # fmt: skip
                    self._release(sequence)
                    self.expired[sequence.correlation_id] = None
                    while len(self.expired) > _EXPIRED_REMEMBERED:
                        self.expired.popitem(last=False)
