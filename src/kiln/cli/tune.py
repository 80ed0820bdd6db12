"""``kiln tune``: parse flags into :class:`kiln.perf.tune.TuneOptions` and call :func:`kiln.perf.tune.tune`."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="find the serving config with the best throughput within a p99 latency budget",
        description="Serve MODEL_DIR (a repository model folder) with a real kiln serve on 127.0.0.1, load candidate "
        "configs (instances, threads, max_batch_size, preferred_batch_size, max_queue_delay_microseconds) and "
        "measure each at several client concurrencies; keep the highest throughput whose p99 stays within "
        "--latency-budget-ms. Prints the diff of config.pbtxt (--write replaces it) and writes every point "
        "(points.json, points.md) and a throughput-vs-p99 chart (chart.png) to --output-dir.",
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="REPO/NAME")
    p.add_argument(
        "--latency-budget-ms", type=float, required=True, metavar="P99", help="p99 budget (client side)"
    )
    p.add_argument("--max-minutes", type=float, default=8.0, help="time bound of the whole run (default 8)")
    p.add_argument("--write", action="store_true", help="replace MODEL_DIR/config.pbtxt with the winner")
    p.add_argument("--output-dir", type=Path, metavar="DIR", help="report folder (default ./kiln-tune-NAME)")
    p.add_argument("--instances", metavar="N,...", help="instance counts (default 1,2,4 up to the cores)")
    p.add_argument(
        "--threads", metavar="auto|N,...", help="intra-op threads per instance (default auto,1,2,4..cores)"
    )
    p.add_argument("--max-batch-sizes", default="4,8,16,32", metavar="N,...", help="(default 4,8,16,32)")
    p.add_argument(
        "--preferred", default="none,max,max/2,max/4", metavar="CHOICE,...",
        help="preferred_batch_size choices: none, max, max/2 (max/2 and max), max/4 (max/4, max/2, max)",
    )  # fmt: skip
    p.add_argument(
        "--delays-us", default="off,0,500,2000,8000", metavar="US,...",
        help="max_queue_delay_microseconds choices; off = no dynamic_batching (default off,0,500,2000,8000)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per point (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each point (default 1)")
    p.add_argument("--max-concurrency", type=int, default=64, help="highest client concurrency tried (64)")
    p.add_argument("--shapes", default="", metavar="NAME:DxD,...", help="input shapes for dynamic dims")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of a progress bar")
    p.set_defaults(func=run)


def _ints(text: str, flag: str, allow: dict[str, object] | None = None) -> tuple[Any, ...]:
    from kiln.errors import InvalidArgumentError

    values: list[object] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if allow and item in allow:
            values.append(allow[item])
        elif item.isdigit():
            values.append(int(item))
        else:
            raise InvalidArgumentError(
                f"{flag}: '{item}' is not a number{' or ' + '/'.join(allow) if allow else ''}"
            )
    if not values:
        raise InvalidArgumentError(f"{flag} needs at least one value")
    return tuple(dict.fromkeys(values))


def options_from_args(args: argparse.Namespace) -> Any:
    from kiln.builder import parse_shape_spec
    from kiln.errors import InvalidArgumentError
    from kiln.perf.tune import SearchSpace, TuneOptions
    from kiln.perf.tune.space import PREFERRED_CHOICES

    default = SearchSpace.default(os.cpu_count())
    preferred = tuple(dict.fromkeys(s.strip() for s in args.preferred.split(",") if s.strip()))
    unknown = [c for c in preferred if c not in PREFERRED_CHOICES]
    if unknown or not preferred:
        raise InvalidArgumentError(
            f"--preferred: choose from {', '.join(PREFERRED_CHOICES)} (got {args.preferred})"
        )
    space = SearchSpace(
        instances=_ints(args.instances, "--instances") if args.instances else default.instances,
        threads=_ints(args.threads, "--threads", {"auto": None}) if args.threads else default.threads,
        max_batch_sizes=_ints(args.max_batch_sizes, "--max-batch-sizes"),
        preferred=preferred,
        delays_us=_ints(args.delays_us, "--delays-us", {"off": None}),
    )
    if min(space.instances) < 1 or min(space.max_batch_sizes) < 1:
        raise InvalidArgumentError("--instances and --max-batch-sizes take values >= 1")
    return TuneOptions(
        model_dir=args.model_dir,
        latency_budget_ms=args.latency_budget_ms,
        max_minutes=args.max_minutes,
        space=space,
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_concurrency=args.max_concurrency,
        shapes=parse_shape_spec(args.shapes),
        output_dir=args.output_dir,
        write=args.write,
    )


def _reporter(console: Any, progress: Any, task: Any, started: float) -> Callable[..., None]:
    """The tuner's progress callback: a status line while measuring, one printed line per point."""

    def report(message: str, measured: Any, point: Any) -> None:
        if progress is not None:
            progress.update(task, completed=time.monotonic() - started, description=message or "measuring")
        if point is None:
            if progress is None and message.startswith("loading"):
                console.print(f"[dim]{message}[/dim]")
            return
        budget_ok = "[green]within[/green]" if point.errors == 0 and point.requests else "[red]failed[/red]"
        if point.errors:
            budget_ok = f"[red]{point.first_error[:100]}[/red]"
        console.print(
            f"{measured.label if measured else '?'} @ c={point.concurrency}: {point.throughput:,.1f} infer/s, "
            f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms {budget_ok if point.errors else ''}".rstrip(),
            highlight=False,
        )

    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kiln.errors import KilnError
    from kiln.perf.tune import tune
    from kiln.perf.tune.report import config_diff, summary

    err = Console(stderr=True, highlight=False)
    # SIGTERM unwinds like Ctrl-C, so the kiln serve the search started is stopped on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        options = options_from_args(args)
        started = time.monotonic()
        if args.no_progress or not err.is_terminal:
            result = tune(options, _reporter(err, None, None, started))
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err, transient=True) as progress:
                task = progress.add_task("starting kiln serve", total=60.0 * options.max_minutes)
                result = tune(options, _reporter(err, progress, task, started))
    except KilnError as e:
        err.print(f"[red]kiln tune failed:[/red] {escape(e.message)}", soft_wrap=True)
        return 1
    out = Console(highlight=False)
    for name, measured, point in summary(result):
        out.print(
            f"{name}: {escape(measured.label)} at concurrency {point.concurrency}: {point.throughput:,.1f} infer/s, "
            f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms (budget {result.budget_ms:g} ms)"
        )
    diff = config_diff(result)
    if "written" in result.files:
        err.print(f"wrote {result.files['written']} (previous: {result.files.get('previous', 'none')})")
    elif diff:
        out.print(escape(diff), end="", soft_wrap=True)
        err.print(f"not written: rerun with --write, or copy {result.files['config']}")
    else:
        err.print("the config as given is the best found: nothing to change")
    for key in ("markdown", "json", "chart"):
        if key in result.files:
            err.print(f"{key}: {result.files[key]}")
    if "chart" not in result.files:
        err.print("no chart: matplotlib is missing (pip install 'kiln[plot]')")
    return 0
