"""Serving overhead of Kiln: perf_analyzer over HTTP and gRPC against raw in-process ONNX Runtime.

One run measures, for each concurrency:
  * raw ORT  - onnxruntime.InferenceSession.run in a closed loop on N Python threads, batch 1;
  * kiln http / kiln grpc - perf_analyzer (from the tritonclient wheel) against `python -m kiln serve`,
    batch 1, no --shape hints (perf_analyzer reads the model metadata and config itself).

Usage (after `bash bench/setup.sh`):
  .venv/bin/python bench/serving_overhead.py
  .venv/bin/python bench/serving_overhead.py --concurrency 1 8 --markdown-out bench/results/overhead.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from _common import (
    REPO_ROOT,
    PerfAnalyzer,
    ServerEndpoints,
    build_add_sub_repository,
    kiln_server,
    latest_onnx_model,
    load_note,
    machine_description,
    parse_server_breakdown,
    perf_analyzer,
    perf_row,
    process_cpu_seconds,
    venv_python,
)

RAW = "raw ORT"


@dataclasses.dataclass(frozen=True)
class Result:
    transport: str
    concurrency: int
    throughput: float | None = None  # inferences per second
    p50_us: float | None = None
    p99_us: float | None = None
    server_compute_us: float | None = None  # perf_analyzer's server-side compute input+infer+output
    error: str | None = None
    note: str | None = None
    mean_us: float | None = None  # mean latency (raw ORT: the model's own time per inference)
    # perf_analyzer -v's server-side breakdown (usec per request, from the server's statistics)
    server_request_us: float | None = None
    server_overhead_us: float | None = None
    queue_us: float | None = None
    input_us: float | None = None
    infer_us: float | None = None
    output_us: float | None = None
    # server process CPU time / requests it answered during the run (transport included), usec
    cpu_us_per_request: float | None = None


@dataclasses.dataclass(frozen=True)
class PerfSettings:
    measurement_interval_ms: int
    stability_percentage: float
    max_trials: int
    timeout_s: float
    server_stats: bool


# ------------------------------------------------------------------------------------ model repository


def prepare_repository(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The repository to serve and its origin: the example generator first, our own build as fallback."""
    if args.model_repository is not None:
        return args.model_repository.resolve(), "given (--model-repository)"
    if args.repository_source in ("auto", "examples"):
        target = workdir / "examples"
        proc = subprocess.run(
            [str(venv_python()), "-m", "kiln.examples", str(target)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0 and (target / args.model).is_dir():
            return target, "python -m kiln.examples"
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"no {args.model} written"]
        if args.repository_source == "examples":
            raise SystemExit(f"python -m kiln.examples failed: {detail[0]}")
        print(
            f"[repo] python -m kiln.examples unavailable ({detail[0]}); building add_sub here",
            file=sys.stderr,
        )
    if args.model != "add_sub":
        raise SystemExit("the built-in fallback only builds add_sub; pass --model-repository")
    return build_add_sub_repository(workdir / "builtin"), "built by bench/_common.py (onnx.helper)"


# --------------------------------------------------------------------------------------------- raw ORT


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def run_raw_ort(
    model_path: Path, concurrency: int, duration_s: float, warmup_s: float, intra_op_threads: int = 0
) -> Result:
    """Closed loop of session.run on `concurrency` threads sharing one session, batch 1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads  # 0: ORT's default (one per physical core)
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for node in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
        feeds[node.name] = rng.random(shape).astype(_ORT_DTYPES.get(node.type, np.float32))

    barrier = threading.Barrier(concurrency + 1)
    window: dict[str, float] = {}
    latencies: list[list[int]] = [[] for _ in range(concurrency)]

    def worker(index: int) -> None:
        own = latencies[index]
        barrier.wait()
        while time.perf_counter() < window["end"]:
            start = time.perf_counter_ns()
            session.run(None, feeds)
            now = time.perf_counter_ns()
            if now >= window["start_ns"]:
                own.append(now - start)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    window["start_ns"] = time.perf_counter_ns() + int(warmup_s * 1e9)
    window["end"] = time.perf_counter() + warmup_s + duration_s
    barrier.wait()
    for thread in threads:
        thread.join()
    merged = np.concatenate([np.asarray(x, dtype=np.int64) for x in latencies])
    if merged.size == 0:
        return Result(RAW, concurrency, error="no inferences completed")
    return Result(
        RAW,
        concurrency,
        throughput=merged.size / duration_s,
        p50_us=float(np.percentile(merged, 50)) / 1e3,
        p99_us=float(np.percentile(merged, 99)) / 1e3,
        mean_us=float(merged.mean()) / 1e3,
    )


# --------------------------------------------------------------------------------------- perf_analyzer


def perf_command(
    pa: PerfAnalyzer, model: str, url: str, protocol: str, concurrency: int, csv_path: Path, s: PerfSettings
) -> list[str]:
    return [
        str(pa.path),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", "1",
        "--concurrency-range", str(concurrency),
        "--measurement-interval", str(s.measurement_interval_ms),
        "--stability-percentage", f"{s.stability_percentage:g}",
        "--max-trials", str(s.max_trials),
        "-f", str(csv_path),
        "--verbose-csv",
        *(["-v"] if s.server_stats else []),  # -v makes perf_analyzer fetch the server's model statistics
    ]  # fmt: skip


def parse_perf_csv(csv_path: Path, transport: str, concurrency: int) -> Result | None:
    """Throughput, p50/p99 client latency and server compute time (usec) from perf_analyzer's -f CSV."""
    row = perf_row(csv_path)
    if row is None:
        return None
    compute = [row.get(f"Server Compute {part}") for part in ("Input", "Infer", "Output")]
    return Result(
        transport,
        concurrency,
        throughput=row["Inferences/Second"],
        p50_us=row["p50 latency"],
        p99_us=row["p99 latency"],
        server_compute_us=sum(c for c in compute if c is not None) if all(compute) else None,
        mean_us=row.get("Avg latency") or None,
        queue_us=row.get("Server Queue") or None,
        input_us=compute[0] or None,
        infer_us=compute[1] or None,
        output_us=compute[2] or None,
    )


def success_count(endpoints: ServerEndpoints, model: str) -> int:
    """The model's successful requests so far, from the statistics extension (all versions)."""
    url = f"http://{endpoints.http_url}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.load(response)
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def _invoke(
    command: list[str], env: dict[str, str], timeout_s: float, log_path: Path
) -> tuple[bool, str, str]:
    """Run perf_analyzer; (succeeded, exit description, stdout+stderr), the output also saved to `log_path`."""
    print(f"[perf] {shlex.join(command)}", file=sys.stderr)
    try:
        proc = subprocess.run(command, env=env, capture_output=True, timeout=timeout_s, check=False)
        ok, rc, raw = proc.returncode == 0, f"rc={proc.returncode}", proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok, rc, raw = False, f"timeout after {timeout_s:g} s", (exc.stdout or b"") + (exc.stderr or b"")
    output = raw.decode(errors="replace")
    log_path.write_text(output)
    return ok, rc, output


def run_perf(
    pa: PerfAnalyzer,
    endpoints: ServerEndpoints,
    model: str,
    protocol: str,
    concurrency: int,
    out_dir: Path,
    settings: PerfSettings,
) -> Result:
    """One perf_analyzer run; when it never gets stable, one more with --stability-percentage 10000
    (no stability check)."""
    transport = f"kiln {protocol}"
    url = endpoints.http_url if protocol == "http" else endpoints.grpc_url
    csv_path = out_dir / f"perf_{protocol}_c{concurrency}.csv"
    log_path = out_dir / f"perf_{protocol}_c{concurrency}.log"
    command = perf_command(pa, model, url, protocol, concurrency, csv_path, settings)
    cpu_before = process_cpu_seconds(endpoints.pid) if endpoints.pid else None
    count_before = success_count(endpoints, model)
    ok, rc, output = _invoke(command, pa.env, settings.timeout_s, log_path)
    note = None
    if not ok and "Failed to obtain stable measurement" in output:
        note = (
            f"not stable within {settings.stability_percentage:g}% in {settings.max_trials} windows; "
            "re-measured with --stability-percentage 10000 (no stability check)"
        )
        print(f"[perf] {transport} c={concurrency}: {note}", file=sys.stderr)
        loose = dataclasses.replace(settings, stability_percentage=10000.0)
        command = perf_command(pa, model, url, protocol, concurrency, csv_path, loose)
        ok, rc, output = _invoke(command, pa.env, settings.timeout_s, log_path.with_suffix(".retry.log"))
    result = parse_perf_csv(csv_path, transport, concurrency) if ok else None
    if result is not None:
        requests = success_count(endpoints, model) - count_before
        cpu = None
        if cpu_before is not None and requests > 0:
            cpu = (process_cpu_seconds(endpoints.pid) - cpu_before) * 1e6 / requests
        breakdown = parse_server_breakdown(output) or {}
        return dataclasses.replace(
            result,
            note=note,
            cpu_us_per_request=cpu,
            server_request_us=breakdown.get("request"),
            server_overhead_us=breakdown.get("overhead"),
        )
    tail = output.strip().splitlines()[-8:]
    print(f"[perf] {transport} c={concurrency}: {rc}; see {log_path}:", *tail, sep="\n  ", file=sys.stderr)
    first_error = next((line for line in tail if "error" in line.lower()), tail[-1] if tail else "")
    return Result(transport, concurrency, error=f"perf_analyzer {rc}: {first_error.strip()}")


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def model_time_us(results: list[Result]) -> float | None:
    """The model's own time per inference: raw ORT's mean latency at the lowest concurrency measured."""
    raw = sorted(
        (r for r in results if r.transport == RAW and r.mean_us is not None), key=lambda r: r.concurrency
    )
    return raw[0].mean_us if raw else None


def non_model_us(r: Result, model_us: float | None) -> float | None:
    """Server-side time per request that is neither queueing nor the model itself:
    perf_analyzer's server request latency - queue - raw ORT's own time for the model."""
    if r.server_request_us is None or r.queue_us is None or model_us is None:
        return None
    return r.server_request_us - r.queue_us - model_us


def breakdown_table(results: list[Result]) -> str:
    """perf_analyzer's server-side breakdown per request (usec), the non-model time and server CPU/request."""
    model_us = model_time_us(results)
    lines = [
        "| transport | concurrency | server request | queue | compute input | compute infer | compute output "
        "| overhead | non-model time | server CPU / request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.transport == RAW or r.error:
            continue
        cells = [
            _fmt(v)
            for v in (
                r.server_request_us, r.queue_us, r.input_us, r.infer_us, r.output_us, r.server_overhead_us,
                non_model_us(r, model_us), r.cpu_us_per_request,
            )
        ]  # fmt: skip
        lines.append("| " + " | ".join([r.transport, str(r.concurrency), *cells]) + " |")
    return "\n".join(lines)


def verdict(results: list[Result], limit_us: float = 500.0) -> str:
    """Whether the server-side overhead per request is well under `limit_us` (half of it or less)."""
    model_us = model_time_us(results)
    served = [r for r in results if r.transport != RAW and not r.error]
    non_model = [v for v in (non_model_us(r, model_us) for r in served) if v is not None]
    cpu = [r.cpu_us_per_request for r in served if r.cpu_us_per_request is not None]
    if not non_model:
        return "No overhead verdict: it needs the raw ORT baseline (not --skip-raw) and the server breakdown (-v)."
    worst, worst_cpu = max(non_model), (max(cpu) if cpu else None)
    well_under = worst <= limit_us / 2
    text = (
        f"Server-side non-model time per request (server request latency - queue - raw ORT's "
        f"{model_us:.1f} us for the model): worst {worst:.0f} us over all rows, best {min(non_model):.0f} us. "
    )
    text += (
        f"Target (well under {limit_us:.0f} us): {'met' if well_under else 'NOT met'}"
        f"{'' if well_under else ' (more than half the budget)'}."
    )
    if worst_cpu is not None:
        text += (
            f" Server CPU per request, transport included (which the statistics do not see): "
            f"{min(cpu):.0f}-{worst_cpu:.0f} us."
        )
    return text


def markdown_table(results: list[Result]) -> str:
    """Rows transport x concurrency; Kiln/raw compares throughput with raw ORT at the same concurrency."""
    raw = {r.concurrency: r.throughput for r in results if r.transport == RAW}
    lines = [
        "| transport | concurrency | throughput (infer/s) | p50 (us) | p99 (us) | Kiln/raw throughput "
        "| server compute (avg us) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for r in results:
        if r.error:
            cells = [f"failed: {r.error.replace('|', '/')}", "-", "-", "-", "-"]
        else:
            base = raw.get(r.concurrency)
            ratio = (
                "-"
                if r.transport == RAW or not base or r.throughput is None
                else f"{r.throughput / base:.3f}"
            )
            cells = [
                _fmt(r.throughput),
                _fmt(r.p50_us, 1),
                _fmt(r.p99_us, 1),
                ratio,
                _fmt(r.server_compute_us),
            ]
        if r.note:
            notes.append(f"[{len(notes) + 1}] {r.transport} c={r.concurrency}: {r.note}")
            cells[0] += f" [{len(notes)}]"
        lines.append("| " + " | ".join([r.transport, str(r.concurrency), *cells]) + " |")
    return "\n".join([*lines, *(["", *notes] if notes else [])])


def report(results: list[Result]) -> str:
    return "\n\n".join(
        [
            markdown_table(results),
            "Server-side breakdown per request (us; perf_analyzer -v, from the server's statistics):",
            breakdown_table(results),
            verdict(results),
        ]
    )


def write_markdown(
    path: Path, table: str, args: argparse.Namespace, repo_source: str, settings: PerfSettings, load: str
) -> None:
    import onnxruntime as ort

    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
    intra = args.ort_intra_op_threads or "ORT default"
    text = f"""# Kiln serving overhead

- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
- machine: {machine_description()}
- command: `{command}`
- model: `{args.model}` ({repo_source}), batch 1; onnxruntime {ort.__version__}
- raw ORT: closed loop, one shared InferenceSession (intra_op_num_threads={intra}), N Python threads, \
{args.ort_duration:g} s per concurrency
- perf_analyzer: --measurement-interval {settings.measurement_interval_ms} ms, --stability-percentage \
{settings.stability_percentage:g}, --max-trials {settings.max_trials}, no --shape hints; p50/p99 are client-side
- server compute: perf_analyzer's server-side average (compute input + infer + output, from the model's statistics)
- breakdown: perf_analyzer -v's `Avg request latency (overhead + queue + compute input + compute infer + compute \
output)`; the server measures from the request entering its data plane to the response leaving it, so HTTP/gRPC \
parsing and writing are not in it. non-model time = request - queue - raw ORT's own time for the model (the \
lowest-concurrency raw ORT mean). Server CPU / request = the server process's CPU time during the run / the \
requests it answered (perf_analyzer's warm-up included), which does cover the transports.
- load: {load}
- nproc cores are shared by perf_analyzer and the server (and, before them, the raw ORT loop)

{table}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, help="serve this repository instead of building one")
    parser.add_argument(
        "--repository-source",
        choices=("auto", "examples", "builtin"),
        default="auto",
        help="without --model-repository: `python -m kiln.examples` (falling back to builtin when auto)",
    )
    parser.add_argument("--model", default="add_sub")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], metavar="N")
    parser.add_argument("--protocols", nargs="+", choices=("http", "grpc"), default=["http", "grpc"])
    parser.add_argument("--ort-duration", type=float, default=5.0, help="seconds per raw ORT measurement")
    parser.add_argument(
        "--ort-intra-op-threads", type=int, default=0, help="raw ORT intra_op_num_threads (0: ORT default)"
    )
    parser.add_argument("--measurement-interval", type=int, default=2000, help="perf_analyzer window (ms)")
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument(
        "--perf-timeout", type=float, default=90.0, help="hard limit per perf_analyzer run (s)"
    )
    parser.add_argument(
        "--no-server-stats",
        action="store_true",
        help="do not pass -v (perf_analyzer then skips the server's model statistics)",
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for server ready")
    parser.add_argument("--skip-raw", action="store_true", help="do not run the raw ORT baseline")
    parser.add_argument(
        "--out-dir", type=Path, help="perf_analyzer CSVs/logs and server log (default bench/results/<time>)"
    )
    parser.add_argument("--markdown-out", type=Path, help="write table + command + date + machine here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (args.out_dir or REPO_ROOT / "bench" / "results" / f"serving_overhead-{stamp}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = PerfSettings(
        args.measurement_interval,
        args.stability_percentage,
        args.max_trials,
        args.perf_timeout,
        server_stats=not args.no_server_stats,
    )
    pa = perf_analyzer()
    results: list[Result] = []
    load = load_note()
    print(f"[load] {load}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        repository, repo_source = prepare_repository(args, Path(tmp))
        print(f"[repo] {repository} ({repo_source})", file=sys.stderr)
        if not args.skip_raw:
            model_path = latest_onnx_model(repository, args.model)
            for c in args.concurrency:
                print(f"[ort] raw ORT c={c} for {args.ort_duration:g} s", file=sys.stderr)
                results.append(run_raw_ort(model_path, c, args.ort_duration, 0.5, args.ort_intra_op_threads))
        server_log = out_dir / "server.log"
        try:
            with kiln_server(repository, server_log, args.ready_timeout) as endpoints:
                print(
                    f"[server] ready: http {endpoints.http_url}, grpc {endpoints.grpc_url}", file=sys.stderr
                )
                for protocol in args.protocols:
                    for c in args.concurrency:
                        results.append(run_perf(pa, endpoints, args.model, protocol, c, out_dir, settings))
        except (RuntimeError, TimeoutError) as exc:
            print(f"[server] {exc}", file=sys.stderr)
            results += [
                Result(f"kiln {p}", c, error="server not ready")
                for p in args.protocols
                for c in args.concurrency
            ]

    table = report(results)
    print(table)
    print(f"\n[out] perf_analyzer CSVs and logs, server log: {out_dir}", file=sys.stderr)
    if args.markdown_out is not None:
        write_markdown(args.markdown_out, table, args, repo_source, settings, load)
        print(f"[out] {args.markdown_out}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
