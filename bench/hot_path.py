"""HTTP and gRPC hot paths, before vs after a change: two Kiln servers from two source trees, in one run.

Two `python -m kiln serve` processes run at once on free 127.0.0.1 ports over the same generated add_sub
repository (bench/_common.py: FP32 [16] + [16], `max_batch_size: 8`, no batcher, the overhead bench's model):
  * before - the tree given by --baseline-src, first on the server's PYTHONPATH (e.g. a worktree of an older
    commit; the script checks that `import kiln` really comes from there);
  * after  - this checkout (the venv's editable install).
Each case (protocol x concurrency, batch-1 requests) is measured on both servers back to back, --rounds times;
the order flips every round (before/after, then after/before, ...), so drift and other processes' load hit both
alike. The load is perf_analyzer (after `bash bench/setup.sh`) or, when it is unavailable or with
`--load-generator loadgen`, bench/_loadgen.py (gRPC raw_input_contents, HTTP JSON). The table has the medians
over the rounds and the range of the per-round after/before ratios.

Usage:
  git worktree add /tmp/kiln-before 8f009bb
  .venv/bin/python bench/hot_path.py --baseline-src /tmp/kiln-before/src                      # ~5 min
  .venv/bin/python bench/hot_path.py --baseline-src /tmp/kiln-before/src --rounds 3 --measurement-interval 500
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from _common import (
    REPO_ROOT,
    PerfAnalyzer,
    ServerEndpoints,
    add_output_options,
    build_add_sub_repository,
    kiln_counts,
    kiln_server,
    load_note,
    machine_description,
    parse_server_breakdown,
    perf_analyzer,
    process_cpu_seconds,
    publish,
    results_dir,
    run_perf_analyzer,
    venv_python,
)
from _loadgen import run_load

MODEL = "add_sub"
BEFORE, AFTER = "before", "after"


@dataclasses.dataclass(frozen=True)
class Case:
    protocol: str
    concurrency: int


@dataclasses.dataclass(frozen=True)
class Side:
    name: str
    source: str  # where `import kiln` comes from, and its commit
    endpoints: ServerEndpoints


@dataclasses.dataclass(frozen=True)
class Load:
    generator: str  # "perf_analyzer" or "loadgen"
    pa: PerfAnalyzer | None
    interval_ms: int  # perf_analyzer window; loadgen: the measured seconds (interval_ms * windows)
    stability: float
    windows: int  # perf_analyzer --max-trials
    timeout_s: float
    warmup_s: float  # loadgen only (perf_analyzer's first windows are its warm-up)
    workdir: Path


@dataclasses.dataclass(frozen=True)
class Sample:
    case: Case
    side: str
    round: int
    throughput: float | None = None  # infer/s
    p50_us: float | None = None
    p99_us: float | None = None
    cpu_us: float | None = None  # server process CPU time per answered request (transport included)
    server_us: float | None = None  # perf_analyzer -v: server-side request latency (data plane only)
    error: str | None = None


# ---------------------------------------------------------------------------------------------- servers


def tree_source(env: dict[str, str], tree: Path) -> str:
    """Where the server's `import kiln` resolves under `env` (must be inside `tree`), and the tree's commit."""
    proc = subprocess.run(
        [str(venv_python()), "-c", "import kiln; print(kiln.__file__)"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    module = Path(proc.stdout.strip() or "?").resolve()
    if proc.returncode != 0 or not module.is_relative_to(tree.resolve()):
        raise SystemExit(
            f"`import kiln` resolves to {module}, not inside {tree}: {proc.stderr.strip()[-300:]}"
        )

    def git(*arguments: str) -> str:
        result = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(tree), *arguments],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = " + uncommitted changes" if git("status", "--porcelain", ".") else ""
    return f"{module.parent} ({commit}{dirty})"


def baseline_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@contextlib.contextmanager
def servers(args: argparse.Namespace, repository: Path, out_dir: Path) -> Iterator[dict[str, Side]]:
    """The before and after servers, started one after the other (each on its own free ports)."""
    trees = {
        BEFORE: (baseline_env(args.baseline_src), args.baseline_src),
        AFTER: (dict(os.environ), REPO_ROOT / "src"),
    }
    with contextlib.ExitStack() as stack:
        sides = {}
        for name, (env, tree) in trees.items():
            source = tree_source(env, tree)
            log = out_dir / f"server-{name}.log"
            endpoints = stack.enter_context(kiln_server(repository, log, args.ready_timeout, env=env))
            print(
                f"[server] {name}: {source}; http {endpoints.http_url}, grpc {endpoints.grpc_url}",
                file=sys.stderr,
            )
            sides[name] = Side(name, source, endpoints)
        yield sides


# ------------------------------------------------------------------------------------------- measuring


def _perf(load: Load, url: str, case: Case, prefix: Path) -> tuple[float, float, float, float | None]:
    """(infer/s, p50, p99, server request latency) of one perf_analyzer run."""
    assert load.pa is not None
    arguments = [
        "-m", MODEL, "-u", url, "-i", case.protocol, "-b", "1",
        "--concurrency-range", str(case.concurrency),
        "--measurement-interval", str(load.interval_ms),
        "--stability-percentage", f"{load.stability:g}",
        "--max-trials", str(load.windows),
        "-v",  # the server's statistics: its side of the latency
    ]  # fmt: skip
    row, output = run_perf_analyzer(load.pa, arguments, prefix, load.timeout_s)
    if row is None:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        raise RuntimeError(f"perf_analyzer failed: {lines[-1] if lines else 'no output'}")
    breakdown = parse_server_breakdown(output) or {}
    return row["Inferences/Second"], row["p50 latency"], row["p99 latency"], breakdown.get("request")


def _loadgen(load: Load, url: str, case: Case) -> tuple[float, float, float, float | None]:
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((1, 16), dtype=np.float32) for name in ("INPUT0", "INPUT1")}
    seconds = load.interval_ms * load.windows / 1e3
    result = run_load(
        url,
        case.protocol,
        MODEL,
        inputs,
        case.concurrency,
        seconds,
        load.warmup_s,
        load.workdir,
        python=str(venv_python()),
    )
    if result.errors or not result.requests:
        raise RuntimeError(f"{result.errors} errors, {result.requests} answers: {result.first_error}")
    return result.throughput, result.p50_us, result.p99_us, None


def measure(side: Side, case: Case, load: Load, round_: int, out_dir: Path) -> Sample:
    """One run of the load against one server, with the server's CPU time per request over it."""
    e = side.endpoints
    url = e.grpc_url if case.protocol == "grpc" else e.http_url
    print(f"[load] round {round_ + 1} {side.name} {case.protocol} c={case.concurrency}", file=sys.stderr)
    cpu_before, count_before = process_cpu_seconds(e.pid), kiln_counts(e.http_url, MODEL)[0]
    try:
        if load.generator == "perf_analyzer":
            prefix = out_dir / f"r{round_ + 1}_{side.name}_{case.protocol}_c{case.concurrency}"
            throughput, p50, p99, server = _perf(load, url, case, prefix)
        else:
            throughput, p50, p99, server = _loadgen(load, url, case)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"[load]   failed: {exc}", file=sys.stderr)
        return Sample(case, side.name, round_, error=str(exc).strip().splitlines()[-1][:200])
    requests = kiln_counts(e.http_url, MODEL)[0] - count_before
    cpu = (process_cpu_seconds(e.pid) - cpu_before) * 1e6 / requests if requests else None
    print(f"[load]   {throughput:,.0f}/s p50 {p50:,.0f} us p99 {p99:,.0f} us", file=sys.stderr)
    return Sample(case, side.name, round_, throughput, p50, p99, cpu, server)


