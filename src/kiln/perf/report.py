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
from kiln.perf.profile import Profile

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


def print_profiles(results: Sequence[BenchResult], top: int = 15, console: Console | None = None) -> None:
    """The slowest ``top`` nodes of each profiled result, then time per op type (side by side with two)."""
    console = console or Console(highlight=False)
    profiles = [r.profile for r in results if r.profile is not None]
    for i, profile in enumerate(profiles):
        key = f"{'AB'[i]}: " if len(profiles) == 2 else ""
        table = Table(
            title=f"{key}{escape(profile.label)} - slowest nodes ({profile.backend}, {profile.runs} timed runs, "
            f"{profile.per_run_ms(profile.total_us):.3f} ms of node time per run)",
            title_justify="left",
        )
        for column in ("#", "node", "op type", "kernel", "ms / run", "share"):
            table.add_column(column, justify="right" if column in ("#", "ms / run", "share") else "left")
        for rank, node in enumerate(profile.top(top), 1):
            table.add_row(
                str(rank), escape(node.name), node.op_type, escape(node.kernel),
                f"{profile.per_run_ms(node.total_us):.3f}", f"{profile.share(node.total_us):.1f} %",
            )  # fmt: skip
        console.print(table)
    if profiles:
        console.print(op_type_table(profiles))


def op_type_table(profiles: Sequence[Profile]) -> Table:
    """Time per op type for one profile; for two, per op family side by side with B / A (``Conv`` against
    ``QLinearConv`` or OpenVINO's ``Convolution``: what quantisation, fusion or the runtime changed)."""
    two = len(profiles) == 2
    table = Table(
        title="time per op family (A / B op types)" if two else "time per op type", title_justify="left"
    )
    table.add_column("op family" if two else "op type")
    for i in range(len(profiles)):
        key = f"{'AB'[i]} " if two else ""
        table.add_column(f"{key}op types" if two else "nodes", justify="left" if two else "right")
        table.add_column(f"{key}ms / run", justify="right")
        table.add_column(f"{key}share", justify="right")
    if two:
        table.add_column("B / A", justify="right")
    per_type = [p.by_op_type(family=two) for p in profiles]
    for op in dict.fromkeys(op for ops in per_type for op in ops):
        cells = []
        for profile, ops in zip(profiles, per_type, strict=True):
            us, count = ops.get(op, (0.0, 0))
            members = (
                ", ".join(f"{t} x{n}" for t, n in profile.op_types_of(op).items()) if two else str(count)
            )
            shown = [members, f"{profile.per_run_ms(us):.3f}", f"{profile.share(us):.1f} %"]
            cells += shown if count else ["-", "-", "-"]
        if two:
            a, b = (
                ops.get(op, (0.0, 0))[0] / max(1, p.runs) for p, ops in zip(profiles, per_type, strict=True)
            )
            cells.append(f"{b / a:.2f}x" if a and b else "-")
        table.add_row(escape(op), *cells)
    totals = []
    for profile in profiles:
        totals += [f"{len(profile.nodes)} nodes", f"{profile.per_run_ms(profile.total_us):.3f}", "100.0 %"]
    if two:
        a, b = (p.total_us / max(1, p.runs) for p in profiles)
        totals.append(f"{b / a:.2f}x" if a else "-")
    table.add_row("total", *totals, style="bold")
    return table


def write_profile_json(results: Sequence[BenchResult], path: Path) -> None:
    """``--export-profile``: every profiled node and op type of each result, with the host."""
    doc = {"host": host(), "profiles": [r.profile.to_dict() for r in results if r.profile is not None]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
