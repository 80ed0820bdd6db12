"""``kiln batch``: offline inference of a repository model over a dataset, locally or on a Ray cluster.

The model is loaded as ``kiln serve`` loads it (config.pbtxt honoured); rows come from a folder of images,
``.npy``/``.npz`` files or Parquet/CSV columns; outputs go to Parquet (or ``.npy``) one shard at a time, so an
interrupted job resumes where it stopped. A bad row is recorded with its reason and never stops the job.

```python
from pathlib import Path
from kiln.batch import BatchOptions, read_output, run_batch

summary = run_batch(BatchOptions(repository=Path("repo"), model="resnet", input=Path("images/"),
                                 output=Path("out/")))
print(summary.rows_per_s, summary.failures)
outputs = read_output(Path("out/"))  # {"row_id": ..., "logits": ...}
```
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from kiln.batch.options import BatchOptions, OutputFormat, Preprocessing, RayOptions
from kiln.batch.summary import BatchSummary
from kiln.batch.writer import read_output

__all__ = [
    "BatchOptions",
    "BatchSummary",
    "OutputFormat",
    "Preprocessing",
    "RayOptions",
    "read_output",
    "run_batch",
]


def run_batch(options: BatchOptions, console: Console | None = None) -> BatchSummary:
    """Run the job ``options`` describes (the finished shards of an earlier run are skipped)."""
    from kiln.batch.job import Executor, make_plan, run_plan
    from kiln.batch.model import ModelRef, ModelRunner

    console = console or Console(stderr=True, highlight=False)
    executor: Executor
    if options.ray is not None:
        from kiln.batch.ray import RayExecutor

        executor = RayExecutor(options.ray)
        executor.connect()
    else:
        from kiln.batch.local import LocalExecutor

        executor = LocalExecutor()
    runner = ModelRunner.load(ModelRef(Path(options.repository), options.model, options.version))
    try:
        plan = make_plan(options, runner, console)
        if options.ray is not None:  # the actors load their own; the driver only planned with it
            runner.close()
        return run_plan(plan, runner, executor, console)
    finally:
        runner.close()
