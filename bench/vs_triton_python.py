"""Kiln's Python backend versus real Triton 2.51 on the same model.py files, side by side, in one run.

The script writes a Triton-layout repository of Python-backend models (`backend: "python"`, `1/model.py` with
`TritonPythonModel`, `import triton_python_backend_utils as pb_utils`):
  * add_sub - OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [4], `max_batch_size: 0`;
  * blank   - OUTPUT0 = INPUT0 (FP32 [4]): what the server itself costs per request;
and serves it with real Triton (`tritonserver` from the nvidia-pytriton wheel, CPU, its Python backend; `bash
bench/setup_triton.sh`) and with `kiln serve`, both on free 127.0.0.1 ports, both up for the whole run. Kiln also
serves a second repository that Triton's wheel cannot (it has no ONNX Runtime backend): add_sub_onnx
(bench/_common.py's ONNX add_sub, FP32 [-1, 16]) and bls_add_sub, a Python model that forwards each request to it
through `pb_utils.InferenceRequest(...).exec()`, and add_sub_process: add_sub's model.py with `parameters { key:
"KILN_ISOLATION" value: { string_value: "process" } }` (one worker process per instance, as Triton's stub).

Measured, perf_analyzer -b 1 -v (it reads each model's metadata and config itself), rounds alternating the order
(Kiln/Triton, then Triton/Kiln, ...):
  1. add_sub over HTTP and gRPC at concurrency 1 and 8, Kiln in both isolation modes (add_sub in-process,
     add_sub_process) against Triton: infer/s, Kiln/Triton, client p50/p99, server CPU/request;
  2. blank: the server-side request latency (perf_analyzer -v: the statistics extension's average) and its p50/p99
     from both servers' `nv_inference_request_summary_us` (`--metrics-config summary_latencies=true`);
  3. Kiln only: bls_add_sub (BLS -> ONNX) against add_sub_onnx called directly: the latency BLS adds;
  4. cold start: process start -> /v2/models/<model>/ready answers 200, a repository of one model alone (Kiln:
     add_sub, then add_sub_process; Triton: add_sub), median of 3;
  5. memory of those fresh servers after one warm-up request: RSS and PSS of the server process and of its child
     processes (Kiln's worker in process mode, Triton's triton_python_backend_stub), median of 3.

Usage (after `bash bench/setup.sh && bash bench/setup_triton.sh`):
  .venv/bin/python bench/vs_triton_python.py                                        # ~8 min
  .venv/bin/python bench/vs_triton_python.py --rounds 3 --markdown-out bench/results/vs_triton_python.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import (
    REPO_ROOT,
    PerfAnalyzer,
    ServerEndpoints,
    add_output_options,
    free_ports,
    get_json,
    kiln_command,
    kiln_counts,
    load_note,
    machine_description,
    parse_server_breakdown,
    perf_analyzer,
    process_tree_cpu_seconds,
    process_tree_memory,
    publish,
    results_dir,
    rss_by_file,
    run_perf_analyzer,
    running_server,
    venv_python,
)
from _python_models import (
    ADD_SUB,
    ADD_SUB_PROCESS,
    BLANK,
    BLS,
    DIMS,
    ONNX,
    Repositories,
    build_repositories,
    check_outputs,
)
from _triton import Triton, add_triton_options
from _vs_triton_tables import (
    KILN,
    TRITON,
    Case,
    FreshRun,
    Sample,
    blank_table,
    bls_table,
    fresh_sections,
    versus_table,
)

SUMMARIES = ("--metrics-config", "summary_latencies=true")
SUMMARY_WINDOW_S = 60.0  # both servers' summaries: quantiles over the last 60 s

# --------------------------------------------------------------------------------------------- servers


@dataclasses.dataclass(frozen=True)
class Launch:
    """How to start one server: its command on given ports, and its environment."""

    name: str
    command: Callable[[ServerEndpoints], list[str]]
    env: dict[str, str] | None = None


def launches(triton: Triton, repository: Path, kiln_also: Path | None = None) -> dict[str, Launch]:
    """Kiln and Triton serving `repository`; Kiln also `kiln_also` (models Triton's wheel cannot serve)."""
    kiln_args = [*(["--model-repository", str(kiln_also)] if kiln_also else []), *SUMMARIES]
    return {
        KILN: Launch(KILN, lambda e: kiln_command(repository, e, kiln_args)),
        TRITON: Launch(TRITON, lambda e: triton.command(repository, e, SUMMARIES), triton.env()),
    }


@contextlib.contextmanager
def serve(launch: Launch, log: Path, ready_timeout_s: float) -> Iterator[ServerEndpoints]:
    endpoints = ServerEndpoints(*free_ports(3))
    ready = f"http://{endpoints.http_url}/v2/health/ready"
    with running_server(launch.command(endpoints), log, ready, ready_timeout_s, launch.env) as process:
        yield dataclasses.replace(endpoints, pid=process.pid)


@dataclasses.dataclass(frozen=True)
class Fresh:
    """A server started from nothing on a repository of `model` alone: its cold start, then its memory."""

    label: str
    launch: Launch
    model: str


def fresh_servers(triton: Triton, repos: Repositories) -> list[Fresh]:
    alone, process_alone = launches(triton, repos.cold), launches(triton, repos.cold_process)
    return [
        Fresh("Kiln in-process", alone[KILN], ADD_SUB),
        Fresh("Kiln process", process_alone[KILN], ADD_SUB_PROCESS),
        Fresh("Triton", alone[TRITON], ADD_SUB),
    ]


def fresh_start(fresh: Fresh, log: Path, timeout_s: float) -> FreshRun:
    """Seconds from starting the process to /v2/models/<model>/ready answering 200 (polled every 10 ms); then one
    warm-up request (its outputs checked) and the memory of the server's process tree."""
    endpoints = ServerEndpoints(*free_ports(3))
    ready = f"http://{endpoints.http_url}/v2/models/{fresh.model}/ready"
    command, env = fresh.launch.command(endpoints), fresh.launch.env
    started = time.monotonic()
    with running_server(command, log, ready, timeout_s, env, poll_s=0.01) as process:
        seconds = time.monotonic() - started
        check = check_outputs(endpoints.http_url, [fresh.model])
        if check != "ok":
            raise RuntimeError(f"warm-up request failed: {check}")
        memory = process_tree_memory(process.pid)
        return FreshRun(seconds, memory, [rss_by_file(m.pid) for m in memory])


# ------------------------------------------------------------------------------------- correctness


def config_differences(kiln_url: str, triton_url: str, model: str) -> list[str]:
    """Top-level fields of /v2/models/{model}/config where Kiln's answer is not Triton's."""
    kiln, triton = (get_json(f"http://{url}/v2/models/{model}/config") for url in (kiln_url, triton_url))
    assert isinstance(kiln, dict) and isinstance(triton, dict)
    out = []
    for key in sorted(set(kiln) | set(triton)):
        if kiln.get(key) != triton.get(key):
            show = (json.dumps(kiln.get(key, "<absent>")), json.dumps(triton.get(key, "<absent>")))
            out.append(f"`{key}`: Kiln {show[0][:160]}, Triton {show[1][:160]}")
    return out


# ------------------------------------------------------------------------------------------ measuring


@dataclasses.dataclass(frozen=True)
class Load:
    pa: PerfAnalyzer
    interval_ms: int
    windows: int
    timeout_s: float
    out_dir: Path


def measure(
    load: Load, server: str, endpoints: ServerEndpoints, case: Case, round_: int, logs: Path
) -> Sample:
    url = endpoints.grpc_url if case.protocol == "grpc" else endpoints.http_url
    print(f"[load] round {round_ + 1} {server} {case}", file=sys.stderr)
    cpu, count = process_tree_cpu_seconds(endpoints.pid), kiln_counts(endpoints.http_url, case.model)[0]
    arguments = [
        "-m", case.model, "-u", url, "-i", case.protocol, "-b", "1",
        "--concurrency-range", str(case.concurrency),
        "--measurement-interval", str(load.interval_ms),
        "--stability-percentage", "10000",  # no stability check: the rounds give the spread
        "--max-trials", str(load.windows),
        "-v",
    ]  # fmt: skip
    prefix = load.out_dir / f"r{round_ + 1}_{server}_{case.model}_{case.protocol}_c{case.concurrency}"
    row, output = run_perf_analyzer(load.pa, arguments, prefix, load.timeout_s)
    if row is None:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        tail = "\n  ".join(logs.read_text(errors="replace").splitlines()[-8:]) if logs.exists() else ""
        print(f"[load]   failed; {logs.name} ends:\n  {tail}", file=sys.stderr)
        return Sample(case, server, round_, error=(lines[-1] if lines else "no output")[:240])
    answered = kiln_counts(endpoints.http_url, case.model)[0] - count
    cpu_us = (process_tree_cpu_seconds(endpoints.pid) - cpu) * 1e6 / answered if answered else None
    print(f"[load]   {row['Inferences/Second']:,.0f}/s p99 {row['p99 latency']:,.0f} us", file=sys.stderr)
    return Sample(
        case, server, round_, row["Inferences/Second"], row["p50 latency"], row["p99 latency"],
        parse_server_breakdown(output), cpu_us,
    )  # fmt: skip


def summary_quantiles(metrics_port: int, model: str) -> dict[str, float]:
    """p50/p99 of nv_inference_request_summary_us for `model` (both servers' Triton-style summaries)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for labels, value in re.findall(r"^nv_inference_request_summary_us\{([^}]*)\} (\S+)$", text, re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("model") == model and fields.get("quantile") in ("0.5", "0.99"):
            out["p" + str(round(float(fields["quantile"]) * 100))] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class Run:
    samples: list[Sample] = dataclasses.field(default_factory=list)
    checks: dict[str, str] = dataclasses.field(default_factory=dict)
    config_diff: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    fresh: dict[str, list[FreshRun]] = dataclasses.field(default_factory=dict)  # by Fresh.label
    fresh_errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    ended: str = ""


def run_rounds(
    run: Run, servers: dict[str, ServerEndpoints], load: Load, args: argparse.Namespace, deadline: float
) -> None:
    """All rounds: Kiln (add_sub also as add_sub_process) and Triton on the shared models, the order reversed every
    other round, then Kiln's BLS pair."""
    shared = [*versus_cases(args), blank_case(args)]
    blank_started: dict[str, float] = {}
    for round_ in range(args.rounds):
        forward = round_ % 2 == 0
        pairs = [pair for case in shared for pair in (targets(case) if forward else targets(case)[::-1])]
        pairs += [(c, KILN) for c in (bls_cases(args) if forward else bls_cases(args)[::-1])]
        for case, server in pairs:
            if time.monotonic() >= deadline:
                run.ended = f"stopped by --time-limit {args.time_limit:g} s in round {round_ + 1}"
                return
            started = time.monotonic()
            sample = measure(load, server, servers[server], case, round_, load.out_dir / f"{server}.log")
            if case.model == BLANK and sample.error is None:
                # the summaries' window is the last 60 s: this run alone when the previous one began before
                if started - blank_started.get(server, -SUMMARY_WINDOW_S) < SUMMARY_WINDOW_S:
                    run.notes.append(
                        f"round {round_ + 1} {server}: the blank p50/p99 window includes the run before"
                    )
                quantiles = summary_quantiles(servers[server].metrics_port, BLANK)
                sample = dataclasses.replace(sample, summary_us=quantiles)
                blank_started[server] = started
            run.samples.append(sample)
    run.ended = f"{args.rounds} rounds"


def targets(case: Case) -> list[tuple[Case, str]]:
    """(case, server) pairs measuring `case`: Kiln, for add_sub also Kiln's add_sub_process, then Triton."""
    process = [(dataclasses.replace(case, model=ADD_SUB_PROCESS), KILN)] if case.model == ADD_SUB else []
    return [(case, KILN), *process, (case, TRITON)]


def versus_cases(args: argparse.Namespace) -> list[Case]:
    return [Case(ADD_SUB, p, c) for p in args.protocols for c in args.concurrency]


def blank_case(args: argparse.Namespace) -> Case:
    return Case(BLANK, args.blank_protocol, 1)


def bls_cases(args: argparse.Namespace) -> list[Case]:
    return [Case(m, p, 1) for p in args.protocols for m in (ONNX, BLS)]


def server_version(http_url: str) -> str:
    meta = get_json(f"http://{http_url}/v2")
    assert isinstance(meta, dict)
    return f"{meta.get('name')} {meta.get('version')}"


def measure_all(run: Run, launch: dict[str, Launch], args: argparse.Namespace, out_dir: Path) -> None:
    deadline = time.monotonic() + args.time_limit
    load = Load(perf_analyzer(), args.measurement_interval, args.windows, args.run_timeout, out_dir)
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in (KILN, TRITON):
            servers[name] = stack.enter_context(
                serve(launch[name], out_dir / f"{name}.log", args.ready_timeout)
            )
            run.versions[name] = server_version(servers[name].http_url)
            print(f"[server] {run.versions[name]}: http {servers[name].http_url}", file=sys.stderr)
        run.checks = {
            KILN: check_outputs(servers[KILN].http_url, [ADD_SUB, ADD_SUB_PROCESS, BLANK, ONNX, BLS]),
            TRITON: check_outputs(servers[TRITON].http_url, [ADD_SUB, BLANK]),
        }
        print(f"[check] outputs {run.checks}", file=sys.stderr)
        run.config_diff = config_differences(servers[KILN].http_url, servers[TRITON].http_url, ADD_SUB)
        run_rounds(run, servers, load, args, deadline)


def measure_fresh_starts(run: Run, servers: list[Fresh], args: argparse.Namespace, out_dir: Path) -> None:
    """`--cold-runs` fresh starts of each server (order reversed every other run), none begun after
    `--fresh-time-limit` seconds."""
    deadline = time.monotonic() + args.fresh_time_limit
    run.fresh = {fresh.label: [] for fresh in servers}
    for i in range(args.cold_runs):
        for fresh in servers if i % 2 == 0 else servers[::-1]:
            if time.monotonic() >= deadline:
                run.fresh_errors.append(f"{fresh.label} run {i + 1}: not started, --fresh-time-limit reached")
                continue
            slug = fresh.label.lower().replace(" ", "-")
            try:
                result = fresh_start(fresh, out_dir / f"cold-{slug}-{i + 1}.log", args.cold_timeout)
            except (RuntimeError, TimeoutError, OSError) as exc:
                run.fresh_errors.append(f"{fresh.label} run {i + 1}: {str(exc).splitlines()[0]}")
                continue
            run.fresh[fresh.label].append(result)
            total = sum(m.rss_mib for m in result.memory)
            print(
                f"[fresh] {fresh.label} run {i + 1}: {result.seconds:.2f} s, RSS {total:.0f} MiB",
                file=sys.stderr,
            )


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocols", nargs="+", choices=("http", "grpc"), default=["http", "grpc"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], metavar="N")
    parser.add_argument("--blank-protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every case (at least 3)")
    parser.add_argument("--measurement-interval", type=int, default=1500, help="perf_analyzer window (ms)")
    parser.add_argument("--windows", type=int, default=3, help="perf_analyzer --max-trials")
    parser.add_argument(
        "--run-timeout", type=float, default=60.0, help="hard limit per perf_analyzer run (s)"
    )
    parser.add_argument(
        "--cold-runs", type=int, default=3, help="fresh starts (cold start, memory) per server"
    )
    parser.add_argument("--cold-timeout", type=float, default=30.0, help="limit per fresh start (s)")
    parser.add_argument(
        "--time-limit", type=float, default=480.0, help="no new perf_analyzer run after this (s)"
    )
    parser.add_argument(
        "--fresh-time-limit",
        type=float,
        default=90.0,
        help="no new fresh start after this (s, from their first)",
    )
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument(
        "--fresh-only", action="store_true", help="only the cold starts and memory (no perf_analyzer runs)"
    )
    add_triton_options(parser)
    add_output_options(parser, "vs_triton_python")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if args.windows < 3:
        parser.error("--windows must be at least 3 (perf_analyzer's stability check needs 3 windows)")
    return args


def python_versions(triton: Triton) -> str:
    kiln = subprocess.run(
        [str(venv_python()), "-c", "import sys, numpy; print(sys.version.split()[0], numpy.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys, numpy; print(sys.version.split()[0], numpy.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    return (
        f"Kiln runs model.py in its server process (add_sub: in-process, the default) or in one worker process "
        f"per instance (add_sub_process: `KILN_ISOLATION` process, tensors >= 64 KiB through shared memory), "
        f"Python {' / numpy '.join(kiln)}; Triton in one triton_python_backend_stub process per instance (system "
        f"Python {' / numpy '.join(system)}), fed through shared memory"
    )


def report(run: Run, args: argparse.Namespace, triton: Triton, loads: tuple[str, str]) -> str:
    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
    blank = blank_case(args)
    diff = "\n".join(f"  - {d}" for d in run.config_diff) or "  - none"
    failures = [f"- round {s.round + 1} {s.server} {s.case}: {s.error}" for s in run.samples if s.error]
    parts = [
        f"""# Kiln's Python backend versus Triton {run.versions.get(TRITON, "?").split()[-1]}

- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
- machine: {machine_description()}
- command: `{command}`
- load average: at start {loads[0]}; at end {loads[1]}
- servers: {run.versions.get(KILN, "kiln ?")} (`kiln serve`), {run.versions.get(TRITON, "triton ?")} (`tritonserver`
  from nvidia-pytriton, `--backend-directory {triton.backends}`, CPU); both with `--metrics-config
  summary_latencies=true`, both up for the whole run, one driven at a time
- models: the same `model.py` + `config.pbtxt` files for both (`backend: "python"`, `max_batch_size: 0`, FP32 [{DIMS}],
  one KIND_CPU instance); {python_versions(triton)}
- outputs checked (one request each, numpy): Kiln {run.checks.get(KILN, "-")}; Triton {run.checks.get(TRITON, "-")}
- `/v2/models/add_sub/config`, fields where Kiln's answer differs from Triton's:
{diff}
- load: perf_analyzer -b 1 -v, --measurement-interval {args.measurement_interval} ms, --max-trials {args.windows}, no
  stability check; {run.ended}, order Kiln (add_sub, add_sub_process)/Triton in odd rounds, reversed in even ones;
  medians over the rounds; p50/p99 client-side; CPU/req: the server's process tree (Kiln process mode: with its
  worker; Triton: with its stub) CPU time / requests answered
""",
        "## add_sub: Kiln (both isolation modes) versus Triton\n\n"
        + versus_table(run.samples, versus_cases(args))
        + "\n\nKiln in-process: add_sub; Kiln process: add_sub_process (same model.py, `KILN_ISOLATION` process), "
        "both served by the same Kiln server; Triton: add_sub. Kiln/Triton and the per-round ratios are against "
        "Triton's add_sub in the same round.",
        f"## Server-side overhead: the blank model ({blank.protocol}, concurrency 1)\n\n"
        + blank_table(run.samples, blank)
        + ("\n\n" + "\n".join(f"- {n}" for n in run.notes) if run.notes else "")
        + "\n\nserver request avg and its parts: perf_analyzer -v (the statistics extension, averages per run); "
        "p50/p99: both servers' `nv_inference_request_summary_us`, scraped right after each run (a sliding window "
        "of the last 60 s on both, so that run alone; Kiln keeps at most its last 10,000 requests), medians.",
        "## Kiln: BLS (bls_add_sub -> add_sub_onnx) versus add_sub_onnx directly\n\n"
        + bls_table(run.samples, bls_cases(args)),
        fresh_sections(run.fresh, run.fresh_errors),
    ]
    if failures:
        parts.append("## Failed runs\n\n" + "\n".join(failures))
    return "\n\n".join(parts) + "\n"


def compile_kiln() -> None:
    """Kiln's bytecode written beforehand, as `make setup` and a wheel install do: with PYTHONDONTWRITEBYTECODE=1
    (this machine's environment) an editable install would compile every module again on each start."""
    subprocess.run(
        [str(venv_python()), "-m", "compileall", "-q", str(REPO_ROOT / "src" / "kiln")], check=True
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    triton = Triton.find(args.triton_venv, args.triton_backends)
    out_dir = results_dir(args.out_dir, "vs_triton_python")
    load_start = load_note()
    print(f"[load] {load_start}", file=sys.stderr)
    run = Run()
    compile_kiln()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-vs-triton-") as tmp:
        repos = build_repositories(Path(tmp))
        if not args.fresh_only:
            measure_all(run, launches(triton, repos.shared, repos.kiln_only), args, out_dir)
        measure_fresh_starts(run, fresh_servers(triton, repos), args, out_dir)
    text = report(run, args, triton, (load_start, load_note()))
    publish(text, args.markdown_out, out_dir)
    failed = (
        any(s.error for s in run.samples) or run.fresh_errors or any(v != "ok" for v in run.checks.values())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
