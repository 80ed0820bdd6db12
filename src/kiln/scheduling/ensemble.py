"""The ensemble scheduler: runs an ensemble's steps as a dataflow graph, each step as a request to its own model.

A step starts as soon as every tensor it reads exists; steps that are ready together run concurrently; a chain
runs without creating tasks. Steps that no requested output depends on do not run. Each step request goes
through the core to the step model's own scheduler (so step models batch across concurrent ensemble requests)
and inherits the ensemble request's id, correlation id, sequence flags, priority, timeout, parameters and
cancellation. Tensors pass from step to step as the arrays the step produced: nothing is copied.

A failing step fails the request ("in ensemble '<name>', <the step's message>"): no further step starts, the
ones already running finish first, as in Triton. A decoupled step fans out: each of its responses continues
the graph in a branch of its own (a copy of the tensors so far), and each branch that completes is one
response of the (then decoupled) ensemble.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from kiln.config.ensemble import EnsemblePlan, Step
from kiln.errors import CancelledError, KilnError, error_class
from kiln.scheduling.base import ExecutionHook, Scheduler
from kiln.scheduling.work import Batch, Work
from kiln.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from kiln.types.datatypes import DataType

if TYPE_CHECKING:
    from kiln.backends.base import ModelCaller

Tensors = dict[str, tuple[DataType, np.ndarray]]
_Fan = asyncio.Queue["Tensors | BaseException | None"]


class EnsembleScheduler(Scheduler):
    def __init__(
        self,
        plan: EnsemblePlan,
        input_types: Mapping[str, DataType],
        caller: ModelCaller,
        on_execution: ExecutionHook,
    ) -> None:
        # no instances and no executor of its own: an ensemble only awaits its step models
        self.plan = plan
        self.input_types = dict(input_types)
        self.caller = caller
        self.on_execution = on_execution
        self._unneeded: dict[frozenset[str], frozenset[int]] = {}

    def unneeded(self, outputs: list[str]) -> frozenset[int]:
        key = frozenset(outputs)
        steps = self._unneeded.get(key)
        if steps is None:
            steps = self._unneeded[key] = self.plan.unneeded_steps(key)
        return steps

    async def submit(self, work: Work) -> None:
        tensors: Tensors = {name: (self.input_types[name], array) for name, array in work.feeds.items()}
        run = _Run(self, work)
        await run.branch(tensors, set(self.unneeded(work.outputs)))
        if self.plan.decoupled:
            work.sender.send(None, final=True)
        # as Triton reports ensembles: the compute times are the sums of the steps' (queue is the ensemble's own)
        timing = Batch(work.batch_size, 0, *run.step_ns)
        work.timing = timing
        self.on_execution(timing)


class _Run:
    """One ensemble request on its way through the graph."""

    __slots__ = ("plan", "request", "scheduler", "step_ns", "work")

    def __init__(self, scheduler: EnsembleScheduler, work: Work) -> None:
        self.scheduler = scheduler
        self.plan = scheduler.plan
        self.work = work
        self.request = work.request
        self.step_ns = [0, 0, 0]  # compute input, infer, output, summed over the steps

    async def branch(self, tensors: Tensors, started: set[int]) -> None:
        """Run every step that can run from ``tensors``; then answer (or let a decoupled step's responses
        continue in branches of their own)."""
        plan = self.plan
        running: dict[asyncio.Task[Tensors], Step] = {}
        fan: tuple[Step, _Fan, asyncio.Task[None]] | None = None
        failed: BaseException | None = None
        try:
            while True:
                ready = [] if failed else [plan.steps[i] for i in plan.ready_steps(tensors.keys(), started)]
                started.update(s.index for s in ready)
                if ready and self.request.cancellation.cancelled:
                    raise CancelledError(f"in ensemble '{plan.name}', the request was cancelled")
                if len(ready) == 1 and not running and not ready[0].decoupled:
                    tensors.update(await self._call(ready[0], tensors))  # a chain: no task needed
                    continue
                for step in ready:
                    if step.decoupled:
                        queue: _Fan = asyncio.Queue()
                        fan = (step, queue, asyncio.create_task(self._stream(step, tensors, queue)))
                    else:
                        running[asyncio.create_task(self._call(step, tensors))] = step
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    if task.exception() is not None:
                        failed = failed or task.exception()  # no new steps; the running ones finish
                    elif failed is None:
                        tensors.update(task.result())
            if failed is not None:
                raise failed
            if fan is None:
                self._answer(tensors)
            else:
                await self._branches(fan[1], tensors, started)
        finally:
            for task in running:
                task.cancel()
            if fan is not None and not fan[2].done():
                fan[2].cancel()

    async def _branches(self, queue: _Fan, tensors: Tensors, started: set[int]) -> None:
        """Each response of the decoupled step continues the graph in a branch of its own."""
        children: set[asyncio.Task[None]] = set()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                for child in [c for c in children if c.done()]:
                    children.discard(child)
                    child.result()  # a failed branch fails the request
                children.add(asyncio.create_task(self.branch({**tensors, **item}, set(started))))
            for child in asyncio.as_completed(list(children)):
                await child
        finally:
            for child in children:
                child.cancel()

    async def _stream(self, step: Step, tensors: Tensors, queue: _Fan) -> None:
        try:
            async for response in self.scheduler.caller.stream(self._step_request(step, tensors)):
                if response.error is not None:
                    raise response.error
                if response.outputs:
                    queue.put_nowait(self._step_outputs(step, response))
            queue.put_nowait(None)
        except KilnError as e:
            queue.put_nowait(self._in_ensemble(step, e))
        except Exception as e:  # a bug in the step: the transport answers INTERNAL and logs it
            queue.put_nowait(e)

    async def _call(self, step: Step, tensors: Tensors) -> Tensors:
        try:
            response = await self.scheduler.caller.infer(self._step_request(step, tensors))
        except KilnError as e:
            raise self._in_ensemble(step, e) from None
        return self._step_outputs(step, response)

    def _step_request(self, step: Step, tensors: Tensors) -> InferRequest:
        parent = self.request
        inputs = []
        for name, tensor in step.inputs.items():
            datatype, array = tensors[tensor]
            array = _adapt(array, step.batches, step.input_dims[name])
            inputs.append(InputTensor(name, datatype, array.shape, array))
        return InferRequest(
            step.model_name,
            step.model_version,
            parent.id,
            inputs,
            [RequestedOutput(name) for name in step.outputs],
            dict(parent.parameters),
            parent.correlation_id,
            parent.sequence_start,
            parent.sequence_end,
            parent.priority,
            parent.timeout_us,
            parent.cancellation,  # cancelling the ensemble request cancels the steps still to come
        )

    def _step_outputs(self, step: Step, response: InferResponse) -> Tensors:
        if response.durations is not None:
            self.step_ns[0] += response.durations[1]
            self.step_ns[1] += response.durations[2]
            self.step_ns[2] += response.durations[3]
        return {step.outputs[out.name]: (out.datatype, out.data) for out in response.outputs}

    def _in_ensemble(self, step: Step, error: KilnError) -> KilnError:
        return error_class(error.code)(
            f"in ensemble '{self.plan.name}', {error.message} (step {step.index}, model '{step.model_name}')"
        )

    def _answer(self, tensors: Tensors) -> None:
        plan = self.plan
        outputs = {
            name: _adapt(tensors[name][1], plan.batches, plan.output_dims[name]) for name in self.work.outputs
        }
        self.work.sender.send(outputs, final=not plan.decoupled)


def _adapt(array: np.ndarray, batches: bool, dims: tuple[int, ...]) -> np.ndarray:
    """Triton's batch-dimension adapting between batching and non-batching models: a batching model given a
    tensor of exactly its dims gets a batch of one; a non-batching model given a batch of one of its dims gets
    the tensor without the batch dimension. Anything else passes as it is (the model checks it)."""
    shape = array.shape
    if batches:
        if len(shape) == len(dims) and _matches(shape, dims):
            return array.reshape((1, *shape))
    elif (
        len(shape) == len(dims) + 1
        and shape[0] == 1
        and not _matches(shape, dims)
        and _matches(shape[1:], dims)
    ):
        return array.reshape(shape[1:])
    return array


def _matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))