def run_rounds(
    sides: dict[str, Side], cases: list[Case], load: Load, args: argparse.Namespace, out_dir: Path
) -> tuple[list[Sample], str]:
    """All rounds (order flipping every round), until done or --time-limit; (samples, how it ended)."""
    deadline = time.monotonic() + args.time_limit
    samples: list[Sample] = []
    for round_ in range(args.rounds):
        order = (BEFORE, AFTER) if round_ % 2 == 0 else (AFTER, BEFORE)
        for case in cases:
            if time.monotonic() >= deadline:
                return samples, f"stopped by --time-limit {args.time_limit:g} s in round {round_ + 1}"
            samples += [measure(sides[name], case, load, round_, out_dir) for name in order]
    return samples, f"{args.rounds} rounds"


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _median(samples: list[Sample], attribute: str) -> float | None:
    values = [getattr(s, attribute) for s in samples if getattr(s, attribute) is not None]
    return statistics.median(values) if values else None


def _ratio(after: float | None, before: float | None) -> str:
    return "-" if after is None or not before else f"{after / before:.3f}"


def _round_ratios(before: list[Sample], after: list[Sample]) -> str:
    """min-max of the per-round after/before throughput ratios."""
    by_round = {s.round: s.throughput for s in before}
    ratios = [s.throughput / by_round[s.round] for s in after if s.throughput and by_round.get(s.round)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(samples: list[Sample], cases: list[Case]) -> str:
    main = [
        "| protocol | concurrency | rounds | before infer/s | after infer/s | after/before | per-round ratios "
        "| before p50 (us) | after p50 (us) | before p99 (us) | after p99 (us) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cost = [
        "| protocol | concurrency | before CPU/req (us) | after CPU/req (us) | after/before "
        "| before server request (us) | after server request (us) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        ok = [s for s in samples if s.case == case and s.error is None]
        before = [s for s in ok if s.side == BEFORE]
        after = [s for s in ok if s.side == AFTER]
        b_tp, a_tp = _median(before, "throughput"), _median(after, "throughput")
        b_cpu, a_cpu = _median(before, "cpu_us"), _median(after, "cpu_us")
        latencies = [_fmt(_median(group, a)) for a in ("p50_us", "p99_us") for group in (before, after)]
        servers = [_fmt(_median(group, "server_us")) for group in (before, after)]
        head = [case.protocol, str(case.concurrency)]
        throughput = [_fmt(b_tp), _fmt(a_tp), _ratio(a_tp, b_tp), _round_ratios(before, after)]
        main.append(_row([*head, f"{len(before)}/{len(after)}", *throughput, *latencies]))
        cost.append(_row([*head, _fmt(b_cpu), _fmt(a_cpu), _ratio(a_cpu, b_cpu), *servers]))
    parts = ["\n".join(main), "Where the time goes (medians over the rounds):", "\n".join(cost)]
    failures = [
        f"- round {s.round + 1} {s.side} {s.case.protocol} c={s.case.concurrency}: {s.error}"
        for s in samples
        if s.error
    ]
    if failures:
        parts.append("Failed runs:\n" + "\n".join(failures))
    return "\n\n".join(parts)


def header(
    args: argparse.Namespace, sides: dict[str, Side], load: Load, ended: str, loads: tuple[str, str]
) -> str:
    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
    if load.generator == "perf_analyzer":
        how = (
            f"perf_analyzer -b 1 -v, --measurement-interval {load.interval_ms} ms, --stability-percentage "
            f"{load.stability:g}, --max-trials {load.windows}; p50/p99 client-side"
        )
    else:
        how = (
            f"bench/_loadgen.py, 2 processes, {load.warmup_s:g} s warm-up + "
            f"{load.interval_ms * load.windows / 1e3:g} s measured; gRPC raw_input_contents, HTTP JSON"
        )
    return f"""# Kiln hot path: before vs after

- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
- machine: {machine_description()}
- command: `{command}`
- before: {sides[BEFORE].source}
- after: {sides[AFTER].source}
- model: `{MODEL}` (bench/_common.py, no batcher), batch 1; both servers up for the whole run, one driven at a time
- load: {how}; {ended}, order before/after in odd rounds, after/before in even ones
- server CPU/req: server process CPU time over a run / requests it answered (warm-up included); server request:
  perf_analyzer -v's server-side request latency (data plane only, no HTTP/gRPC parsing)
- load average: at start {loads[0]}; at end {loads[1]}
"""


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", type=Path, required=True, help="the before tree's src/ directory")
    parser.add_argument("--protocols", nargs="+", choices=("http", "grpc"), default=["http", "grpc"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], metavar="N")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server (at least 3)")
    parser.add_argument(
        "--load-generator",
        choices=("auto", "perf_analyzer", "loadgen"),
        default="auto",
        help="auto: perf_analyzer when `bash bench/setup.sh` made it runnable",
    )
    parser.add_argument("--measurement-interval", type=int, default=2000, help="window (ms)")
    parser.add_argument(
        "--windows",
        type=int,
        default=3,
        help="perf_analyzer --max-trials; loadgen measures windows x interval",
    )
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10000.0,
        help="perf_analyzer's (default: no stability check; the rounds give the spread)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="loadgen warm-up seconds per run")
    parser.add_argument("--run-timeout", type=float, default=90.0, help="hard limit per load run (s)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1200.0,
        help="start no new before/after pair after this many seconds",
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for each server")
    add_output_options(parser, "hot_path")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if not (args.baseline_src / "kiln" / "__init__.py").exists():
        parser.error(f"{args.baseline_src} has no kiln/__init__.py (give the before tree's src/)")
    args.baseline_src = args.baseline_src.resolve()
    return args


def choose_load(args: argparse.Namespace, workdir: Path) -> Load:
    pa = None
    if args.load_generator != "loadgen":
        try:
            pa = perf_analyzer()
        except FileNotFoundError as exc:
            if args.load_generator == "perf_analyzer":
                raise SystemExit(str(exc)) from exc
            print(f"[load] perf_analyzer unavailable ({exc}); using bench/_loadgen.py", file=sys.stderr)
    return Load(
        "perf_analyzer" if pa else "loadgen",
        pa,
        args.measurement_interval,
        args.stability_percentage,
        args.windows,
        args.run_timeout,
        args.warmup,
        workdir,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = results_dir(args.out_dir, "hot_path")
    cases = [Case(p, c) for p in args.protocols for c in args.concurrency]
    load_start = load_note()
    print(f"[load] {load_start}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-hot-") as tmp:
        repository = build_add_sub_repository(Path(tmp) / "repository")
        load = choose_load(args, Path(tmp) / "inputs")
        with servers(args, repository, out_dir) as sides:
            samples, ended = run_rounds(sides, cases, load, args, out_dir)
    text = header(args, sides, load, ended, (load_start, load_note())) + "\n" + report(samples, cases)
    publish(text, args.markdown_out, out_dir)
    return 1 if any(s.error for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
