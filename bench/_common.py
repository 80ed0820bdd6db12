"""Shared pieces of the bench scripts: paths, perf_analyzer environment, the add_sub model, a server."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ADD_SUB_DIMS = 16
ADD_SUB_MAX_BATCH = 8

ADD_SUB_CONFIG = """\
name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def machine_description() -> str:
    """nproc, CPU model, kernel and Python version, for benchmark reports."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"nproc={os.cpu_count()}, cpu={cpu}, {system}, python {platform.python_version()}"


def venv_dir() -> Path:
    """The venv the bench uses: $VENV (relative paths are taken from the repository root), default .venv."""
    venv = Path(os.environ.get("VENV", ".venv"))
    return venv if venv.is_absolute() else REPO_ROOT / venv


def venv_python() -> Path:
    """The venv's interpreter, or the running one when the venv has none."""
    python = venv_dir() / "bin" / "python"
    return python if python.exists() else Path(sys.executable)


@dataclass(frozen=True)
class PerfAnalyzer:
    """Where perf_analyzer is and the environment it needs to load (libcudart.so.12 on LD_LIBRARY_PATH)."""

    path: Path
    env: dict[str, str]


def perf_analyzer() -> PerfAnalyzer:
    """perf_analyzer from the venv (tritonclient wheel) and an environment in which it loads (the same as
    `kiln perf-analyzer` builds)."""
    from kiln.cli import perf_analyzer as pa

    bin_dir = venv_dir() / "bin"
    site_dirs = sorted(venv_dir().glob("lib/python3*/site-packages"))
    return PerfAnalyzer(path=pa.executable(bin_dir), env=pa.environment(site_dirs=site_dirs))


def build_add_sub_repository(root: Path, name: str = "add_sub") -> Path:
    """Write add_sub (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [-1, 16]), Triton layout,
    as the model `name`."""
    import onnx
    from onnx import TensorProto, helper

    shape: list[str | int] = ["batch", ADD_SUB_DIMS]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        name="add_sub",
        inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("INPUT0", "INPUT1")],
        outputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace('name: "add_sub"', f'name: "{name}"', 1))
    return root


def latest_onnx_model(repository: Path, model: str) -> Path:
    """The model.onnx of the highest numeric version of `model` in a Triton-layout repository."""
    versions = [d for d in (repository / model).iterdir() if d.is_dir() and d.name.isdigit()]
    for version in sorted(versions, key=lambda d: int(d.name), reverse=True):
        if (version / "model.onnx").exists():
            return version / "model.onnx"
    raise FileNotFoundError(f"no <version>/model.onnx under {repository / model}")


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all sockets held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float, poll_s: float = 0.2
) -> None:
    """Poll `url` every `poll_s` until it answers 200; fail early if the process exits, and after
    `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before ready; log tail:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s; log tail:\n{_tail(log)}")


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class ServerEndpoints:
    http_port: int
    grpc_port: int
    metrics_port: int
    pid: int = 0  # the server process, for CPU-time accounting (0: unknown)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    log: Path,
    ready_url: str,
    ready_timeout_s: float,
    env: Mapping[str, str] | None = None,
    poll_s: float = 0.2,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (output to `log`) until the block ends, once `ready_url` answers 200; always stopped."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(ready_url, process, log, ready_timeout_s, poll_s)
            yield process
        finally:
            stop_process(process)


def kiln_command(repository: Path, endpoints: ServerEndpoints, extra_args: Sequence[str] = ()) -> list[str]:
    """`python -m kiln serve` on `endpoints`' ports (more repositories can come in `extra_args`)."""
    return [
        str(venv_python()), "-m", "kiln", "serve",
        "--model-repository", str(repository),
        "--http-port", str(endpoints.http_port),
        "--grpc-port", str(endpoints.grpc_port),
        "--metrics-port", str(endpoints.metrics_port),
        *extra_args,
    ]  # fmt: skip


@contextlib.contextmanager
def kiln_server(
    repository: Path,
    log: Path,
    ready_timeout_s: float = 60.0,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerEndpoints]:
    """Run `python -m kiln serve` on free ports until the block ends; the server is always stopped.
    `env` replaces the environment (e.g. PYTHONPATH pointing at another source tree)."""
    endpoints = ServerEndpoints(*free_ports(3))
    command = kiln_command(repository, endpoints, extra_args)
    ready = f"http://{endpoints.http_url}/v2/health/ready"
    with running_server(command, log, ready, ready_timeout_s, env) as process:
        yield dataclasses.replace(endpoints, pid=process.pid)


