"""What each build stage did (counts, sizes, time), printed as it happens and kept for build.json."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


@dataclass
class StageRecord:
    name: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    failed: bool = False  # the stage ran but its check failed (a gate): printed in red as "failed"

    def summary(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.details.items() if not isinstance(v, (dict, list)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Reporter:
    """Prints one line per stage to stderr (rich), and a progress bar for long loops when ``progress``."""

    def __init__(self, progress: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.show_progress = progress
        self.stages: list[StageRecord] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        record = StageRecord(name)
        start = time.perf_counter()
        try:
            yield record
        except BaseException:
            record.seconds = time.perf_counter() - start
            self.console.print(f"[red]failed[/red] {name:<15} {record.seconds:6.2f}s  (error)")
            raise
        record.seconds = time.perf_counter() - start
        self.stages.append(record)
        mark = "[red]failed[/red]" if record.failed else "[green]ok[/green]"
        pad = " " * (6 - len("failed" if record.failed else "ok"))
        self.console.print(
            f"{mark}{pad} {name:<15} {record.seconds:6.2f}s  {escape(record.summary())}", soft_wrap=True
        )

    def note(self, text: str, style: str | None = None) -> None:
        self.console.print(f"   {text}", soft_wrap=True, markup=False, style=style)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning[/yellow] {escape(text)}", soft_wrap=True)

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        if not self.show_progress or total < 2:
            yield from items
            return
        columns = (
            TextColumn(f"   {description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)
