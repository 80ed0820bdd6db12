"""Batching pays: a ResNet-18 classifier served by Kiln with dynamic batching off and on, against the ceiling.

One run builds ResNet-18 (bench/_resnet.py: real topology, random weights, FP32, input [batch, 3, 224, 224])
into a temporary repository twice - `resnet18` (no dynamic_batching) and `resnet18_batched` (dynamic_batching)
- serves both with one `python -m kiln serve`, and then, in each of --rounds rounds:

  * raw ORT - onnxruntime in this process, Kiln's session options for one CPU instance (intra_op_num_threads =
    nproc, inter_op_num_threads = 1, all graph optimisations), one caller in a closed loop at batch 1, 2, 4, 8,
    16; the best images/s is the round's ceiling;
  * perf_analyzer - concurrency 16, batch-1 requests, against each model over each protocol.

Each Kiln number is compared with the ceiling of its own round, so load from other processes on the machine
hits both sides alike. The server's statistics give the average executed batch size of each run.

Usage (after `bash bench/setup.sh`):
  .venv/bin/python bench/batching.py                       # gRPC and HTTP, 2 rounds, ~4 min
  .venv/bin/python bench/batching.py --protocols grpc --rounds 1 --markdown-out bench/results/batching.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (
    REPO_ROOT,
    kiln_counts,
    kiln_server,
    load_note,
    machine_description,
    parse_server_breakdown,
    perf_analyzer,
    process_cpu_seconds,
    run_perf_analyzer,
)
from _resnet import IMAGE_SHAPE, INPUT, resnet_config, write_resnet18

UNBATCHED = "resnet18"
BATCHED = "resnet18_batched"
BATCH_SIZES = (1, 2, 4, 8, 16)


@dataclasses.dataclass
class Served:
    round: int
    model: str
    protocol: str
    throughput: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    avg_batch: float | None = None
    queue_us: float | None = None
    infer_us: float | None = None
    client_cpu_share: float | None = None  # perf_analyzer's CPU time / (run time x nproc)
    server_cpu_share: float | None = None  # the server's CPU time / (run time x nproc)
    ceiling: float | None = None  # raw ORT at the sweep's best batch size, just before and after this run
    ceiling_before: float | None = None
    ceiling_after: float | None = None
    error: str | None = None


def batching_block(args: argparse.Namespace) -> str:
    preferred = " ".join(f"preferred_batch_size: {p}" for p in args.preferred)
    return f"{preferred} max_queue_delay_microseconds: {args.delay_us}"


def build_repository(root: Path, args: argparse.Namespace) -> tuple[Path, int]:
    """Both models (one ONNX file, two configs); returns the ONNX path and the parameter count."""
    onnx_path = root / UNBATCHED / "1" / "model.onnx"
    params = write_resnet18(onnx_path)
    (root / UNBATCHED / "config.pbtxt").write_text(resnet_config(UNBATCHED, args.max_batch_size, None))
    (root / BATCHED / "1").mkdir(parents=True)
    shutil.copyfile(onnx_path, root / BATCHED / "1" / "model.onnx")
    (root / BATCHED / "config.pbtxt").write_text(
        resnet_config(BATCHED, args.max_batch_size, batching_block(args), args.batched_instances)
    )
    return onnx_path, params


def ort_session(onnx_path: Path):  # -> ort.InferenceSession
    """Kiln's defaults for one CPU instance (src/kiln/backends/onnxruntime.py: session_options)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_images_per_s(session, batch: int, seconds: float) -> float:
    """images/s at `batch`, one caller in a closed loop for `seconds` (after one warm-up run)."""
    feeds = {INPUT: np.random.default_rng(batch).random((batch, *IMAGE_SHAPE), dtype=np.float32)}
    session.run(None, feeds)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, feeds)
        runs += 1
    print(f"[ort] batch {batch}: {runs * batch / elapsed:.1f} images/s", file=sys.stderr)
    return runs * batch / elapsed


def ort_sweep(session, seconds: float) -> dict[int, float]:
    """images/s at each batch size."""
    return {batch: ort_images_per_s(session, batch, seconds) for batch in BATCH_SIZES}


