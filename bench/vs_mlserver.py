"""Kiln versus MLServer (the Python peer) on the same two models, driven by the same load generator.

Both servers run at once on free ports, each with the same ONNX files:
  * add_sub (tiny: OUTPUT0/1 = INPUT0 +/- INPUT1, FP32 [batch, 16]);
  * resnet18 (bench/_resnet.py, FP32 [batch, 3, 224, 224]).
Kiln serves add_sub with its example config (no batcher: microsecond executions run inline) and ResNet-18 with
dynamic batching (the config of bench/batching.py); MLServer (bench/.venv-mlserver, `bash bench/setup_peers.sh`)
serves both through bench/mlserver_runtime/onnx_runtime.py with its adaptive batching on (`max_batch_size`,
`max_batch_time` below). Both use the same ONNX Runtime session options (intra_op = nproc, inter_op = 1).

perf_analyzer cannot drive MLServer: it asks for Triton's model config first (gRPC ModelConfig / HTTP
/v2/models/{m}/config), which MLServer does not implement; the script tries once and records the error. So
both servers are driven by bench/_loadgen.py (closed loop, same pre-built request, same processes) - gRPC with
raw_input_contents, HTTP with JSON (MLServer has no binary-tensor extension). Each case runs Kiln and MLServer
back to back (the order alternating from case to case), so load from other processes hits both alike.

Usage (after `bash bench/setup.sh && bash bench/setup_peers.sh`):
  .venv/bin/python bench/vs_mlserver.py                           # ~4 min
  .venv/bin/python bench/vs_mlserver.py --markdown-out bench/results/vs_mlserver.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from _common import (
    REPO_ROOT,
    build_add_sub_repository,
    free_ports,
    kiln_server,
    load_note,
    machine_description,
    perf_analyzer,
    process_tree_cpu_seconds,
    stop_process,
    wait_ready,
)
from _loadgen import LoadResult, run_load
from _resnet import IMAGE_SHAPE, INPUT, resnet_config, write_resnet18

MLSERVER_VENV = REPO_ROOT / "bench" / ".venv-mlserver"
RUNTIME_DIR = REPO_ROOT / "bench" / "mlserver_runtime"
TINY, CLASSIFIER = "add_sub", "resnet18"


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    protocol: str
    concurrency: int


@dataclasses.dataclass(frozen=True)
class Row:
    case: Case
    server: str
    result: LoadResult | None
    cpu_us_per_request: float | None = None
    error: str | None = None


# ------------------------------------------------------------------------------------------ repositories


def build_repositories(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Kiln's Triton-layout repository and MLServer's model folder, with the same two ONNX files."""
    kiln_repo = build_add_sub_repository(root / "kiln")
    batching = (
        " ".join(f"preferred_batch_size: {p}" for p in args.preferred)
        + f" max_queue_delay_microseconds: {args.delay_us}"
    )
    resnet_onnx = root / "kiln" / CLASSIFIER / "1" / "model.onnx"
    write_resnet18(resnet_onnx)
    (root / "kiln" / CLASSIFIER / "config.pbtxt").write_text(
        resnet_config(CLASSIFIER, args.classifier_max_batch, batching)
    )

    ml_repo = root / "mlserver"
    for model, onnx_path, max_batch, max_time_us in (
        (TINY, kiln_repo / TINY / "1" / "model.onnx", args.tiny_max_batch, args.tiny_batch_time_us),
        (CLASSIFIER, resnet_onnx, args.classifier_max_batch, args.delay_us),
    ):
        (ml_repo / model).mkdir(parents=True)
        shutil.copyfile(onnx_path, ml_repo / model / "model.onnx")
        settings = {
            "name": model,
            "implementation": "onnx_runtime.OnnxRuntimeModel",
            "parameters": {"uri": "./model.onnx"},
            "max_batch_size": max_batch,
            "max_batch_time": max_time_us / 1e6,
        }
        (ml_repo / model / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return kiln_repo, ml_repo


# ---------------------------------------------------------------------------------------------- MLServer


@dataclasses.dataclass(frozen=True)
class MLServerEndpoints:
    http_url: str
    grpc_url: str
    pid: int


@contextlib.contextmanager
def mlserver(repo: Path, log: Path, args: argparse.Namespace, workers: int) -> Iterator[MLServerEndpoints]:
    """MLServer on free ports serving `repo` with `parallel_workers: workers` (0: inference in the server
    process; N: in N worker processes fed over IPC, MLServer's default being 1)."""
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} not found; run `bash bench/setup_peers.sh`")
    http_port, grpc_port, metrics_port = free_ports(3)
    settings = {
        "debug": False,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": workers,
        "metrics_dir": str(repo / ".metrics"),
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(RUNTIME_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(binary), "start", str(repo)], cwd=repo, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            for model in (TINY, CLASSIFIER):
                wait_ready(
                    f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", process, log, args.ready_timeout
                )
            yield MLServerEndpoints(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process.pid)
        finally:
            stop_process(process, grace_s=15)


def perf_analyzer_against_mlserver(endpoints: MLServerEndpoints, out_dir: Path) -> str:
    """Try perf_analyzer once against MLServer (gRPC and HTTP); the last error line of each."""
    pa = perf_analyzer()
    lines = []
    for protocol, url in (("grpc", endpoints.grpc_url), ("http", endpoints.http_url)):
        command = [str(pa.path), "-m", TINY, "-u", url, "-i", protocol, "-b", "1", "--concurrency-range", "1",
                   "--measurement-interval", "1000", "--max-trials", "3"]  # fmt: skip
        try:
            proc = subprocess.run(command, env=pa.env, capture_output=True, timeout=60, check=False)
            output = (proc.stdout + proc.stderr).decode(errors="replace")
            status = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            output, status = "", "timed out after 60 s"
        (out_dir / f"perf_analyzer_mlserver_{protocol}.log").write_text(output)
        last = [line.strip() for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        lines.append(f"{protocol}: {status}: `{last[0][:240]}`")
    return "; ".join(lines)


# ------------------------------------------------------------------------------------------------ running


def case_inputs(model: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if model == TINY:
        return {n: rng.random((1, 16), dtype=np.float32) for n in ("INPUT0", "INPUT1")}
    return {INPUT: rng.random((1, *IMAGE_SHAPE), dtype=np.float32)}


def measure(server: str, url: str, pid: int, case: Case, args: argparse.Namespace, workdir: Path) -> Row:
    duration = args.classifier_seconds if case.model == CLASSIFIER else args.seconds
    print(
        f"[load] {server} {case.model} {case.protocol} c={case.concurrency} for {duration:g} s",
        file=sys.stderr,
    )
    cpu_before = process_tree_cpu_seconds(pid)
    try:
        result = run_load(
            url, case.protocol, case.model, case_inputs(case.model), case.concurrency, duration, args.warmup,
            workdir, processes=args.client_processes,
        )  # fmt: skip
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return Row(case, server, None, error=str(e).strip().splitlines()[-1][:200])
    cpu = process_tree_cpu_seconds(pid) - cpu_before
    # CPU over warm-up + window, requests over the window only: scale the requests to the whole time
    requests = result.throughput * (duration + args.warmup + 2.0)
    print(
        f"[load]   {result.throughput:,.1f}/s p50 {result.p50_us:,.0f} us p99 {result.p99_us:,.0f} us "
        f"errors {result.errors}",
        file=sys.stderr,
    )
    return Row(case, server, result, cpu_us_per_request=cpu * 1e6 / requests if requests else None)


def cases(args: argparse.Namespace) -> list[Case]:
    out = [Case(TINY, p, c) for p in args.tiny_protocols for c in args.tiny_concurrency]
    out += [Case(CLASSIFIER, p, args.classifier_concurrency) for p in args.classifier_protocols]
    return out


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def report(rows: list[Row], args: argparse.Namespace) -> tuple[str, list[str]]:
    lines = [
        "| model | protocol | concurrency | server | throughput (infer/s) | p50 (ms) | p99 (ms) | errors "
        "| server CPU / request (us) | Kiln / faster MLServer throughput | Kiln p99 <= its p99 |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for case in dict.fromkeys(r.case for r in rows):
        pair = {r.server: r for r in rows if r.case == case}
        kiln = pair.get("kiln")
        peers = [r for name, r in pair.items() if name != "kiln" and r.result and r.result.throughput]
        # the strongest MLServer configuration of this case is the one to beat
        peer = max(peers, key=lambda r: r.result.throughput) if peers else None  # type: ignore[union-attr]
        ratio, p99_ok = "-", "-"
        if kiln and peer and kiln.result and peer.result and peer.result.throughput:
            r = kiln.result.throughput / peer.result.throughput
            ratio = f"{r:.2f}x"
            p99_ok = "yes" if kiln.result.p99_us <= peer.result.p99_us else "no"
            target = 2.0 if case.model == TINY else 1.0
            met = r >= target and p99_ok == "yes"
            verdicts.append(
                f"- {case.model} {case.protocol} c={case.concurrency}: Kiln {r:.2f}x the throughput of "
                f"{peer.server} (the faster MLServer set-up) "
                f"(target >= {target:g}x), p99 {kiln.result.p99_us / 1e3:.2f} vs {peer.result.p99_us / 1e3:.2f} ms: "
                f"**{'met' if met else 'NOT met'}**"
            )
        for name in pair:
            row = pair.get(name)
            if row is None:
                continue
            if row.result is None:
                lines.append(f"| {case.model} | {case.protocol} | {case.concurrency} | {name} | failed: {row.error} |"
                             + " - |" * 6)  # fmt: skip
                continue
            res = row.result
            cells = [
                _fmt(res.throughput, 1), _fmt(res.p50_us / 1e3, 2), _fmt(res.p99_us / 1e3, 2), str(res.errors),
                _fmt(row.cpu_us_per_request), ratio if name == "kiln" else "", p99_ok if name == "kiln" else "",
            ]  # fmt: skip
            lines.append(
                f"| {case.model} | {case.protocol} | {case.concurrency} | {name} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines), verdicts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny-protocols", nargs="+", choices=("grpc", "http"), default=["grpc", "http"])
    parser.add_argument("--tiny-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--classifier-protocols", nargs="*", choices=("grpc", "http"), default=["grpc"])
    parser.add_argument("--classifier-concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="measurement window per tiny-model run")
    parser.add_argument("--classifier-seconds", type=float, default=10.0, help="window per classifier run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each window")
    parser.add_argument("--client-processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--tiny-max-batch", type=int, default=8, help="MLServer max_batch_size for add_sub")
    parser.add_argument(
        "--tiny-batch-time-us", type=int, default=500, help="MLServer max_batch_time for add_sub"
    )
    parser.add_argument("--classifier-max-batch", type=int, default=16)
    parser.add_argument(
        "--preferred", type=int, nargs="*", default=[4, 8, 16], help="Kiln preferred_batch_size"
    )
    parser.add_argument(
        "--delay-us", type=int, default=2000,
        help="Kiln max_queue_delay_microseconds and MLServer max_batch_time for the classifier",
    )  # fmt: skip
    parser.add_argument(
        "--mlserver-workers", type=int, nargs="+", default=[1, 0],
        help="one MLServer per value of parallel_workers (1 is its default; 0 runs inference in-process)",
    )  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--markdown-out", type=Path)
    return parser.parse_args(argv)


def mlserver_version() -> str:
    proc = subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), "-c", "import mlserver, onnxruntime; "
         "print(mlserver.__version__, onnxruntime.__version__)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (args.out_dir or REPO_ROOT / "bench" / "results" / f"vs_mlserver-{stamp}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    load_start = load_note()
    print(f"[load] {load_start}", file=sys.stderr)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-vs-") as tmp:
        kiln_repo, ml_repo = build_repositories(Path(tmp), args)
        with (
            kiln_server(kiln_repo, out_dir / "kiln.log", args.ready_timeout) as kiln,
            contextlib.ExitStack() as stack,
        ):
            peers = {}
            for workers in args.mlserver_workers:
                repo = ml_repo.with_name(f"mlserver-w{workers}")
                shutil.copytree(ml_repo, repo)
                log = out_dir / f"mlserver-w{workers}.log"
                peers[f"mlserver w={workers}"] = stack.enter_context(mlserver(repo, log, args, workers))
            pa_note = perf_analyzer_against_mlserver(next(iter(peers.values())), out_dir)
            print(f"[perf_analyzer vs MLServer] {pa_note}", file=sys.stderr)
            for i, case in enumerate(cases(args)):
                targets = [("kiln", kiln.grpc_url if case.protocol == "grpc" else kiln.http_url, kiln.pid)]
                targets += [
                    (name, peer.grpc_url if case.protocol == "grpc" else peer.http_url, peer.pid)
                    for name, peer in peers.items()
                ]
                shift = i % len(targets)  # rotate the order from case to case
                for server, url, pid in targets[shift:] + targets[:shift]:
                    rows.append(measure(server, url, pid, case, args, Path(tmp) / "inputs"))
    load_end = load_note()
    table, verdicts = report(rows, args)
    print(table)
    print("\n".join(verdicts))
    if args.markdown_out is not None:
        command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
        text = f"""# Kiln versus MLServer

- date: {started.isoformat(timespec="seconds")}
- machine: {machine_description()}
- command: `{command}`
- load: at start {load_start}; at end {load_end}
- Kiln: onnxruntime {ort.__version__}; add_sub with its example config (no batcher), resnet18 with
  `dynamic_batching {{ {" ".join(f"preferred_batch_size: {p}" for p in args.preferred)} \
max_queue_delay_microseconds: {args.delay_us} }}`, `max_batch_size: {args.classifier_max_batch}`
- MLServer (mlserver, onnxruntime): {mlserver_version()}; bench/mlserver_runtime/onnx_runtime.py; adaptive batching
  add_sub `max_batch_size: {args.tiny_max_batch}, max_batch_time: {args.tiny_batch_time_us / 1e6:g}`, resnet18
  `max_batch_size: {args.classifier_max_batch}, max_batch_time: {args.delay_us / 1e6:g}`; `debug: false`; one
  MLServer per `parallel_workers` value in {args.mlserver_workers} (`w=1`, its default: inference in a worker
  process fed over IPC; `w=0`: inference in the server process), all running at once; each Kiln ratio is against
  the faster MLServer of that case
- perf_analyzer against MLServer: {pa_note}
- load generator: bench/_loadgen.py, {args.client_processes} processes, closed loop, {args.warmup:g} s warm-up, then
  {args.seconds:g} s (add_sub) / {args.classifier_seconds:g} s (resnet18) measured; gRPC with raw_input_contents,
  HTTP with JSON; Kiln and MLServer back to back per case, order alternating
- server CPU / request: the server's process tree CPU time over the run / the requests answered

{table}

{chr(10).join(verdicts)}
"""
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(text)
        print(f"[out] {args.markdown_out}", file=sys.stderr)
    print(f"[out] {out_dir}", file=sys.stderr)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
