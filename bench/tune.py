"""kiln tune against the hand-picked batching config: ResNet-18, the same p99 budget, the same load generator.

One run builds ResNet-18 (bench/_resnet.py: real topology, random weights, FP32) into a temporary repository
with a plain config (`max_batch_size: 16`, one CPU instance, no dynamic_batching: what a user starts from), runs
`kiln tune` on it (the library, as `kiln tune REPO/resnet18 --latency-budget-ms B` does, default search space
and time bound), then starts a fresh `kiln serve` and measures, with the same gRPC load generator:

  * the hand-picked config of BENCHMARKS.md "Batching pays" (`preferred_batch_size: [4, 8, 16]`,
    `max_queue_delay_microseconds: 2000`, one instance, default threads), swept over concurrency the way the
    tuner sweeps its candidates, to find its best throughput within the same budget;
  * then the tuned config and the hand-picked one alternately (--rounds times each, at the concurrency each
    chose), so load from other processes hits both alike; the ratio of their throughputs is the verdict.

Usage:
  .venv/bin/python bench/tune.py                                  # budget 160 ms, ~11 min on 2 cores
  .venv/bin/python bench/tune.py --budget-ms 160 --markdown-out /tmp/bench_tune.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, load_note, machine_description
from _resnet import resnet_config, write_resnet18
from kiln.config.parse import load_config
from kiln.perf.loadgen import LoadPoint, run_load
from kiln.perf.tune import (
    Candidate,
    Measured,
    NoConfigWithinBudget,
    Search,
    SearchSettings,
    SearchSpace,
    TuneOptions,
    TuneResult,
    render,
    tune,
)
from kiln.perf.tune.server import TuneServer
from kiln.perf.tune.tuner import request_inputs

MODEL = "resnet18"
HAND_PICKED = Candidate(instances=1, threads=None, max_batch_size=16, preferred="max/4", delay_us=2000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget-ms", type=float, default=160.0, help="p99 budget (hand-picked HTTP p99: 157 ms)"
    )
    parser.add_argument("--max-minutes", type=float, default=8.0, help="kiln tune's time bound (its default)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each config")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point (kiln tune's default)")
    parser.add_argument(
        "--scale-budget", action="store_true",
        help="multiply the budget by 127.7 / raw ORT images/s now (BENCHMARKS.md's ceiling when the hand-picked "
        "config was measured): the same regime on a machine that other work slows down",
    )  # fmt: skip
    parser.add_argument("--markdown-out", type=Path)
    return parser.parse_args(argv)


def _row(name: str, p: LoadPoint) -> str:
    return f"| {name} | {p.concurrency} | {p.throughput:.1f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} |"


def remeasure(model_dir: Path, chosen: Measured | None, args: argparse.Namespace) -> tuple[list[str], dict]:
    """The hand-picked config's own sweep, then tuned and hand-picked alternately at their concurrencies."""
    base = load_config(model_dir / "config.pbtxt")
    server = TuneServer(model_dir, model_dir.parent.parent / "remeasure.log").start()
    try:
        server.load(render(base, HAND_PICKED))
        inputs = request_inputs(server.config(), {})
        cores = os.cpu_count() or 1
        current: list[Candidate | None] = [HAND_PICKED]

        def measure(candidate: Candidate | None, concurrency: int) -> LoadPoint:
            if candidate != current[0]:
                server.load(render(base, candidate) if candidate else None)
                current[0] = candidate
            point = run_load(server.grpc_url, server.name, inputs, concurrency, args.duration, 1.0)
            print(f"[remeasure] {candidate.label() if candidate else '?'} c={concurrency}: "
                  f"{point.throughput:.1f}/s p99 {point.p99_ms:.1f} ms", file=sys.stderr)  # fmt: skip
            return point

        search = Search(SearchSpace(), SearchSettings(args.budget_ms, cores=cores), measure, lambda: True)
        hand = search.evaluate(HAND_PICKED, 1)
        hand_best = hand.best(args.budget_ms)
        lines = [
            "| hand-picked sweep | concurrency | infer/s | p50 (ms) | p99 (ms) | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [_row(HAND_PICKED.label(), p) for p in hand.points]
        pairs: dict[str, list[LoadPoint]] = {"tuned": [], "hand-picked": [], "hand-picked @16": []}
        if chosen is not None:  # its candidate is None when the config as given won
            winner = chosen.candidate
            # the hand-picked config at its own best concurrency within the budget (16, as BENCHMARKS.md ran
            # it, when none is within), and at 16
            hand_c = hand_best.concurrency if hand_best else 16
            for _ in range(args.rounds):
                pairs["tuned"].append(measure(winner, args.tuned_concurrency))
                pairs["hand-picked"].append(measure(HAND_PICKED, hand_c))
                if hand_c != 16:
                    pairs["hand-picked @16"].append(measure(HAND_PICKED, 16))
        return lines, pairs
    finally:
        server.stop()


def alternation_table(pairs: dict[str, list[LoadPoint]], budget: float) -> list[str]:
    lines = [
        "| config | concurrency | round | infer/s | p50 (ms) | p99 (ms) | within budget |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, points in pairs.items():
        for i, p in enumerate(points, 1):
            ok = "yes" if p.errors == 0 and p.p99_ms <= budget else "no"
            lines.append(
                f"| {name} | {p.concurrency} | {i} | {p.throughput:.1f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {ok} |"
            )
    tuned = pairs.get("tuned", [])
    for name in ("hand-picked", "hand-picked @16"):
        hand = pairs.get(name, [])
        if not tuned or not hand:
            continue
        ratios = [t.throughput / h.throughput for t, h in zip(tuned, hand, strict=True) if h.throughput]
        lines += [
            "",
            f"- throughput tuned / {name}, round by round: {', '.join(f'{r:.3f}' for r in ratios)}; "
            f"mean **{statistics.mean(ratios):.3f}**, median {statistics.median(ratios):.3f}; "
            f"p99 tuned max {max(p.p99_ms for p in tuned):.1f} ms, "
            f"{name} max {max(p.p99_ms for p in hand):.1f} ms (budget {budget:g} ms)",
        ]
    return lines


def run_tune(model_dir: Path, out: Path, args: argparse.Namespace) -> TuneResult:
    """kiln tune as `kiln tune MODEL_DIR --latency-budget-ms B --max-minutes M` runs it, one line per point."""

    def progress(message: str, measured: Measured | None, point: LoadPoint | None) -> None:
        if point is not None and measured is not None:
            print(f"[tune] {measured.label} c={point.concurrency}: {point.throughput:.1f}/s "
                  f"p99 {point.p99_ms:.1f} ms", file=sys.stderr)  # fmt: skip

    options = TuneOptions(model_dir=model_dir, latency_budget_ms=args.budget_ms, max_minutes=args.max_minutes,
                          duration_s=args.duration, output_dir=out)  # fmt: skip
    return tune(options, progress)


BENCHMARKS_CEILING = 127.7  # raw ORT images/s, batch 8, round 1 of "Batching pays"


def ort_ceiling(onnx_path: Path, seconds: float = 4.0) -> float:
    """Raw ONNX Runtime images/s at batch 8 with Kiln's session options for one instance (as bench/batching.py)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = os.cpu_count() or 1, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {"input": np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)}
    session.run(None, feeds)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        runs += 1
    return 8 * runs / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    note_start = load_note()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-tune-") as tmp:
        model_dir = Path(tmp) / "repository" / MODEL
        params = write_resnet18(model_dir / "1" / "model.onnx")
        (model_dir / "config.pbtxt").write_text(resnet_config(MODEL, 16, None))
        ceiling = ort_ceiling(model_dir / "1" / "model.onnx")
        requested = args.budget_ms
        if args.scale_budget:
            args.budget_ms = round(requested * BENCHMARKS_CEILING / ceiling, 1)
        print(f"[ceiling] raw ORT {ceiling:.1f} images/s; budget {args.budget_ms:g} ms", file=sys.stderr)
        t0 = time.monotonic()
        try:
            result = run_tune(model_dir, Path(tmp) / "tune", args)
        except NoConfigWithinBudget as e:
            print(f"kiln tune found nothing within the budget: {e.message}", file=sys.stderr)
            print((Path(tmp) / "tune" / "points.md").read_text())
            return 1
        tune_minutes = (time.monotonic() - t0) / 60
        points_md = (Path(tmp) / "tune" / "points.md").read_text()
        diff = (Path(tmp) / "tune" / "config.diff").read_text() if result.tuned_text else ""
        chosen = result.best_point
        args.tuned_concurrency = chosen.concurrency if chosen else 1
        hand_lines, pairs = remeasure(model_dir, result.best, args)
    table = "\n".join(alternation_table(pairs, args.budget_ms))
    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
    text = f"""### kiln tune vs the hand-picked batching config: ResNet-18, p99 budget {
        args.budget_ms:g} ms (`bench/tune.py`)

- date: {started.isoformat(timespec="seconds")}; {note_start} at start, {load_note()} at end
- machine: {machine_description()}
- raw ORT now (batch 8, Kiln's session options): {ceiling:.1f} images/s, against {
        BENCHMARKS_CEILING
    } when BENCHMARKS.md
  measured the hand-picked config; p99 budget {args.budget_ms:g} ms{
        f" (= {requested:g} ms x {BENCHMARKS_CEILING} / {ceiling:.1f}: --scale-budget)"
        if args.scale_budget
        else ""
    }
- command: `{command}`
- model: ResNet-18 (bench/_resnet.py, {
        params:,} parameters, FP32), starting config `max_batch_size: 16`, one CPU
  instance, no dynamic_batching; `kiln tune` with its default search space and `--max-minutes {
        args.max_minutes:g}`
- kiln tune: **{tune_minutes:.1f} min**, {len(result.measured)} configs, {
        sum(len(m.points) for m in result.measured)
    }
  points; chosen: `{result.best.label if result.best else "none"}` at concurrency
  {chosen.concurrency if chosen else "-"}: {chosen.throughput if chosen else 0:.1f} infer/s, p99 {
        chosen.p99_ms if chosen else 0:.1f} ms
- then a fresh kiln serve: the hand-picked config (`{HAND_PICKED.label()}`) swept the same way, then tuned and
  hand-picked alternately, {args.rounds} rounds, {
        args.duration:g} s windows, same gRPC load generator (batch-1 requests)

Every point kiln tune measured:

{points_md}
The tuned config against the user's:

```diff
{diff}```

{chr(10).join(hand_lines)}

Side by side (alternating):

{table}
"""
    print(text)
    if args.markdown_out:
        args.markdown_out.write_text(text)
        print(f"[out] {args.markdown_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
