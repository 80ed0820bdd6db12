"""Each framework backend served by Kiln (over gRPC, dynamic batching) against its raw runtime in-process, on the
same model file at the same batch size; and basic-pitch's three formats side by side.

Models:
  * basic-pitch (`pip install --no-deps basic-pitch==0.4.0`): Spotify's ICASSP 2022 note/onset/contour model,
    shipped in the wheel as a TF SavedModel, `nmp.tflite` and `nmp.onnx` - served as bp_savedmodel (tensorflow),
    bp_tflite (tflite) and bp_onnx (onnxruntime); input FP32 [batch, 43844, 1] (2 s of 22.05 kHz audio, one
    synthetic window of harmonic tones), outputs note/onset [batch, 172, 88] and contour [batch, 172, 264];
  * torch_mlp (pytorch): a TorchScript MLP traced here (FP32 1024 -> 4096 -> 4096 -> 1000, ReLU; 25 M parameters,
    random weights, seed 0), input INPUT__0 [batch, 1024].

Raw: the runtime in this process with Kiln's defaults on this machine (ONNX Runtime: intra-op threads = nproc,
inter-op 1, all graph optimisations; TFLite: num_threads = nproc; TensorFlow: the v1 SavedModel loader and a
default session, as Kiln's backend; torch: torch.jit.load, inference_mode, torch's default threads), one caller,
at batch 1, 2, 4, 8 (`--batch-sizes`); each point is `--raw-seconds` s after one warm-up call. Its best batch
size b* (items/s) is what Kiln is configured with: `max_batch_size: b*`, `dynamic_batching { preferred_batch_size:
[b*] max_queue_delay_microseconds: --queue-delay-us }`, `--instances` CPU instances. Kiln is then driven by
bench/_loadgen.py over gRPC (pre-serialised batch-1 ModelInfer requests, asyncio, `--client-processes`
processes) at concurrency clamp((instances + 1) b*, 4, 16 instances) (b* running on each instance, b* waiting: the
batcher can form b*; `--instances`, default 1, each instance with cores / instances threads), `--warmup` s
then `--seconds` s measured; the raw runtime at b* is
measured again right after each Kiln run, and the ratio is Kiln items/s over the better of the two raw figures.
Batch sizes Kiln really formed come from its statistics (GET /v2/models/<m>/stats). Before the load, one request
per model is checked against the raw runtime's output.
Target (issue 14): Kiln >= 95 % of raw at its best batch size with dynamic batching. The client, the server and
(between runs) the raw runtime share this machine's cores, so the ratio includes the client's CPU cost.

Usage:
  .venv/bin/python bench/backends_vs_raw.py --markdown-out bench/results/backends_vs_raw.md     # ~2-3 min
  .venv/bin/python bench/backends_vs_raw.py --models bp_onnx torch_mlp --seconds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    add_output_options,
    get_json,
    kiln_server,
    load_note,
    machine_description,
    publish,
    results_dir,
)
from _loadgen import run_load

TARGET = 0.95
BP_SAMPLES = 43844
BP_OUTPUTS = ("note", "onset", "contour")
BP_ONNX_OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2",
                   "contour": "StatefulPartitionedCall:0"}  # fmt: skip  # as basic_pitch/inference.py maps them
MLP_SIZES = (1024, 4096, 4096, 1000)


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    backend: str
    fmt: str
    input_name: str
    output_names: tuple[str, ...]  # Triton names, in the raw runner's output order
    config_head: str  # config.pbtxt without max_batch_size / batcher / instance group


@dataclasses.dataclass
class Result:
    spec: Spec
    raw: dict[int, float] = dataclasses.field(default_factory=dict)  # batch -> items/s
    raw_latency_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    best: int = 0
    raw_after: float = 0.0
    concurrency: int = 0
    kiln: float | None = None
    kiln_p50_ms: float | None = None
    kiln_p99_ms: float | None = None
    mean_batch: float | None = None
    check: str = ""
    error: str = ""

    @property
    def raw_best(self) -> float:
        return max(self.raw.get(self.best, 0.0), self.raw_after)

    @property
    def ratio(self) -> float | None:
        return self.kiln / self.raw_best if self.kiln and self.raw_best else None


SPECS = {
    "bp_onnx": Spec("bp_onnx", "onnxruntime", "ONNX (nmp.onnx)", "serving_default_input_2:0",
                    tuple(BP_ONNX_OUTPUTS[k] for k in BP_OUTPUTS), 'backend: "onnxruntime"'),
    "bp_savedmodel": Spec("bp_savedmodel", "tensorflow", "TF SavedModel (nmp/)", "input_2", BP_OUTPUTS,
                          'platform: "tensorflow_savedmodel"'),
    "bp_tflite": Spec("bp_tflite", "tflite", "TFLite (nmp.tflite)", "input_2", BP_OUTPUTS, 'backend: "tflite"'),
    "torch_mlp": Spec("torch_mlp", "pytorch", "TorchScript (traced here)", "INPUT__0", ("OUTPUT__0",),
                      'platform: "pytorch_libtorch"\n'
                      f'input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [{MLP_SIZES[0]}] }}]\n'
                      f'output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [{MLP_SIZES[-1]}] }}]'),
}  # fmt: skip


def basic_pitch_dir() -> Path:
    spec = importlib.util.find_spec("basic_pitch")  # no import: basic_pitch imports TensorFlow and warns
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("basic-pitch is not installed: pip install --no-deps basic-pitch==0.4.0")
    return Path(next(iter(spec.submodule_search_locations))) / "saved_models" / "icassp_2022"


def sample(spec: Spec) -> np.ndarray:
    """One item (no batch dimension)."""
    if spec.name == "torch_mlp":
        return np.random.default_rng(1).standard_normal(MLP_SIZES[0]).astype(np.float32)
    t = np.arange(BP_SAMPLES) / 22050
    tone = sum(np.sin(2 * np.pi * k * 440.0 * t) / k for k in (1, 2, 3)) * np.exp(-1.5 * t)
    return (0.3 * tone).astype(np.float32)[:, None]


def build_model_files(repo: Path, names: list[str]) -> None:
    source = basic_pitch_dir() if any(n.startswith("bp_") for n in names) else None
    for name in names:
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        if name == "bp_savedmodel":
            assert source is not None
            shutil.copytree(source / "nmp", version / "model.savedmodel")
        elif name in ("bp_tflite", "bp_onnx"):
            assert source is not None
            ext = name.split("_")[1]
            shutil.copyfile(source / f"nmp.{ext}", version / f"model.{ext}")
        else:
            import torch

            torch.manual_seed(0)
            layers: list[Any] = []
            for a, b in itertools.pairwise(MLP_SIZES):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            mlp = torch.nn.Sequential(*layers[:-1]).eval()
            torch.jit.trace(mlp, torch.zeros(2, MLP_SIZES[0])).save(str(version / "model.pt"))


def write_config(repo: Path, spec: Spec, max_batch: int, queue_delay_us: int, instances: int) -> None:
    (repo / spec.name / "config.pbtxt").write_text(
        f"{spec.config_head}\nmax_batch_size: {max_batch}\n"
        f"dynamic_batching {{ preferred_batch_size: [ {max_batch} ] max_queue_delay_microseconds: {queue_delay_us} }}\n"
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    )


# ------------------------------------------------------------------------------------------- raw runtimes


def raw_runner(
    spec: Spec, version: Path
) -> tuple[Callable[[np.ndarray], list[np.ndarray]], Callable[[], None]]:
    """(run(batch) -> outputs in spec.output_names order, close)."""
    threads = os.cpu_count() or 1
    if spec.backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(version / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        return (lambda x: session.run(list(spec.output_names), {spec.input_name: x})), lambda: None
    if spec.backend == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(version / "model.tflite"), num_threads=threads)
        runner = interpreter.get_signature_runner("serving_default")

        def run_tflite(x: np.ndarray) -> list[np.ndarray]:
            out = runner(**{spec.input_name: x})
            return [out[n] for n in spec.output_names]

        return run_tflite, lambda: None
    if spec.backend == "tensorflow":
        import tensorflow as tf

        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version / "model.savedmodel"))
        signature = meta.signature_def["serving_default"]
        fetches = [signature.outputs[n].name for n in spec.output_names]
        call = session.make_callable(fetches, [signature.inputs[spec.input_name].name])
        return (lambda x: list(call(x))), session.close
    import torch

    module = torch.jit.load(str(version / "model.pt")).eval()

    def run_torch(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [module(torch.from_numpy(x)).numpy()]

    return run_torch, lambda: None


def time_raw(
    run: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, seconds: float
) -> tuple[float, float]:
    """(items/s, mean ms per call) over at least `seconds` and 3 calls, after one warm-up call."""
    run(x)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        run(x)
        calls += 1
    elapsed = time.perf_counter() - start
    return calls * len(x) / elapsed, elapsed / calls * 1e3


# ------------------------------------------------------------------------------------------------ Kiln


def batch_stats(http_url: str, model: str) -> dict[int, int]:
    stats = get_json(f"http://{http_url}/v2/models/{model}/stats")
    assert isinstance(stats, dict)
    out: dict[int, int] = {}
    for entry in stats["model_stats"]:
        for b in entry.get("batch_stats", []):
            out[int(b["batch_size"])] = out.get(int(b["batch_size"]), 0) + int(b["compute_infer"]["count"])
    return out


def check_outputs(grpc_url: str, spec: Spec, item: np.ndarray, expected: list[np.ndarray]) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    tensor = grpcclient.InferInput(spec.input_name, [1, *item.shape], "FP32")
    tensor.set_data_from_numpy(item[None])
    result = client.infer(spec.name, [tensor])
    worst = max(
        float(np.abs(result.as_numpy(n) - e).max()) for n, e in zip(spec.output_names, expected, strict=True)
    )
    client.close()
    return f"max abs(Kiln - raw) {worst:.1e}" + ("" if worst < 1e-3 else " (WRONG)")


def wait_models(http_url: str, names: list[str], timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            try:
                with urllib.request.urlopen(f"http://{http_url}/v2/models/{name}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name} not ready after {timeout_s:g} s")
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(results: list[Result], args: argparse.Namespace, started: float) -> str:
    lines = [
        "# Framework backends vs their raw runtimes",
        "",
        f"{dt.datetime.now():%Y-%m-%d %H:%M}, {machine_description()}; {load_note()}.",
        f"Kiln over gRPC (bench/_loadgen.py, batch-1 requests, {args.client_processes} client process(es)), "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per model; dynamic batching "
        f"(max_batch_size = preferred = b*, max queue delay {args.queue_delay_us} us), {args.instances} CPU "
        "instance(s), the cores shared between them. Raw: "
        f"the runtime in-process, one caller, {args.raw_seconds:g} s per batch size. Total run "
        f"{time.monotonic() - started:.0f} s.",
        "",
        "## Kiln / raw at the raw runtime's best batch size b*",
        "",
        "| model | backend | format | raw items/s per batch "
        + "/".join(str(b) for b in args.batch_sizes)
        + " | b* | concurrency | Kiln items/s | raw items/s at b* | Kiln / raw | target >= 95 % | mean batch formed"
        " | Kiln p50 / p99 ms | output check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        raw = " / ".join(fmt(r.raw.get(b)) for b in args.batch_sizes)
        verdict = "-" if r.ratio is None else ("met" if r.ratio >= TARGET else "**not met**")
        lines.append(
            f"| {r.spec.name} | {r.spec.backend} | {r.spec.fmt} | {raw} | {r.best or '-'} | {r.concurrency or '-'}"
            f" | {fmt(r.kiln)} | {fmt(r.raw_best)} | {fmt(None if r.ratio is None else 100 * r.ratio)} %"
            f" | {verdict} | {fmt(r.mean_batch, 2)} | {fmt(r.kiln_p50_ms)} / {fmt(r.kiln_p99_ms)}"
            f" | {r.check or r.error or '-'} |"
        )
    bp = [r for r in results if r.spec.name.startswith("bp_")]
    if bp:
        lines += [
            "",
            "## basic-pitch: one model, three formats",
            "",
            "| format | backend | raw ms/call at batch 1 | raw best items/s (b*) | Kiln items/s | Kiln / raw |",
            "|---|---|---|---|---|---|",
        ]
        for r in bp:
            ratio = fmt(None if r.ratio is None else 100 * r.ratio)
            lines.append(
                f"| {r.spec.fmt} | {r.spec.backend} | {fmt(r.raw_latency_ms.get(1), 2)} | {fmt(r.raw_best)} ({r.best})"
                f" | {fmt(r.kiln)} | {ratio} % |"
            )
    errors = [f"- {r.spec.name}: {r.error}" for r in results if r.error]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--raw-seconds", type=float, default=1.5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="Kiln's instance_group count (each instance gets cores / count runtime threads)",
    )
    add_output_options(parser, "backends_vs_raw")
    args = parser.parse_args()
    started = time.monotonic()
    out_dir = results_dir(args.out_dir, "backends_vs_raw")
    results = [Result(SPECS[n]) for n in args.models]
    expected: dict[str, list[np.ndarray]] = {}

    with tempfile.TemporaryDirectory(prefix="kiln-backends-vs-raw-") as tmp:
        repo = Path(tmp) / "repo"
        build_model_files(repo, args.models)
        for r in results:  # raw sweep, before any server runs
            try:
                run, close = raw_runner(r.spec, repo / r.spec.name / "1")
                item = sample(r.spec)
                expected[r.spec.name] = run(item[None])
                for b in args.batch_sizes:
                    x = np.ascontiguousarray(np.repeat(item[None], b, axis=0))
                    r.raw[b], r.raw_latency_ms[b] = time_raw(run, x, args.raw_seconds)
                close()
                del run
                gc.collect()
                r.best = max(r.raw, key=lambda b: r.raw[b])
                r.concurrency = min(16 * args.instances, max(4, (args.instances + 1) * r.best))
                write_config(repo, r.spec, r.best, args.queue_delay_us, args.instances)
                print(f"[raw] {r.spec.name}: " + ", ".join(f"b{b} {v:.1f}/s" for b, v in r.raw.items()),
                      file=sys.stderr)  # fmt: skip
            except Exception as exc:
                r.error = f"raw: {type(exc).__name__}: {str(exc)[:200]}"
                shutil.rmtree(repo / r.spec.name, ignore_errors=True)
        live = [r for r in results if not r.error]
        if live:
            with kiln_server(repo, out_dir / "kiln.log", ready_timeout_s=180) as server:
                wait_models(server.http_url, [r.spec.name for r in live])
                for r in live:
                    try:
                        item = sample(r.spec)
                        r.check = check_outputs(server.grpc_url, r.spec, item, expected[r.spec.name])
                        before = batch_stats(server.http_url, r.spec.name)
                        load = run_load(server.grpc_url, "grpc", r.spec.name, {r.spec.input_name: item[None]},
                                        r.concurrency, args.seconds, args.warmup, out_dir / r.spec.name,
                                        processes=args.client_processes)  # fmt: skip
                        after = batch_stats(server.http_url, r.spec.name)
                        formed = {b: after.get(b, 0) - before.get(b, 0) for b in after}
                        if sum(formed.values()):
                            r.mean_batch = sum(b * n for b, n in formed.items()) / sum(formed.values())
                        if load.errors:
                            r.error = f"{load.errors} errors: {load.first_error[:200]}"
                        r.kiln = load.throughput
                        r.kiln_p50_ms, r.kiln_p99_ms = load.p50_us / 1e3, load.p99_us / 1e3
                        # the raw runtime at b* again, right after, with the server idle
                        run, close = raw_runner(r.spec, repo / r.spec.name / "1")
                        x = np.ascontiguousarray(np.repeat(item[None], r.best, axis=0))
                        r.raw_after = time_raw(run, x, args.raw_seconds)[0]
                        close()
                        del run
                        gc.collect()
                        print(f"[kiln] {r.spec.name}: {r.kiln:.1f}/s, raw after {r.raw_after:.1f}/s",
                              file=sys.stderr)  # fmt: skip
                    except Exception as exc:
                        r.error = f"kiln: {type(exc).__name__}: {str(exc)[:200]}"
    publish(render(results, args, started), args.markdown_out, out_dir)
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
