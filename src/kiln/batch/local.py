"""The local executor: the model in this process, rows read and pre-processed by a thread pool while the model
runs earlier batches (one inference thread per model instance of the config's ``instance_group``)."""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from kiln.batch.engine import BatchEngine, BatchResult
from kiln.batch.job import BatchPlan, ShardSink
from kiln.batch.model import ModelRunner

PREFETCH = 2  # batches read ahead of those the model instances are running


class LocalExecutor:
    name = "local"

    def run(self, plan: BatchPlan, runner: ModelRunner, sink: ShardSink) -> None:
        engine = BatchEngine(runner, plan.dataset)
        workers = plan.options.workers or os.cpu_count() or 1
        worker = f"{socket.gethostname()}:{os.getpid()}"
        with Pipeline(engine, workers) as pipeline:
            for result in pipeline.run(plan.batches()):
                sink.add(result, worker)


class Pipeline:
    """Reading overlapped with inference: a thread pool reads and pre-processes the rows of the next batches
    (``PREFETCH`` ahead) while each model instance runs an earlier one in its own thread. Results come back in
    the batches' order. Used by the local executor over the whole job and by each Ray actor over its blocks."""

    def __init__(self, engine: BatchEngine, readers: int) -> None:
        self.engine = engine
        self.instances = engine.runner.instances
        self.readers = ThreadPoolExecutor(readers, thread_name_prefix="kiln-batch-read")
        self.inference = ThreadPoolExecutor(self.instances, thread_name_prefix="kiln-batch-infer")

    def run(self, batches: Iterable[Sequence[int]]) -> Iterator[BatchResult]:
        running: deque[Future[BatchResult]] = deque()
        try:
            for batch in batches:
                decoding = [self.readers.submit(self.engine.decode, index) for index in batch]
                running.append(self.inference.submit(_infer, self.engine, batch, decoding))
                while len(running) > self.instances + PREFETCH:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            for future in running:
                future.cancel()

    def close(self) -> None:
        self.inference.shutdown(wait=True, cancel_futures=True)
        self.readers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _infer(engine: BatchEngine, batch: Sequence[int], decoding: list[Future]) -> BatchResult:
    return engine.infer(batch, [future.result() for future in decoding])