def measure_served(
    pa, endpoints, model: str, protocol: str, rnd: int, out_dir: Path, args: argparse.Namespace
) -> Served:
    url = endpoints.http_url if protocol == "http" else endpoints.grpc_url
    arguments = [
        "-m", model, "-u", url, "-i", protocol, "-b", "1",
        "--concurrency-range", str(args.concurrency),
        "--measurement-interval", str(args.window_ms),
        "--stability-percentage", "10000",  # a fixed number of windows: the machine's load is not ours to settle
        "--max-trials", str(args.windows),
        "-v",
    ]  # fmt: skip
    before = kiln_counts(endpoints.http_url, model)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, wall_before = process_cpu_seconds(endpoints.pid), time.perf_counter()
    row, output = run_perf_analyzer(pa, arguments, out_dir / f"r{rnd}_{model}_{protocol}", args.perf_timeout)
    capacity = (time.perf_counter() - wall_before) * (os.cpu_count() or 1)
    server_share = (process_cpu_seconds(endpoints.pid) - server_before) / capacity
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    after = kiln_counts(endpoints.http_url, model)
    if row is None:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        return Served(rnd, model, protocol, error=tail[0][:200])
    executions = after[1] - before[1]
    breakdown = parse_server_breakdown(output) or {}
    return Served(
        rnd,
        model,
        protocol,
        throughput=row["Inferences/Second"],
        p50_us=row.get("p50 latency"),
        p99_us=row.get("p99 latency"),
        avg_batch=(after[0] - before[0]) / executions if executions else None,
        queue_us=breakdown.get("queue"),
        infer_us=breakdown.get("infer"),
        client_cpu_share=client_cpu / capacity,
        server_cpu_share=server_share,
    )


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"


DRIFT = 0.10  # a run whose ceilings before and after differ by more than this was disturbed
BUSY = 0.85  # a run whose ceiling is below this share of the run's best ceiling had a busy machine


def disturbed(s: Served, best_ceiling: float) -> str:
    """Why a run's ratio is not trustworthy (other processes took the CPU), or '' when it is clean."""
    if s.ceiling_before is None or s.ceiling_after is None or s.ceiling is None:
        return ""
    if abs(s.ceiling_before - s.ceiling_after) > DRIFT * s.ceiling:
        return f"ceiling drifted {s.ceiling_before:.0f} -> {s.ceiling_after:.0f}"
    if s.ceiling < BUSY * best_ceiling:
        return f"machine busy (ceiling {s.ceiling:.0f} < {100 * BUSY:.0f} % of {best_ceiling:.0f})"
    return ""


