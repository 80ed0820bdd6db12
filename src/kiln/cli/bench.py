"""``kiln bench``: parse flags into :class:`kiln.perf.BenchOptions` and call :func:`kiln.perf.bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure an artifact's latency and throughput (like trtexec); --compare A B side by side",
        description="Load ARTIFACT (a model file: .onnx, OpenVINO .xml, TorchScript .pt, .pt2, .tflite, .graphdef, a "
        ".savedmodel folder, an ncnn .param with its .bin; or a repository model folder), warm up, "
        "run it --iterations times or for --duration seconds, and print latency percentiles, throughput, "
        "peak memory. With --compare A B, both run in one process, their timed runs alternating.",
    )
    p.add_argument("artifact", nargs="?", type=Path, help="artifact or REPO/NAME")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two artifacts side by side")
    p.add_argument("--iterations", type=int, help="timed runs (default: run for --duration)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of timed runs (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up (default 0.5)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, help="intra-op threads (default: as kiln serve runs the model)")
    p.add_argument("--shapes", default="", metavar="NAME:DxD,...", help="input shapes for dynamic dims")
    p.add_argument("--load-inputs", type=Path, metavar="NPZ", help="real inputs (one array per input name)")
    p.add_argument("--rounds", type=int, default=4, help="with --compare: alternate A/B this many times")
    p.add_argument("--json", type=Path, metavar="FILE", help="write results, latencies, settings as JSON")
    p.add_argument("--histogram", type=Path, metavar="PNG", help="latency histogram (needs the plot extra)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="per-node profile of the timed runs: slowest nodes and time per op type (ONNX Runtime, OpenVINO)",
    )
    p.add_argument("--profile-top", type=int, default=15, metavar="N", help="nodes listed per artifact (15)")
    p.add_argument(
        "--export-profile", type=Path, metavar="FILE", help="write the profile as JSON (implies --profile)"
    )
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> Any:
    from kiln.builder import parse_shape_spec
    from kiln.errors import InvalidArgumentError
    from kiln.perf import BenchOptions

    if args.compare and args.artifact:
        raise InvalidArgumentError("give either ARTIFACT or --compare A B, not both")
    artifacts = tuple(args.compare) if args.compare else ((args.artifact,) if args.artifact else ())
    if not artifacts:
        raise InvalidArgumentError("give an ARTIFACT to benchmark, or --compare A B")
    return BenchOptions(
        artifacts=artifacts,
        iterations=args.iterations,
        duration_s=args.duration,
        warmup_s=args.warmup,
        batch=args.batch,
        threads=args.threads,
        shapes=parse_shape_spec(args.shapes),
        rounds=args.rounds if len(artifacts) > 1 else 1,
        input_data=args.load_inputs,
        profile=bool(args.profile or args.export_profile),
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from kiln.errors import KilnError
    from kiln.perf import bench
    from kiln.perf.report import (
        print_profiles,
        print_results,
        results_json,
        write_histogram,
        write_json,
        write_profile_json,
    )

    err = Console(stderr=True, highlight=False)
    try:
        results = bench(options_from_args(args))
        print_results(results)
        if any(r.profile for r in results):
            print_profiles(results, top=args.profile_top)
        if args.export_profile:
            write_profile_json(results, args.export_profile)
            err.print(f"wrote {args.export_profile}")
        if args.json:
            write_json(results, args.json)
            err.print(f"wrote {args.json}")
        if args.histogram:
            write_histogram(results, args.histogram)
            err.print(f"wrote {args.histogram}")
    except KilnError as e:
        err.print(f"[red]kiln bench failed:[/red] {escape(e.message)}", soft_wrap=True)
        return 1
    if len(results) == 2:
        ratios = results_json(results)["ratios_b_over_a"]
        print(json.dumps({"ratios_b_over_a": ratios}))
    return 0
