"""The Ray Data executor: the pending rows' indices are read into a Ray dataset, ``map_batches`` runs them on a
pool of actors that each hold the model in-process (loaded as ``kiln serve`` loads it, with the same row
reading and pre-processing as the local executor), and the results stream back to the driver, whose
:class:`~kiln.batch.job.ShardSink` writes each finished shard atomically, so shards, resume and failures work
exactly as with the local executor.

The input must be readable at the same path on every node (a shared filesystem); the output is written by the
driver only. Ray is an optional extra: ``pip install 'kiln[ray]'``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import Any

import numpy as np

from kiln.batch.dataset import DatasetSpec, open_dataset
from kiln.batch.engine import BatchEngine, BatchResult, Failure
from kiln.batch.job import BatchPlan, ShardSink
from kiln.batch.local import Pipeline
from kiln.batch.model import ModelRef, ModelRunner
from kiln.batch.options import RayOptions
from kiln.errors import InvalidArgumentError, MissingDependencyError, UnavailableError

ACTOR_START_TIMEOUT_S = 600
BLOCK_BATCHES = 8  # model batches per Ray Data block: an actor overlaps reading and inference within a block


def import_ray() -> Any:
    """Ray and Ray Data, or the error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as e:
        raise MissingDependencyError(f"Ray Data ({e.name})", "ray") from None
    except ImportError as e:  # installed but unusable (e.g. a pyarrow built for another numpy)
        raise UnavailableError(f"Ray Data cannot be imported: {e}; see pip install 'kiln[ray]'") from None
    return ray


class RayExecutor:
    name = "ray"

    def __init__(self, options: RayOptions) -> None:
        self.options = options

    def connect(self) -> None:
        """Join the cluster at ``options.address`` ("auto": the running one; "local": start one in-process)."""
        ray = import_ray()
        if ray.is_initialized():
            return
        extra: dict[str, Any] = {}
        if self.options.address == "local":
            extra = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        try:
            ray.init(address=self.options.address, logging_level="WARNING", log_to_driver=False, **extra)
        except ConnectionError as e:
            raise UnavailableError(f"cannot reach the Ray cluster at '{self.options.address}': {e}") from None

    def actors(self) -> int:
        if self.options.concurrency is not None:
            if self.options.concurrency < 1:
                raise InvalidArgumentError(f"--ray-concurrency must be >= 1, got {self.options.concurrency}")
            return self.options.concurrency
        ray = import_ray()
        return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))  # one actor per node

    def run(self, plan: BatchPlan, runner: ModelRunner, sink: ShardSink) -> None:
        ray = import_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context.execution_options.preserve_order = False  # the sink puts rows back in order, shard by shard
        # the whole pool starts before the first block is handed out, so an actor that comes up first does not
        # take the blocks of one still loading its model (Ray's error names the resources when it cannot start)
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        indices = np.array([i for s in plan.pending for i in plan.shards[s]], dtype=np.int64)
        if not len(indices):
            return
        actors = self.actors()
        # blocks of up to BLOCK_BATCHES model batches, but at least four per actor so that the work spreads
        per_block = max(1, min(BLOCK_BATCHES, math.ceil(len(indices) / plan.batch_size / (4 * actors))))
        block_rows = per_block * plan.batch_size
        blocks = max(1, math.ceil(len(indices) / block_rows))
        dataset = ray.data.from_items([{"index": int(i)} for i in indices], override_num_blocks=blocks)
        results = dataset.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "ref": plan.ref,
                "spec": plan.spec,
                "threads": self.options.threads,
                "batch_size": plan.batch_size,
            },
            batch_size=block_rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
            num_cpus=self.options.num_cpus,
            resources=dict(self.options.resources) or None,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for worker, result in from_columns(batch, plan).items():
                sink.add(result, worker)


class Predictor:
    """A Ray Data actor: the model and the dataset reader. Each call gets a block of several model batches and
    runs them through the local executor's :class:`~kiln.batch.local.Pipeline`, so rows of the next batch are
    read while the model runs the current one."""

    def __init__(self, ref: ModelRef, spec: DatasetSpec, threads: int | None, batch_size: int) -> None:
        import ray

        self.runner = ModelRunner.load(ref, cpu_count=threads)
        self.pipeline = Pipeline(
            BatchEngine(self.runner, open_dataset(spec, self.runner.inputs)), threads or os.cpu_count() or 1
        )
        self.batch_size = batch_size
        node = ray.get_runtime_context().get_node_id()
        self.worker = f"{node[:12]}/{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in batch["index"]]
        step = self.batch_size
        result = BatchResult()
        for part in self.pipeline.run(indices[i : i + step] for i in range(0, len(indices), step)):
            result.extend(part)
        return to_columns(result, self.worker)


def to_columns(result: BatchResult, worker: str) -> dict[str, np.ndarray]:
    """A batch's result as equal-length columns: ``index``, ``error`` ("" for rows that ran), ``worker``, and each
    output (zeros in failed rows; absent when every row failed)."""
    failed = {f.index: f.reason for f in result.failures}
    order = sorted([i for i, _ in result.rows] + list(failed))
    columns: dict[str, np.ndarray] = {
        "index": np.array(order, dtype=np.int64),
        "error": np.array([failed.get(i, "") for i in order], dtype=object),
        "worker": np.array([worker] * len(order), dtype=object),
    }
    if result.rows:
        by_index = dict(result.rows)
        for name, first in result.rows[0][1].items():
            filler = np.zeros_like(first)
            columns[name] = np.stack([by_index[i][name] if i in by_index else filler for i in order])
    return columns


def from_columns(batch: dict[str, np.ndarray], plan: BatchPlan) -> dict[str, BatchResult]:
    """The driver's side of :func:`to_columns`: results by worker."""
    results: dict[str, BatchResult] = {}
    outputs = [name for name in plan.outputs if name in batch]
    for position, index in enumerate(batch["index"]):
        result = results.setdefault(str(batch["worker"][position]), BatchResult())
        error = str(batch["error"][position])
        if error:
            result.failures.append(Failure(int(index), plan.dataset.row_id(int(index)), error))
        else:
            result.rows.append((int(index), {name: batch[name][position] for name in outputs}))
    return results
