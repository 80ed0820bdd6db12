"""A batch job: the plan (model, dataset, shards, what is left), the executor protocol, and the shard assembler
that both executors feed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kiln.batch.dataset import Dataset, DatasetSpec, open_dataset, shard_ranges
from kiln.batch.engine import BatchResult, Outputs
from kiln.batch.model import ModelRef, ModelRunner, resolve_version
from kiln.batch.options import BatchOptions, OutputFormat, Preprocessing
from kiln.batch.summary import BatchSummary
from kiln.batch.tables import pyarrow
from kiln.batch.writer import ShardStore


@dataclass
class BatchPlan:
    options: BatchOptions
    ref: ModelRef  # with the version resolved
    spec: DatasetSpec
    dataset: Dataset
    batch_size: int
    shards: list[range]
    pending: list[int]  # shards to run, in order
    outputs: list[str]
    store: ShardStore
    metadata: dict[str, str] = field(default_factory=dict)  # written into each Parquet part

    def pending_rows(self) -> int:
        return sum(len(self.shards[s]) for s in self.pending)

    def batches(self) -> list[range]:
        """The pending rows in batches of ``batch_size`` (a batch never spans two shards)."""
        size = self.batch_size
        return [range(start, min(r.stop, start + size)) for s in self.pending for r in [self.shards[s]]
                for start in range(r.start, r.stop, size)]  # fmt: skip


class Executor(Protocol):
    """Runs the pending shards of a plan, feeding every batch's result (and the worker that ran it) to
    ``sink``, which writes the shards."""

    name: str

    def run(self, plan: BatchPlan, runner: ModelRunner, sink: ShardSink) -> None: ...


def recorded_preprocessing(model_dir: Path) -> tuple[Preprocessing | None, str]:
    """The pre-processing recorded for the model, as ``kiln build`` reads it: the config's ``preprocessing``
    parameter, else the one the last build.json used."""
    from kiln.builder.merge import read_existing

    existing = read_existing(model_dir)
    if existing.preprocessing is None:
        return (
            None,
            f"no 'preprocessing' parameter in its config.pbtxt, none in a build.json under {model_dir}",
        )
    return existing.preprocessing, f"recorded in {existing.preprocessing_from}"


def make_plan(options: BatchOptions, runner: ModelRunner, console: Console) -> BatchPlan:
    ref = ModelRef(options.repository, options.model, options.version)
    version, _ = resolve_version(ref)
    preprocessing, source = options.preprocessing, "--preprocessing"
    if preprocessing is None:
        preprocessing, source = recorded_preprocessing(ref.model_dir)
    spec = DatasetSpec(
        Path(options.input).resolve(), dict(options.columns), options.id_column, preprocessing, source
    )
    dataset = open_dataset(spec, runner.inputs)
    if dataset.kind == "images":
        console.print(f"pre-processing: {preprocessing.value} ({source})")  # type: ignore[union-attr]
    shards = shard_ranges(len(dataset), options.shard_size)
    if options.output_format is OutputFormat.PARQUET:
        pyarrow()  # fail before any row runs
    store = ShardStore(Path(options.output), options.output_format)
    job = {
        "model": options.model,
        "version": version,
        "input": str(spec.path),
        "dataset": dataset.fingerprint(),
        "rows": len(dataset),
        "shard_size": options.shard_size,
        "format": options.output_format.value,
        "columns": spec.columns,
        "preprocessing": None if preprocessing is None else preprocessing.value,
    }
    store.prepare(job, options.overwrite)
    done = store.finished()
    pending = [s for s in range(len(shards)) if s not in done]
    if done:
        console.print(
            f"skipping {len(shards) - len(pending)} finished shards of {len(shards)} (in {options.output})"
        )
    return BatchPlan(
        options=options,
        ref=ModelRef(options.repository, options.model, version),
        spec=spec,
        dataset=dataset,
        batch_size=runner.best_batch_size(options.batch_size),
        shards=shards,
        pending=pending,
        outputs=list(runner.outputs),
        store=store,
        metadata={"kiln.model": options.model, "kiln.version": str(version)},
    )


class ShardSink:
    """Collects results by shard and writes each shard once all its rows are in."""

    def __init__(self, plan: BatchPlan, summary: BatchSummary, advance: Callable[[int], None]) -> None:
        self.plan = plan
        self.summary = summary
        self.advance = advance
        self.first_at: float | None = None  # perf_counter() of the first result
        self._open: dict[int, BatchResult] = {}

    def add(self, result: BatchResult, worker: str) -> None:
        size = self.plan.options.shard_size
        rows = len(result.rows) + len(result.failures)
        if self.first_at is None:
            self.first_at = time.perf_counter()
            self.summary.startup_rows = rows
        self.summary.rows += rows
        self.summary.succeeded += len(result.rows)
        self.summary.failures += result.failures
        self.summary.workers[worker] = self.summary.workers.get(worker, 0) + rows
        for index, outputs in result.rows:
            self._shard(index // size).rows.append((index, outputs))
        for failure in result.failures:
            self._shard(failure.index // size).failures.append(failure)
        for shard in sorted({i // size for i, _ in result.rows} | {f.index // size for f in result.failures}):
            collected = self._open[shard]
            if len(collected.rows) + len(collected.failures) == len(self.plan.shards[shard]):
                self._write(shard)
        self.advance(rows)

    def _shard(self, shard: int) -> BatchResult:
        return self._open.setdefault(shard, BatchResult())

    def _write(self, shard: int) -> None:
        done = self._open.pop(shard)
        done.rows.sort(key=lambda item: item[0])
        done.failures.sort(key=lambda f: f.index)
        ids = [self.plan.dataset.row_id(i) for i, _ in done.rows]
        outputs: list[Outputs] = [o for _, o in done.rows]
        self.plan.store.write(shard, ids, outputs, done.failures, self.plan.outputs, self.plan.metadata)

    def unfinished(self) -> list[int]:
        return sorted(self._open)


def progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]kiln batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def run_plan(plan: BatchPlan, runner: ModelRunner, executor: Executor, console: Console) -> BatchSummary:
    summary = BatchSummary(
        model=plan.ref.name,
        version=int(plan.ref.version or 0),
        executor=executor.name,
        batch_size=plan.batch_size,
        rows_total=len(plan.dataset),
        shards=len(plan.shards),
        shards_skipped=len(plan.shards) - len(plan.pending),
    )
    started = time.perf_counter()
    with progress_bar(console, plan.options.progress) as progress:
        task = progress.add_task("rows", total=plan.pending_rows(), rate="")

        def advance(rows: int) -> None:
            elapsed = time.perf_counter() - started
            rate = f"{summary.rows / elapsed:.1f} rows/s" if elapsed > 0 else ""
            progress.update(task, advance=rows, rate=rate)

        sink = ShardSink(plan, summary, advance)
        executor.run(plan, runner, sink)
    summary.seconds = time.perf_counter() - started
    summary.startup_s = (sink.first_at or started) - started
    if sink.unfinished():
        raise RuntimeError(f"shards {sink.unfinished()} did not get all their rows")  # an executor bug
    summary.failures_total = plan.store.collect_failures()
    (plan.store.folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
