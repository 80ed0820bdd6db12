"""What a run did: rows, speed, skipped shards, failures with their reasons, and which workers did the work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.batch.engine import Failure

SHOWN_FAILURES = 10


@dataclass
class BatchSummary:
    model: str
    version: int
    executor: str  # "local" or "ray"
    batch_size: int
    rows_total: int  # rows in the dataset
    shards: int
    shards_skipped: int = 0  # finished by an earlier run
    rows: int = 0  # rows this run went through (succeeded + failed)
    succeeded: int = 0
    failures: list[Failure] = field(default_factory=list)  # this run's
    failures_total: int = 0  # every shard's, earlier runs' included (OUT/failures.jsonl)
    seconds: float = 0.0
    startup_s: float = 0.0  # until the first batch came back (model loads in Ray actors, first reads)
    startup_rows: int = 0  # rows that came back with it (a Ray block holds several model batches)
    workers: dict[str, int] = field(default_factory=dict)  # "host:pid" (Ray: "node-id/host:pid") -> rows

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rows_per_s(self) -> float:
        """Rows per second after the first result came back (start-up left out)."""
        first = min(self.rows, self.startup_rows or self.batch_size)
        span = self.seconds - self.startup_s
        return (self.rows - first) / span if span > 0 and self.rows > first else self.rows_per_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 2)
        out["seconds"] = round(self.seconds, 3)
        out["steady_rows_per_s"] = round(self.steady_rows_per_s, 2)
        return out


def print_summary(summary: BatchSummary, console: Console) -> None:
    table = Table(title=f"kiln batch: {summary.model} version {summary.version} ({summary.executor})")
    for column in ("rows", "succeeded", "failed", "seconds", "rows/s", "batch size", "shards", "skipped"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.rows),
        str(summary.succeeded),
        str(len(summary.failures)),
        f"{summary.seconds:.2f}",
        f"{summary.rows_per_s:.1f}",
        str(summary.batch_size),
        str(summary.shards),
        str(summary.shards_skipped),
    )
    console.print(table)
    if len(summary.workers) > 1:
        console.print("rows per worker: " + ", ".join(f"{w} {n}" for w, n in sorted(summary.workers.items())))
    for failure in summary.failures[:SHOWN_FAILURES]:
        console.print(
            f"[yellow]failed[/yellow] {escape(failure.row_id)}: {escape(failure.reason)}", soft_wrap=True
        )
    if len(summary.failures) > SHOWN_FAILURES:
        console.print(f"... and {len(summary.failures) - SHOWN_FAILURES} more")
    if summary.failures_total:
        console.print(f"{summary.failures_total} failed rows in all are listed in failures.jsonl")