def report(ceilings: list[dict[int, float]], served: list[Served], loads: list[str]) -> str:
    sweep = ["| round | " + " | ".join(f"raw ORT batch {b}" for b in BATCH_SIZES) + " | ceiling | load |"]
    sweep.append("|---:|" + "---:|" * len(BATCH_SIZES) + "---:|---|")
    for i, c in enumerate(ceilings):
        best = max(c, key=c.__getitem__)
        cells = [_fmt(c[b], 1) for b in BATCH_SIZES]
        sweep.append(f"| {i + 1} | " + " | ".join(cells) + f" | {c[best]:.1f} (batch {best}) | {loads[i]} |")
    lines = [
        "| round | protocol | dynamic batching | images/s | ceiling (images/s) | % of ceiling | p50 (ms) "
        "| p99 (ms) | avg executed batch | server queue (ms) | server compute infer (ms) | CPU: server / client |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in served:
        ceiling = s.ceiling or max(ceilings[s.round - 1].values())
        mode = "on" if s.model == BATCHED else "off"
        if s.error:
            lines.append(
                f"| {s.round} | {s.protocol} | {mode} | failed: {s.error.replace('|', '/')} |" + " - |" * 8
            )
            continue
        assert s.throughput is not None
        cells = [
            _fmt(s.throughput, 1),
            _fmt(ceiling, 1),
            f"{100 * s.throughput / ceiling:.1f} %",
            _fmt(s.p50_us and s.p50_us / 1e3, 1),
            _fmt(s.p99_us and s.p99_us / 1e3, 1),
            _fmt(s.avg_batch, 2),
            _fmt(s.queue_us and s.queue_us / 1e3, 1),
            _fmt(s.infer_us and s.infer_us / 1e3, 1),
            f"{_pct(s.server_cpu_share)} / {_pct(s.client_cpu_share)}",
        ]
        lines.append(f"| {s.round} | {s.protocol} | {mode} | " + " | ".join(cells) + " |")
    best_ceiling = max(
        [s.ceiling_before or 0 for s in served] + [s.ceiling_after or 0 for s in served] + [0.0]
    )
    summary, notes = [], []
    for s in served:
        why = disturbed(s, best_ceiling)
        if why and s.throughput:
            notes.append(
                f"round {s.round} {s.protocol} batching {'on' if s.model == BATCHED else 'off'}: {why}"
            )
    for protocol in sorted({s.protocol for s in served}):
        for model, mode in ((UNBATCHED, "off"), (BATCHED, "on")):
            runs = [s for s in served if s.protocol == protocol and s.model == model and s.throughput]
            clean = [s for s in runs if not disturbed(s, best_ceiling)]
            ratios = [s.throughput / s.ceiling for s in clean if s.throughput and s.ceiling]
            if ratios:
                summary.append(
                    f"- {protocol}, batching {mode}: **{100 * float(np.mean(ratios)):.1f} %** of the ceiling "
                    f"(mean of {len(ratios)} undisturbed run(s): {', '.join(f'{100 * r:.1f}' for r in ratios)}"
                    f"; {len(runs) - len(clean)} disturbed run(s) left out)"
                )
            elif runs:
                summary.append(f"- {protocol}, batching {mode}: every run was disturbed; no verdict")
    return "\n".join(
        [
            "Raw ONNX Runtime in-process (images/s) at each batch size; its best batch size in the round is then "
            "measured again just before and just after each Kiln run, and the mean of the two is that run's "
            "ceiling:",
            "",
            *sweep,
            "",
            "Kiln, perf_analyzer, batch-1 requests (each row against the ceiling measured around it):",
            "",
            *lines,
            "",
            *summary,
            *(
                ["", "Left out of the summary (other processes took the CPU during the run):", ""]
                if notes
                else []
            ),
            *(f"- {n}" for n in notes),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocols", nargs="+", choices=("grpc", "http"), default=["grpc", "http"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--preferred", type=int, nargs="*", default=[4, 8, 16], help="preferred_batch_size")
    parser.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds")
    parser.add_argument(
        "--batched-instances",
        type=int,
        default=1,
        help="instance_group count of the batched model (default threads)",
    )
    parser.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement window")
    parser.add_argument("--windows", type=int, default=3, help="windows per perf_analyzer run (--max-trials)")
    parser.add_argument("--ort-seconds", type=float, default=2.5, help="seconds per raw ORT batch size")
    parser.add_argument("--perf-timeout", type=float, default=120.0)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--out-dir", type=Path, help="perf_analyzer CSVs/logs, server log")
    parser.add_argument("--markdown-out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (args.out_dir or REPO_ROOT / "bench" / "results" / f"batching-{stamp}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pa = perf_analyzer()
    started = dt.datetime.now(dt.timezone.utc)
    ceilings: list[dict[int, float]] = []
    served: list[Served] = []
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-batching-") as tmp:
        repository = Path(tmp) / "repository"
        onnx_path, params = build_repository(repository, args)
        print(f"[repo] {repository}: ResNet-18, {params:,} parameters", file=sys.stderr)
        session = ort_session(onnx_path)
        with kiln_server(repository, out_dir / "server.log", args.ready_timeout) as endpoints:
            for rnd in range(1, args.rounds + 1):
                loads.append(load_note().split(" on ")[0].removeprefix("load average "))
                print(f"[round {rnd}] {load_note()}", file=sys.stderr)
                ceilings.append(ort_sweep(session, args.ort_seconds))
                best = max(ceilings[-1], key=ceilings[-1].__getitem__)
                for protocol in args.protocols:
                    for model in (UNBATCHED, BATCHED):
                        # bracket each Kiln run with the ceiling, so drifting machine load hits both sides
                        before = ort_images_per_s(session, best, args.ort_seconds)
                        result = measure_served(pa, endpoints, model, protocol, rnd, out_dir, args)
                        after = ort_images_per_s(session, best, args.ort_seconds)
                        served.append(
                            dataclasses.replace(
                                result,
                                ceiling=(before + after) / 2,
                                ceiling_before=before,
                                ceiling_after=after,
                            )
                        )
        del session
    table = report(ceilings, served, loads)
    print(table)
    if args.markdown_out is not None:
        command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
        text = f"""# Batching pays: ResNet-18, dynamic batching off vs on

- date: {started.isoformat(timespec="seconds")}
- machine: {machine_description()}
- command: `{command}`
- model: ResNet-18 (bench/_resnet.py, onnx.helper; {params:,} parameters, FP32, random weights), input
  [batch, 3, 224, 224]; onnxruntime {ort.__version__}; `max_batch_size: {args.max_batch_size}`, one CPU instance
  (Kiln's default threads: intra_op {os.cpu_count()}, inter_op 1)
- dynamic batching on: `dynamic_batching {{ {batching_block(args)} }}`
- perf_analyzer: concurrency {args.concurrency}, -b 1, {args.windows} windows of {args.window_ms} ms
  (--stability-percentage 10000 --max-trials {args.windows}: no stability check, the machine is shared),
  -v; p50/p99 client-side
- raw ORT: same session options, one caller, closed loop, {args.ort_seconds:g} s per batch size, in this process
  while the server idles; a sweep over batch sizes per round, then the round's best batch size again right before
  and right after every Kiln run (their mean is that run's ceiling)
- summary: a run counts only when the ceilings just before and after it agree within {100 * DRIFT:.0f} % and its
  ceiling is at least {100 * BUSY:.0f} % of the best ceiling of the whole run (else other processes on this shared
  machine were taking the CPU); every run is in the table
- CPU: server / client = the server's and perf_analyzer's CPU time during the run, as % of the machine (nproc
  cores x the run's wall time); what the client takes is not available to ONNX Runtime
- load at the start of each round is in the first table; nproc cores are shared by the client, the server and
  (in its turn) raw ORT

{table}
"""
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(text)
        print(f"[out] {args.markdown_out}", file=sys.stderr)
    print(f"[out] {out_dir}", file=sys.stderr)
    return 1 if any(s.error for s in served) else 0


if __name__ == "__main__":
    sys.exit(main())
