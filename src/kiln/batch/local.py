"""The local executor: the model in this process, rows read and pre-processed by a thread pool while the model
runs earlier batches (one inference thread per model instance of the config's ``instance_group``)."""

from __future__ import annotations

import os
import socket
from collections import deque
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
        readers = ThreadPoolExecutor(workers, thread_name_prefix="kiln-batch-read")
        inference = ThreadPoolExecutor(runner.instances, thread_name_prefix="kiln-batch-infer")
        running: deque[Future[BatchResult]] = deque()
        try:
            for batch in plan.batches():
                decoding = [readers.submit(engine.decode, index) for index in batch]
                running.append(inference.submit(_infer, engine, batch, decoding))
                while len(running) > runner.instances + PREFETCH:
                    sink.add(running.popleft().result(), worker)
            while running:
                sink.add(running.popleft().result(), worker)
        finally:
            for future in running:
                future.cancel()
            inference.shutdown(wait=True, cancel_futures=True)
            readers.shutdown(wait=True, cancel_futures=True)


def _infer(engine: BatchEngine, batch: range, decoding: list[Future]) -> BatchResult:
    return engine.infer(batch, [future.result() for future in decoding])