# ------------------------------------------------------------------------- measurement helpers


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of process `pid` and its threads (children not included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (children first found, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack += children.get(current, [])
    return tree


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` plus all its live descendants (MLServer runs inference in worker processes)."""
    total = 0.0
    for current in process_tree(pid):
        try:
            total += process_cpu_seconds(current)
        except (OSError, ValueError, IndexError):
            pass
    return total


@dataclass(frozen=True)
class ProcessMemory:
    """One process's resident memory (MiB): VmRSS (shared pages counted in full) and PSS (shared pages split
    between the processes that map them, so PSS values add up)."""

    pid: int
    name: str
    rss_mib: float
    pss_mib: float


def _kib_field(text: str, field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def process_memory(pid: int) -> ProcessMemory:
    """VmRSS (/proc/<pid>/status) and Pss (/proc/<pid>/smaps_rollup) of `pid`."""
    proc = Path(f"/proc/{pid}")
    status = (proc / "status").read_text()
    try:
        pss = _kib_field((proc / "smaps_rollup").read_text(), "Pss")
    except OSError:
        pss = float("nan")
    return ProcessMemory(pid, (proc / "comm").read_text().strip(), _kib_field(status, "VmRSS"), pss)


def process_tree_memory(pid: int) -> list[ProcessMemory]:
    """`process_memory` of `pid` (first) and of each live descendant."""
    out = []
    for current in process_tree(pid):
        try:
            out.append(process_memory(current))
        except OSError:  # exited meanwhile
            continue
    return out


def rss_by_file(pid: int) -> dict[str, float]:
    """Resident MiB of `pid` per mapped file (by file name; "[anon]" for anonymous memory), from
    /proc/<pid>/smaps, largest first."""
    sizes: dict[str, float] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            name = Path(head[5]).name if len(head) == 6 and head[5].startswith("/") else "[anon]"
        elif head and head[0] == "Rss:":
            sizes[name] = sizes.get(name, 0.0) + int(head[1]) / 1024
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def load_note() -> str:
    """The 1/5/15-minute load averages and the number of cores, for the reports."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


SERVER_BREAKDOWN = re.compile(
    r"Avg request latency: (?P<request>\d+) usec \(overhead (?P<overhead>\d+) usec \+ queue (?P<queue>\d+) usec"
    r" \+ compute input (?P<input>\d+) usec \+ compute infer (?P<infer>\d+) usec"
    r" \+ compute output (?P<output>\d+) usec\)"
)


def parse_server_breakdown(perf_output: str) -> dict[str, float] | None:
    """perf_analyzer -v's server-side line: request, overhead, queue, input, infer, output (usec)."""
    matches = list(SERVER_BREAKDOWN.finditer(perf_output))
    if not matches:
        return None
    return {k: float(v) for k, v in matches[-1].groupdict().items()}


def perf_row(csv_path: Path) -> dict[str, float] | None:
    """The first data row of perf_analyzer's -f CSV (with --verbose-csv), numeric values."""
    import csv

    if not csv_path.exists():
        return None
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    return {k.strip(): float(v) for k, v in rows[0].items() if k is not None and v not in (None, "")}


def run_perf_analyzer(
    pa: PerfAnalyzer, arguments: Sequence[str], out_prefix: Path, timeout_s: float
) -> tuple[dict[str, float] | None, str]:
    """Run perf_analyzer with `arguments` (plus -f CSV and --verbose-csv); (CSV row or None, its output).
    The output goes to `out_prefix`.log, the CSV to `out_prefix`.csv."""
    import shlex

    csv_path, log_path = out_prefix.with_suffix(".csv"), out_prefix.with_suffix(".log")
    csv_path.unlink(missing_ok=True)
    command = [str(pa.path), *arguments, "-f", str(csv_path), "--verbose-csv"]
    print(f"[perf] {shlex.join(command)}", file=sys.stderr)
    try:
        proc = subprocess.run(command, env=pa.env, capture_output=True, timeout=timeout_s, check=False)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        output = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
        output += f"\n[bench] perf_analyzer timed out after {timeout_s:g} s"
        ok = False
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(output)
    row = perf_row(csv_path) if ok else None
    if row is None:
        tail = output.strip().splitlines()[-6:]
        print(f"[perf] failed; see {log_path}:", *tail, sep="\n  ", file=sys.stderr)
    return row, output


def get_json(url: str, timeout_s: float = 10.0) -> object:
    import json

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def kiln_counts(http_url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of `model` so far, from Kiln's statistics extension."""
    stats = get_json(f"http://{http_url}/v2/models/{model}/stats")
    assert isinstance(stats, dict)
    entries = stats["model_stats"]
    return (
        sum(int(m["inference_count"]) for m in entries),
        sum(int(m["execution_count"]) for m in entries),
    )


# ------------------------------------------------------------------------------------------ reports


def add_output_options(parser: argparse.ArgumentParser, name: str) -> None:
    """--out-dir (raw outputs, default bench/results/<name>-<time>) and --markdown-out."""
    parser.add_argument(
        "--out-dir", type=Path, help=f"logs and perf CSVs (default bench/results/{name}-<time>)"
    )
    parser.add_argument("--markdown-out", type=Path, help="write the header and tables here")


def results_dir(out_dir: Path | None, name: str) -> Path:
    """`out_dir`, or bench/results/<name>-<time>; created."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = (out_dir or REPO_ROOT / "bench" / "results" / f"{name}-{stamp}").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(text: str, markdown_out: Path | None, out_dir: Path) -> None:
    """Print the report, write it to `markdown_out` when given, and say where the raw outputs are."""
    print(text)
    if markdown_out is not None:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(text)
        print(f"[out] {markdown_out}", file=sys.stderr)
    print(f"[out] logs and perf_analyzer CSVs: {out_dir}", file=sys.stderr)


def run_header(title: str, loads: tuple[str, str], started: float) -> str:
    """A report's first lines: the title, the command that produced it, date, machine, load, run time."""
    import shlex
    import time

    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])
    return f"""# {title}

- command: `{command}`
- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
- machine: {machine_description()}
- load: at start {loads[0]}; at end {loads[1]}
- run time: {time.monotonic() - started:.0f} s
"""


def median_present(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (None: not measured)."""
    import statistics

    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt_number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def value_range(values: Sequence[float], digits: int = 2) -> str:
    return f"{min(values):,.{digits}f} to {max(values):,.{digits}f}" if values else "-"
