"""Printing, JSON and the latency histogram of ``kiln bench`` results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.errors import MissingDependencyError
from kiln.perf.bench import BenchResult, host

_ROWS = [
    ("min", "min_ms", "ms"),
    ("mean", "mean_ms", "ms"),
    ("median", "median_ms", "ms"),
    ("p90", "p90_ms", "ms"),
    ("p95", "p95_ms", "ms"),
    ("p99", "p99_ms", "ms"),
    ("max", "max_ms", "ms"),
]


def print_results(results: Sequence[BenchResult], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    table = Table(title=f"kiln bench - batch {results[0].batch}", title_justify="left")
    table.add_column("")
    for i, r in enumerate(results):
        table.add_column(f"{'AB'[i] if len(results) == 2 else i + 1}: {r.label}", justify="right")
    if len(results) == 2:
        table.add_column("B / A", justify="right")
    rows: list[tuple[str, list[float], str]] = []
    for label, attr, unit in _ROWS:
        rows.append((f"latency {label}", [getattr(r.latency, attr) for r in results], unit))
    rows.append(("throughput", [r.latency.throughput for r in results], "inf/s"))
    rows.append(("iterations", [float(r.latency.iterations) for r in results], ""))
    rows.append(("peak memory", [r.peak_memory_mb for r in results], "MiB"))
    rows.append(("model size", [r.size_mb for r in results], "MB"))
    rows.append(("load time", [r.load_s for r in results], "s"))
    for label, values, unit in rows:
        cells = [
            f"{v:,.3f} {unit}".strip() if unit != "" or label != "iterations" else f"{v:.0f}" for v in values
        ]
        if len(values) == 2:
            cells.append(f"{values[1] / values[0]:.2f}x" if values[0] else "-")
        table.add_row(label, *cells)
    console.print(table)
    for i, r in enumerate(results):
        key = "AB"[i] if len(results) == 2 else str(i + 1)
        console.print(f"{key}: {escape(settings_text(r))}", style="dim", soft_wrap=True)


def settings_text(result: BenchResult) -> str:
    """``onnxruntime 1.22.0: intra_op_threads 4, inter_op_threads 1, ...``: the configuration measured."""
    runtime = result.settings.get("runtime") or result.backend
    rest = ", ".join(
        f"{k} {'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in result.settings.items()
        if k != "runtime"
    )
    return f"{runtime}: {rest}" if rest else str(runtime)


def results_json(results: Sequence[BenchResult], with_latencies: bool = False) -> dict[str, object]:
    doc: dict[str, object] = {"host": host(), "results": [r.to_dict(with_latencies) for r in results]}
    if len(results) == 2:
        a, b = results[0].latency, results[1].latency
        doc["ratios_b_over_a"] = {
            "throughput": b.throughput / a.throughput if a.throughput else None,
            "median_latency": b.median_ms / a.median_ms if a.median_ms else None,
            "p99_latency": b.p99_ms / a.p99_ms if a.p99_ms else None,
        }
    return doc


def write_json(results: Sequence[BenchResult], path: Path) -> None:
    path.write_text(json.dumps(results_json(results, with_latencies=True), indent=2) + "\n")


def write_histogram(results: Sequence[BenchResult], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib (latency histogram)", "plot") from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        ax.hist(
            r.latency.latencies_ms,
            bins=60,
            alpha=0.6,
            label=f"{r.label} (p50 {r.latency.median_ms:.2f} ms, p99 {r.latency.p99_ms:.2f} ms)",
        )
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("runs")
    ax.set_title(f"kiln bench latency, batch {results[0].batch}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
