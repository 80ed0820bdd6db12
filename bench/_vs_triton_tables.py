"""The records and markdown tables of bench/vs_triton_python.py: samples of perf_analyzer runs, fresh-server
starts (cold start and memory), and the tables made of them (medians over the rounds)."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from _common import ProcessMemory
from _python_models import ADD_SUB, ADD_SUB_PROCESS, BLS, ONNX

KILN, TRITON = "kiln", "triton"
KILN_MODES = {ADD_SUB: "in-process", ADD_SUB_PROCESS: "process"}  # Kiln's model per isolation mode


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    protocol: str
    concurrency: int

    def __str__(self) -> str:
        return f"{self.model} {self.protocol} c={self.concurrency}"


@dataclasses.dataclass(frozen=True)
class Sample:
    case: Case
    server: str
    round: int
    throughput: float | None = None  # infer/s
    p50_us: float | None = None  # client side
    p99_us: float | None = None
    server_us: dict[str, float] | None = None  # perf_analyzer -v: request, queue, input, infer, output (avg)
    cpu_us: float | None = None  # server process tree CPU time / answered request
    summary_us: dict[str, float] | None = None  # blank: nv_inference_request_summary_us p50/p99 after the run
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class FreshRun:
    """One fresh server: seconds to the model's ready, then the memory of its processes after a warm-up."""

    seconds: float
    memory: list[ProcessMemory]  # the server process first, then its descendants
    resident: list[dict[str, float]]  # per process of `memory`: resident MiB per mapped file, largest first


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def _mid(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ok(samples: list[Sample], case: Case, server: str) -> list[Sample]:
    return [s for s in samples if s.case == case and s.server == server and s.error is None]


def _server(s: Sample, key: str) -> float | None:
    return s.server_us.get(key) if s.server_us else None


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def versus_table(samples: list[Sample], cases: list[Case]) -> str:
    """One row per case and Kiln isolation mode (Kiln's add_sub or add_sub_process against Triton's add_sub)."""
    rows = []
    for case, (model, mode) in ((c, m) for c in cases for m in KILN_MODES.items()):
        kiln, triton = _ok(samples, dataclasses.replace(case, model=model), KILN), _ok(samples, case, TRITON)
        k_tp, t_tp = _mid([s.throughput for s in kiln]), _mid([s.throughput for s in triton])
        by_round = {s.round: s.throughput for s in triton}
        ratios = [s.throughput / by_round[s.round] for s in kiln if s.throughput and by_round.get(s.round)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        cells = [
            _fmt(_mid([getattr(s, a) for s in group]))
            for a in ("p50_us", "p99_us")
            for group in (kiln, triton)
        ]
        cpu = [_fmt(_mid([s.cpu_us for s in group])) for group in (kiln, triton)]
        ratio = f"{k_tp / t_tp:.2f}" if k_tp and t_tp else "-"
        rows.append([case.protocol, str(case.concurrency), mode, f"{len(kiln)}/{len(triton)}", _fmt(k_tp),
                     _fmt(t_tp), ratio, spread, *cells, *cpu])  # fmt: skip
    header = ["protocol", "concurrency", "Kiln isolation", "rounds Kiln/Triton", "Kiln infer/s", "Triton infer/s",
              "Kiln/Triton", "per-round ratios", "Kiln p50 (us)", "Triton p50 (us)", "Kiln p99 (us)",
              "Triton p99 (us)", "Kiln CPU/req (us)", "Triton CPU/req (us)"]  # fmt: skip
    return table(header, rows)


def blank_table(samples: list[Sample], case: Case) -> str:
    rows = []
    for server in (KILN, TRITON):
        ok = _ok(samples, case, server)
        parts = [
            _fmt(_mid([_server(s, k) for s in ok])) for k in ("request", "queue", "input", "infer", "output")
        ]
        quantiles = [_fmt(_mid([(s.summary_us or {}).get(q) for s in ok])) for q in ("p50", "p99")]
        client = [_fmt(_mid([getattr(s, a) for s in ok])) for a in ("throughput", "p50_us", "p99_us")]
        rows.append(
            [server, f"{case.protocol} c={case.concurrency}", str(len(ok)), *client, *parts, *quantiles]
        )
    header = ["server", "load", "rounds", "infer/s", "client p50 (us)", "client p99 (us)", "server request avg (us)",
              "queue", "compute input", "compute infer", "compute output", "server request p50 (us)",
              "server request p99 (us)"]  # fmt: skip
    return table(header, rows)


def bls_table(samples: list[Sample], cases: list[Case]) -> str:
    rows = []
    for case in (c for c in cases if c.model == BLS):
        direct = _ok(samples, dataclasses.replace(case, model=ONNX), KILN)
        bls = _ok(samples, case, KILN)
        cells = []
        for attribute in ("p50_us", "p99_us"):
            d, b = _mid([getattr(s, attribute) for s in direct]), _mid([getattr(s, attribute) for s in bls])
            cells += [_fmt(d), _fmt(b), _fmt(b - d if b is not None and d is not None else None)]
        server = [_fmt(_mid([_server(s, "request") for s in group])) for group in (direct, bls)]
        throughput = [_fmt(_mid([s.throughput for s in group])) for group in (direct, bls)]
        rows.append(
            [case.protocol, str(case.concurrency), f"{len(direct)}/{len(bls)}", *throughput, *cells, *server]
        )
    header = ["protocol", "concurrency", "rounds direct/BLS", "direct infer/s", "BLS infer/s", "direct p50 (us)",
              "BLS p50 (us)", "added p50 (us)", "direct p99 (us)", "BLS p99 (us)", "added p99 (us)",
              "direct server request avg (us)", "BLS server request avg (us)"]  # fmt: skip
    return table(header, rows)


def cold_table(runs: dict[str, list[FreshRun]], errors: list[str]) -> str:
    rows = [
        [label, ", ".join(f"{r.seconds:.2f}" for r in fresh), _fmt(_mid([r.seconds for r in fresh]), 2)]
        for label, fresh in runs.items()
    ]
    text = table(["server", "runs (s)", "median (s)"], rows)
    return text + ("\n\nFailed fresh starts:\n" + "\n".join(f"- {e}" for e in errors) if errors else "")


def memory_table(runs: dict[str, list[FreshRun]]) -> str:
    """Medians over the fresh starts: the server process, its children (the per-instance processes), the sum."""
    rows = []
    for label, fresh in runs.items():
        server = [r.memory[0] for r in fresh if r.memory]
        children = [r.memory[1:] for r in fresh if r.memory]
        names = sorted({f"`{m.name}`" for group in children for m in group})
        cells = [
            _fmt(_mid(values), 1)
            for attribute in ("rss_mib", "pss_mib")
            for values in (
                [getattr(m, attribute) for m in server],
                [sum(getattr(m, attribute) for m in group) for group in children if group],
                [sum(getattr(m, attribute) for m in r.memory) for r in fresh if r.memory],
            )
        ]
        rows.append([label, str(len(server)), ", ".join(names) or "none", *cells])
    header = ["server", "runs", "child processes", "server RSS (MiB)", "per-instance RSS (MiB)", "total RSS (MiB)",
              "server PSS (MiB)", "per-instance PSS (MiB)", "total PSS (MiB)"]  # fmt: skip
    return table(header, rows)


def resident_files(label: str, fresh: list[FreshRun], top: int = 6) -> str:
    """The largest resident parts of each process of `label`'s first fresh start; for Kiln, whether ONNX Runtime
    is mapped at all."""
    if not fresh:
        return f"{label}: no run"
    parts = []
    for i, (memory, files) in enumerate(zip(fresh[0].memory, fresh[0].resident, strict=True)):
        biggest = ", ".join(f"`{name}` {mib:.1f}" for name, mib in list(files.items())[:top])
        parts.append(f"{'child' if i else 'server'} `{memory.name}` (RSS {memory.rss_mib:.1f}): {biggest}")
    ort = [mib for files in fresh[0].resident for name, mib in files.items() if "onnxruntime" in name]
    loaded = f"mapped, {sum(ort):.1f} MiB resident" if ort else "not mapped"
    return (
        f"{label}: "
        + "; ".join(parts)
        + (f"; ONNX Runtime libraries {loaded}" if label.startswith("Kiln") else "")
    )


def fresh_sections(runs: dict[str, list[FreshRun]], errors: list[str]) -> str:
    """The cold-start and memory sections of the report, from the same fresh starts."""
    files = "\n".join(f"- {resident_files(label, fresh)}" for label, fresh in runs.items())
    return (
        "## Cold start: process start -> /v2/models/<model>/ready = 200 (a repository of that model alone)\n\n"
        + cold_table(runs, errors)
        + "\n\nKiln in-process: add_sub; Kiln process: add_sub_process; Triton: add_sub. Kiln's modules were "
        "byte-compiled first (`make setup` does it, as pip does for a wheel).\n\n"
        "## Memory: a fresh server with one Python instance, after one warm-up request\n\n"
        + memory_table(runs)
        + "\n\nThe same fresh servers as the cold starts, read right after one checked request: RSS = VmRSS of "
        "/proc/<pid>/status (pages shared between processes, e.g. libpython, counted in each), PSS = Pss of "
        "/proc/<pid>/smaps_rollup (shared pages split, so the total does not count them twice); medians over the "
        "runs. Per-instance: the server's child processes (Kiln process mode: its worker, a fresh `python` "
        "running kiln.backends.python.worker; Triton: triton_python_backend_stub). Kiln in-process has none: its "
        "instance lives in the server process and is inside its figure. Kiln's server figure is a whole Python "
        "interpreter with what `kiln serve` imports (gRPC, numpy, protobuf, the HTTP stack); others measured "
        "Triton 2.51 here at 37 MiB server + 34 MiB stub.\n\n"
        "Largest resident parts of each process (first run, MiB per mapped file; `[anon]`: heap and other "
        "anonymous memory):\n" + files
    )
