"""What ``kiln tune`` leaves behind: every point as JSON and markdown, the throughput-vs-p99 chart, the tuned
config.pbtxt and its diff against the current one."""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format

from kiln.config.schema import model_config_pb2
from kiln.perf.loadgen import LoadPoint
from kiln.perf.tune.search import Measured, within

if TYPE_CHECKING:
    from kiln.perf.tune.tuner import TuneResult


def rows(result: TuneResult) -> list[dict[str, object]]:
    """One row per measured point, in measurement order of the configs; a config's confirmation last."""
    out = []
    best = result.best_point
    for index, measured in enumerate(result.measured):
        failed = LoadPoint(0, 0, 1, 0.0, 0.0, *(4 * [math.nan]), measured.error)
        points = [(p, False) for p in measured.points or ([failed] if measured.error else [])]
        if measured.confirmation is not None:
            points.append((measured.confirmation, True))
        for point, confirmation in points:
            out.append(
                {
                    "config": index,
                    "label": measured.label + (" (confirmation)" if confirmation else ""),
                    "candidate": vars(measured.candidate) if measured.candidate else None,
                    "concurrency": point.concurrency or None,
                    "throughput": point.throughput,
                    "p50_ms": point.p50_ms,
                    "p90_ms": point.p90_ms,
                    "p99_ms": point.p99_ms,
                    "requests": point.requests,
                    "errors": point.errors,
                    "first_error": point.first_error,
                    "within_budget": within(point, result.budget_ms),
                    "confirmation": confirmation,
                    "chosen": point is best and not confirmation,
                }
            )
    return out


def configs(result: TuneResult) -> list[dict[str, object]]:
    """Per config: its score (best throughput within the budget), the confirmation, the final score."""
    budget = result.budget_ms
    return [
        {
            "config": index,
            "label": m.label,
            "score": m.score(budget),
            "confirmation_throughput": m.confirmation.throughput if m.confirmation else None,
            "confirmation_within_budget": within(m.confirmation, budget) if m.confirmation else None,
            "final_score": m.final_score(budget),
            "chosen": m is result.best,
            "error": m.error,
        }
        for index, m in enumerate(result.measured)
    ]


def _number(value: float, digits: int = 1) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"
    )


def markdown(result: TuneResult) -> str:
    lines = [
        f"p99 budget {result.budget_ms:g} ms; {len(result.measured)} configs, "
        f"{sum(len(m.points) for m in result.measured)} points, {result.elapsed_s / 60:.1f} min"
        + (" (stopped by --max-minutes)" if result.out_of_time else ""),
        "",
        "| # | config | concurrency | throughput (infer/s) | p50 (ms) | p99 (ms) | within budget |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in rows(result):
        mark = "**chosen**" if row["chosen"] else ("yes" if row["within_budget"] else "no")
        if row["errors"]:
            mark = f"error: {str(row['first_error'])[:80]}"
        lines.append(
            f"| {row['config']} | {row['label']} | {row['concurrency'] or '-'} | {_number(row['throughput'])} "  # type: ignore[arg-type]
            f"| {_number(row['p50_ms'], 2)} | {_number(row['p99_ms'], 2)} | {mark} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"


def summary(result: TuneResult) -> list[tuple[str, Measured, LoadPoint]]:
    """The config as given and the chosen one, each at its best point within the budget."""
    picks = []
    as_given = result.measured[0]
    given_best = as_given.best(result.budget_ms)
    if given_best is not None:
        picks.append(("as given", as_given, given_best))
    if result.best is not None and result.best_point is not None:
        picks.append(("chosen", result.best, result.best_point))
    return picks


def config_diff(result: TuneResult) -> str:
    """A unified diff from the current config (in protobuf text format) to the tuned one."""
    if not result.tuned_text:
        return ""
    before = ""
    if result.original_text:
        before = text_format.MessageToString(
            text_format.Parse(result.original_text, model_config_pb2.ModelConfig())
        )
    after = text_format.MessageToString(text_format.Parse(result.tuned_text, model_config_pb2.ModelConfig()))
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            "a/config.pbtxt",
            "b/config.pbtxt",
        )
    )


def write_chart(result: TuneResult, path: Path) -> bool:
    """Throughput against p99 for every point, one line per config; False without matplotlib (plot extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for measured in result.measured:
        points = [p for p in measured.points if p.requests]
        if not points:
            continue
        is_best, is_given = measured is result.best, measured is result.measured[0]
        style = (
            {"color": "tab:red", "lw": 2}
            if is_best
            else ({"color": "tab:blue", "lw": 1.5} if is_given else {})
        )
        label = (
            f"chosen: {measured.label}" if is_best else f"as given: {measured.label}" if is_given else None
        )
        ax.plot(
            [p.p99_ms for p in points], [p.throughput for p in points], "o-", ms=4, label=label,
            alpha=1.0 if style else 0.35, color=style.get("color", "grey"), lw=style.get("lw", 1),
        )  # fmt: skip
    confirmed = [
        m.confirmation for m in result.measured if m.confirmation is not None and m.confirmation.requests
    ]
    if confirmed:
        ax.plot([c.p99_ms for c in confirmed], [c.throughput for c in confirmed], "x", color="tab:green", ms=7,
                label="confirmations (best concurrency again)")  # fmt: skip
    ax.axvline(result.budget_ms, color="black", ls="--", lw=1, label=f"p99 budget {result.budget_ms:g} ms")
    if result.best_point is not None:
        best = result.best_point
        ax.plot([best.p99_ms], [best.throughput], "*", color="tab:red", ms=16)
        ax.annotate(f"c={best.concurrency}", (best.p99_ms, best.throughput), textcoords="offset points",
                    xytext=(8, -12))  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("p99 latency (ms, client side)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title(f"kiln tune {result.model}: every point measured")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(result: TuneResult, out: Path, write_to: Path | None) -> dict[str, Path]:
    """points.json, points.md, chart.png, config.pbtxt (tuned) and config.diff in ``out``; with ``write_to``
    (the model folder) its config.pbtxt is replaced by the tuned one (the previous one kept in ``out``)."""
    files = {"json": out / "points.json", "markdown": out / "points.md"}
    doc = {
        "model": result.model,
        "budget_ms": result.budget_ms,
        "elapsed_s": result.elapsed_s,
        "out_of_time": result.out_of_time,
        "chosen": result.best.label if result.best else None,
        "configs": configs(result),
        "points": rows(result),
    }
    files["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    files["markdown"].write_text(markdown(result))
    if write_chart(result, out / "chart.png"):
        files["chart"] = out / "chart.png"
    if result.tuned_text:
        files["config"] = out / "config.pbtxt"
        files["config"].write_text(result.tuned_text)
        files["diff"] = out / "config.diff"
        files["diff"].write_text(config_diff(result))
        if write_to is not None and result.best is not None and result.best.candidate is not None:
            if result.original_text:
                (out / "config.pbtxt.orig").write_text(result.original_text)
                files["previous"] = out / "config.pbtxt.orig"
            (write_to / "config.pbtxt").write_text(result.tuned_text)
            files["written"] = write_to / "config.pbtxt"
    return files
