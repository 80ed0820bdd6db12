"""Ensembles: what a step costs in process, and the real classification pipeline over the wire.

Part A - the per-step overhead of an ensemble, in process (no transport): a kiln Core (kiln.core.Core on a
kiln.repository.ModelRepository, in a uvloop event loop as `kiln serve` runs it) over a temporary repository
(bench/_ensemble_models.py) of add_sub (ONNX, FP32 [4], `max_batch_size: 8`, no batcher) and chain_<K>
ensembles of K add_sub steps (OUTPUT0 -> the next step's INPUT0, the ensemble's Y to every step's INPUT1).
`await core.infer(...)` is timed for add_sub directly (T_direct; the request a step makes: batch 1, OUTPUT0 only)
and for each chain_<K> (T_ens(K)), `--calls` sequential calls per target per round, `--rounds` rounds (7), the
order of the targets reversed every other round; medians over the rounds. Overhead per step =
(T_ens(K) - K * T_direct) / K (the ensemble request's own cost shared by its K steps); the marginal step cost is
the slope of T_ens over K minus T_direct (least squares over the K measured). Target: <= 200 us per step.

Part B - the classification task with EfficientNet-Lite0 over HTTP: one `kiln serve` on free 127.0.0.1 ports over
a repository with efficientnet_lite0, classification_preprocess and the classify_image ensemble
(kiln.vision.zoo; the ONNX export with torch takes a few seconds) and classify_image_bls, a Python model with the
ensemble's config whose execute() runs the same two steps through BLS (and classify_image_bls_8, the same model
with 8 instances). The same Python harness drives every mode, closed loop, one thread per concurrent request, each
with its own tritonclient.http client, on the same JPEG (scikit-image's chelsea):
  client   - the client decodes the JPEG and pre-processes it (kiln.vision.tasks.classification_input) for every
             request and calls efficientnet_lite0 with FP32 [1, 3, 224, 224];
  ensemble - one call to classify_image with the JPEG bytes (BYTES [1, 1]);
  bls      - one call to classify_image_bls, same input;
  bls_wide - one call to classify_image_bls_8, same input (only at concurrency > 1: it tells how much of BLS's gap
             is its single instance, which runs one request at a time through both steps, so the classifier never
             batches; an ensemble has no instances of its own and only its steps' limit it);
all with class_count=5 (the classification extension: top-5 labels back). Each measurement: `--warmup` s, then
`--seconds` s measured; `--rounds` rounds (3), the order of the modes rotating every round. Then (unless
`--skip-perf-analyzer`) perf_analyzer at each concurrency against the server-side pipelines (the JPEG as a b64
BYTES element, 4-byte length prefix included) and against efficientnet_lite0 alone (the pre-processed tensor).
Targets: BLS throughput within 10 % of the ensemble's; the server-side pipeline's >= the client-side one's.

Usage:
  .venv/bin/python bench/ensembles.py --markdown-out bench/results/ensembles.md      # ~5 min
  .venv/bin/python bench/ensembles.py --part a --rounds 5 --calls 1000
  .venv/bin/python bench/ensembles.py --part b --seconds 5 --skip-perf-analyzer
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import logging
import re
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    ServerEndpoints,
    add_output_options,
    kiln_server,
    load_note,
    perf_analyzer,
    process_tree_cpu_seconds,
    publish,
    results_dir,
    run_header,
    run_perf_analyzer,
)
from _common import (
    fmt_number as _fmt,
)
from _common import (
    median_present as _mid,
)
from _common import (
    value_range as _range,
)
from _ensemble_models import (
    ADD_SUB,
    ADD_SUB_DIMS,
    BLS_PIPELINE,
    BLS_WIDE,
    BLS_WIDE_INSTANCES,
    build_chain_repository,
    build_classification_repository,
    chain_name,
)
from _vs_triton_tables import table
from kiln.types import InferRequest, InputTensor, RequestedOutput
from kiln.types.datatypes import BY_NAME

FP32 = BY_NAME["FP32"]

STEP_TARGET_US = 200.0
BLS_TOLERANCE = 0.10
CLASSIFIER = "efficientnet_lite0"  # kiln.vision.zoo's names (not imported here: it pulls in onnx at once)
ENSEMBLE = "classify_image"
TOP_K = 5

# ============================================================================ Part A: per-step overhead


@dataclasses.dataclass
class PartA:
    lengths: list[int]
    calls: int
    rounds: int
    per_call_us: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # target -> one per round
    checks: list[str] = dataclasses.field(default_factory=list)
    error: str = ""


def _fp32_request(
    model: str, names: tuple[str, str], x: np.ndarray, y: np.ndarray, output: str | None
) -> InferRequest:
    inputs = [InputTensor(names[0], FP32, x.shape, x), InputTensor(names[1], FP32, y.shape, y)]
    return InferRequest(model, inputs=inputs, outputs=[RequestedOutput(output)] if output else None)


async def _part_a(repository: Path, result: PartA) -> None:
    from kiln.core import Core
    from kiln.repository import ModelRepository

    x = np.arange(ADD_SUB_DIMS, dtype=np.float32).reshape(1, ADD_SUB_DIMS)
    y = np.full((1, ADD_SUB_DIMS), 0.5, np.float32)
    # each call builds its request, as a transport does: a request is not reused (its parameters are consumed)
    makers: dict[str, Callable[[], InferRequest]] = {
        ADD_SUB: lambda: _fp32_request(ADD_SUB, ("INPUT0", "INPUT1"), x, y, "OUTPUT0")
    }
    for k in result.lengths:
        makers[chain_name(k)] = lambda k=k: _fp32_request(chain_name(k), ("X", "Y"), x, y, None)
    core = Core(ModelRepository([repository]))
    await core.start()
    try:
        failed = core.failed_models()
        if failed:
            raise RuntimeError(
                "models failed to load: " + ", ".join(f"{e.name} ({e.reason})" for e in failed)
            )
        for k in result.lengths:  # correctness: OUT = X + K * Y
            out = (await core.infer(makers[chain_name(k)]())).outputs[0].data
            ok = np.allclose(out, x + k * y)
            result.checks.append(f"{chain_name(k)} {'ok' if ok else f'WRONG: {out.tolist()}'}")
        direct = (await core.infer(makers[ADD_SUB]())).outputs[0].data
        result.checks.insert(0, f"add_sub {'ok' if np.allclose(direct, x + y) else 'WRONG'}")
        targets = list(makers)
        result.per_call_us = {t: [] for t in targets}
        for target in targets:  # warm-up
            for _ in range(max(50, result.calls // 10)):
                await core.infer(makers[target]())
        for round_ in range(result.rounds):
            order = targets if round_ % 2 == 0 else targets[::-1]
            for target in order:
                make = makers[target]
                start = time.perf_counter_ns()
                for _ in range(result.calls):
                    await core.infer(make())
                elapsed = time.perf_counter_ns() - start
                result.per_call_us[target].append(elapsed / result.calls / 1e3)
            line = ", ".join(f"{t} {result.per_call_us[t][-1]:.1f}" for t in targets)
            print(f"[part a] round {round_ + 1}: us/call {line}", file=sys.stderr)
    finally:
        await core.close()


def run_part_a(args: argparse.Namespace, tmp: Path) -> PartA:
    result = PartA(list(args.lengths), args.calls, args.rounds_a)
    repository = build_chain_repository(tmp / "chains", result.lengths)
    logging.getLogger("kiln").setLevel(logging.WARNING)
    try:
        import uvloop

        runner: Callable[[Any], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        runner = asyncio.run
    try:
        runner(_part_a(repository, result))
    except Exception as exc:  # reported, and Part B still runs
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"[part a] failed: {result.error}", file=sys.stderr)
    return result


def report_part_a(a: PartA) -> str:
    head = (
        "## Part A: per-step ensemble overhead, in process\n\n"
        f"`await core.infer(...)` in one uvloop loop, {a.calls} sequential calls per target per round, "
        f"{a.rounds} rounds (target order reversed every other round), batch 1, FP32 [1, {ADD_SUB_DIMS}]; "
        "per-call time = round time / calls, medians over the rounds. Outputs checked: "
        + (", ".join(a.checks) or "-")
        + "\n\n"
    )
    if a.error or not a.per_call_us.get(ADD_SUB):
        return head + f"Part A failed: {a.error or 'no measurement'}\n"
    direct_rounds = a.per_call_us[ADD_SUB]
    direct = statistics.median(direct_rounds)
    rows, medians = [], {}
    for k in a.lengths:
        ens_rounds = a.per_call_us[chain_name(k)]
        ens = medians[k] = statistics.median(ens_rounds)
        per_round = [(e - k * d) / k for e, d in zip(ens_rounds, direct_rounds, strict=True)]
        overhead = (ens - k * direct) / k
        verdict = "yes" if overhead <= STEP_TARGET_US else "**no**"
        rows.append([str(k), _fmt(direct, 1), _fmt(ens, 1), _fmt(k * direct, 1), _fmt(overhead, 1),
                     _range(per_round, 1), _fmt(ens / direct, 2), verdict])  # fmt: skip
    header = ["K (steps)", "T_direct (us)", "T_ens(K) (us)", "K x T_direct (us)", "overhead per step (us)",
              "per-round overhead (us)", "T_ens / T_direct", f"<= {STEP_TARGET_US:.0f} us"]  # fmt: skip
    text = head + table(header, rows)
    if len(a.lengths) >= 2:
        slope, intercept = np.polyfit(
            np.array(a.lengths, float), np.array([medians[k] for k in a.lengths]), 1
        )
        text += (
            f"\n\nT_ens(K) ~ {intercept:.1f} us + {slope:.1f} us x K (least squares over K = "
            f"{', '.join(map(str, a.lengths))}): each further step costs {slope:.1f} us, {slope - direct:+.1f} us "
            f"against a direct call (slope - T_direct: the marginal per-step overhead); {intercept:.1f} us is the "
            "ensemble request's fixed cost (its own admission and response), which the overhead-per-step column "
            "shares out over the K steps."
        )
    text += f"\n\nT_direct per round (us): {', '.join(f'{v:.1f}' for v in direct_rounds)}.\n"
    return text


# ===================================================================== Part B: the pipeline over the wire

MODES = ("client", "ensemble", "bls", "bls_wide")
MODE_MODELS = {"client": CLASSIFIER, "ensemble": ENSEMBLE, "bls": BLS_PIPELINE, "bls_wide": BLS_WIDE}
MODE_LABELS = {
    "client": "client-side pre-processing + efficientnet_lite0",
    "ensemble": "classify_image (ensemble)",
    "bls": "classify_image_bls (BLS, 1 instance)",
    "bls_wide": f"{BLS_WIDE} (BLS, {BLS_WIDE_INSTANCES} instances)",
}


def modes_at(concurrency: int) -> tuple[str, ...]:
    """The modes measured at `concurrency`: the BLS model with more instances only where requests overlap."""
    return MODES if concurrency > 1 else MODES[:3]


def jpeg_bytes(name: str, quality: int = 90) -> bytes:
    """scikit-image's sample `name` encoded as a JPEG, as a camera or a browser would send it."""
    from PIL import Image

    from kiln.vision.images import sample

    buffer = io.BytesIO()
    Image.fromarray(sample(name)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def preprocess(jpeg: bytes) -> np.ndarray:
    """What a client does before calling the model: decode, resize + centre crop, scale: [1, 3, 224, 224]."""
    from kiln.vision.images import load_image
    from kiln.vision.tasks import classification_input

    return classification_input(load_image(jpeg))[None]


def classify_once(client: Any, mode: str, jpeg: bytes) -> list[tuple[float, int, str]]:
    """One request of `mode` on `client` (a tritonclient.http client); the top-k (score, index, label)."""
    import tritonclient.http as http

    if mode == "client":
        tensor = preprocess(jpeg)
        item = http.InferInput("input", list(tensor.shape), "FP32")
        item.set_data_from_numpy(tensor)
    else:
        item = http.InferInput("IMAGE", [1, 1], "BYTES")
        item.set_data_from_numpy(np.array([[jpeg]], dtype=np.object_))
    outputs = [http.InferRequestedOutput("probabilities", class_count=TOP_K)]
    result = client.infer(MODE_MODELS[mode], [item], outputs=outputs)
    top = []
    for entry in result.as_numpy("probabilities").reshape(-1):
        score, index, label = entry.decode().split(":", 2)
        top.append((float(score), int(index), label))
    return top


@dataclasses.dataclass(frozen=True)
class Sample:
    mode: str
    concurrency: int
    round: int
    throughput: float | None = None  # inferences/s
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_ms: float | None = None  # server process CPU time per inference
    client_cpu_ms: float | None = None  # this (client) process's CPU time per inference
    error: str | None = None


def closed_loop(
    url: str, mode: str, jpeg: bytes, concurrency: int, warmup_s: float, seconds: float, server_pid: int
) -> Sample:
    """`concurrency` threads, each with its own client, each sending one request after the other; latencies of
    the requests started and finished inside the measured window, throughput = requests finished in it / s."""
    import tritonclient.http as http

    window: dict[str, float] = {}
    spans: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def open_window() -> None:
        window["start"] = time.perf_counter() + warmup_s
        window["end"] = window["start"] + seconds

    barrier = threading.Barrier(concurrency + 1, action=open_window)

    def worker(i: int) -> None:
        client = None
        try:
            client = http.InferenceServerClient(url, connection_timeout=60.0, network_timeout=60.0)
            classify_once(client, mode, jpeg)  # connected and checked before the clock starts
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        try:
            if client is None or errors:
                return
            while (started := time.perf_counter()) < window["end"]:
                classify_once(client, mode, jpeg)
                spans[i].append((started, time.perf_counter()))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        return Sample(mode, concurrency, -1, error=(errors or ["the clients did not start within 120 s"])[0])
    time.sleep(max(0.0, window["start"] - time.perf_counter()))
    server_cpu, client_cpu = process_tree_cpu_seconds(server_pid), time.process_time()
    time.sleep(max(0.0, window["end"] - time.perf_counter()))
    server_cpu, client_cpu = (
        process_tree_cpu_seconds(server_pid) - server_cpu,
        time.process_time() - client_cpu,
    )
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        return Sample(mode, concurrency, -1, error=errors[0][:300])
    start, end = window["start"], window["end"]
    finished = sum(1 for s in spans for _, t1 in s if start <= t1 < end)
    inside = np.array([t1 - t0 for s in spans for t0, t1 in s if t0 >= start and t1 <= end]) * 1e3
    if not finished or not inside.size:
        return Sample(mode, concurrency, -1, error="no request finished in the window")
    return Sample(
        mode, concurrency, -1, finished / seconds,
        float(np.percentile(inside, 50)), float(np.percentile(inside, 99)),
        server_cpu * 1e3 / finished, client_cpu * 1e3 / finished,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PerfRun:
    model: str
    concurrency: int
    throughput: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_ms: float | None = None  # perf_analyzer -v: the server-side request latency (average)
    error: str | None = None


@dataclasses.dataclass
class PartB:
    concurrency: list[int]
    rounds: int
    seconds: float
    warmup_s: float
    image_bytes: int = 0
    samples: list[Sample] = dataclasses.field(default_factory=list)
    perf: list[PerfRun] = dataclasses.field(default_factory=list)
    perf_note: str = ""
    checks: list[str] = dataclasses.field(default_factory=list)
    build_s: float = 0.0
    error: str = ""


def check_modes(url: str, images: dict[str, bytes]) -> list[str]:
    """One request per mode and image: the top-1 label of each, and whether the modes agree."""
    import tritonclient.http as http

    lines = []
    with http.InferenceServerClient(url, network_timeout=60.0) as client:
        for name, jpeg in images.items():
            tops = {mode: classify_once(client, mode, jpeg) for mode in MODES}
            reference = tops["client"]
            same = all(
                [i for _, i, _ in top] == [i for _, i, _ in reference]
                and np.allclose([s for s, _, _ in top], [s for s, _, _ in reference], atol=1e-4)
                for top in tops.values()
            )
            score, index, label = reference[0]
            verdict = (
                "all modes agree (top-5 indices, scores within 1e-4)"
                if same
                else "MODES DIFFER: " + ("; ".join(f"{m} {t[0]}" for m, t in tops.items()))
            )
            lines.append(
                f"{name}.jpg ({len(jpeg):,} bytes): top-1 {label!r} ({index}, {score:.3f}); {verdict}"
            )
    return lines


def perf_input_files(folder: Path, jpeg: bytes) -> dict[str, Path]:
    """perf_analyzer --input-data JSON files: the JPEG as one BYTES element (b64 of its 4-byte little-endian
    length + the bytes, as perf_analyzer wants STRING data), and the pre-processed tensor (b64 FP32)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode()
    tensor = base64.b64encode(np.ascontiguousarray(preprocess(jpeg)[0], np.float32).tobytes()).decode()
    files = {
        "image": {"data": [{"IMAGE": {"content": {"b64": image}, "shape": [1]}}]},
        "tensor": {"data": [{"input": {"content": {"b64": tensor}, "shape": [3, 224, 224]}}]},
    }
    paths = {}
    for key, body in files.items():
        paths[key] = folder / f"perf_input_{key}.json"
        paths[key].write_text(json.dumps(body))
    return paths


def server_request_us(perf_output: str) -> float | None:
    """The model's own server-side average request latency from perf_analyzer -v: the first such line. (For an
    ensemble it is followed by one per composing model, and its own line has no compute input/infer/output split,
    so _common.parse_server_breakdown, which takes the last full breakdown, would return the last step's.)"""
    match = re.search(r"Avg request latency: (\d+) usec", perf_output)
    return float(match.group(1)) if match else None


def run_perf(
    endpoints: ServerEndpoints, part: PartB, jpeg: bytes, out_dir: Path, args: argparse.Namespace
) -> None:
    try:
        pa = perf_analyzer()
    except FileNotFoundError as exc:
        part.perf_note = f"perf_analyzer not run: {exc}"
        print(f"[perf] {part.perf_note}", file=sys.stderr)
        return
    inputs = perf_input_files(out_dir, jpeg)
    for c_index, concurrency in enumerate(part.concurrency):
        models = [MODE_MODELS[m] for m in modes_at(concurrency) if m != "client"] + [CLASSIFIER]
        for model in models if c_index % 2 == 0 else models[::-1]:
            data = inputs["tensor" if model == CLASSIFIER else "image"]
            arguments = [
                "-m", model, "-u", endpoints.http_url, "-i", "http", "-b", "1",
                "--concurrency-range", str(concurrency), "--input-data", str(data),
                "--measurement-interval", str(args.perf_interval),
                "--stability-percentage", "10000", "--max-trials", "3",  # 3 windows; no stability check
                "-v",
            ]  # fmt: skip
            row, output = run_perf_analyzer(pa, arguments, out_dir / f"perf_{model}_c{concurrency}", 120.0)
            if row is None:
                lines = [line for line in output.strip().splitlines() if line.strip()]
                part.perf.append(
                    PerfRun(model, concurrency, error=(lines[-1] if lines else "no output")[:240])
                )
                continue
            server = server_request_us(output)
            part.perf.append(
                PerfRun(model, concurrency, row["Inferences/Second"], row["p50 latency"] / 1e3,
                        row["p99 latency"] / 1e3, server / 1e3 if server is not None else None)
            )  # fmt: skip
            print(f"[perf]   {model} c={concurrency}: {row['Inferences/Second']:,.1f}/s", file=sys.stderr)


def run_part_b(args: argparse.Namespace, tmp: Path, out_dir: Path) -> PartB:
    part = PartB(list(args.concurrency), args.rounds_b, args.seconds, args.warmup)
    try:
        started = time.monotonic()
        repository = build_classification_repository(tmp / "classification")
        part.build_s = time.monotonic() - started
        print(f"[part b] repository written in {part.build_s:.1f} s", file=sys.stderr)
        images = {name: jpeg_bytes(name) for name in ("chelsea", "coffee")}
        jpeg = images["chelsea"]
        part.image_bytes = len(jpeg)
        with kiln_server(repository, out_dir / "kiln.log", ready_timeout_s=180.0) as endpoints:
            print(f"[server] http {endpoints.http_url}", file=sys.stderr)
            part.checks = check_modes(endpoints.http_url, images)
            for line in part.checks:
                print(f"[check] {line}", file=sys.stderr)
            for round_ in range(part.rounds):
                for concurrency in part.concurrency:
                    modes = modes_at(concurrency)
                    shift = round_ % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        sample = closed_loop(
                            endpoints.http_url, mode, jpeg, concurrency, part.warmup_s, part.seconds,
                            endpoints.pid,
                        )  # fmt: skip
                        sample = dataclasses.replace(sample, round=round_)
                        part.samples.append(sample)
                        shown = sample.error or (
                            f"{sample.throughput:,.1f}/s p50 {sample.p50_ms:,.1f} ms p99 {sample.p99_ms:,.1f} ms"
                        )
                        print(f"[part b] round {round_ + 1} {mode} c={concurrency}: {shown}", file=sys.stderr)
            if args.skip_perf_analyzer:
                part.perf_note = "perf_analyzer skipped (--skip-perf-analyzer)"
            else:
                run_perf(endpoints, part, jpeg, out_dir, args)
    except Exception as exc:
        part.error = f"{type(exc).__name__}: {exc}"
        print(f"[part b] failed: {part.error}", file=sys.stderr)
    return part


def _ok(samples: list[Sample], mode: str, concurrency: int) -> list[Sample]:
    return [s for s in samples if s.mode == mode and s.concurrency == concurrency and s.error is None]


def _per_round(samples: list[Sample], over: str, under: str, concurrency: int) -> list[float]:
    below = {s.round: s.throughput for s in _ok(samples, under, concurrency)}
    return [
        s.throughput / below[s.round]
        for s in _ok(samples, over, concurrency)
        if s.throughput and below.get(s.round)
    ]


def report_part_b(b: PartB) -> str:
    head = (
        "## Part B: classification with EfficientNet-Lite0 over HTTP\n\n"
        f"One `kiln serve` (efficientnet_lite0 with its `dynamic_batching` as kiln.vision.zoo writes it, "
        f"classification_preprocess, classify_image, classify_image_bls, {BLS_WIDE}; repository written in "
        f"{b.build_s:.1f} s). "
        f"Image: scikit-image chelsea as JPEG ({b.image_bytes:,} bytes), top-{TOP_K} through the classification "
        f"extension. Closed loop, one thread per concurrent request, each with its own tritonclient.http client, "
        f"all in the bench process on the same cores as the server; {b.warmup_s:g} s warm-up + {b.seconds:g} s "
        f"measured per run, {b.rounds} rounds (mode order rotating); medians over the rounds. CPU/inf: server "
        "process CPU time, and the bench (client) process's, over the measured window / inferences finished in it "
        "(the two share the machine's cores).\n\n"
        "Outputs checked (one request per mode and image):\n"
        + "\n".join(f"- {line}" for line in b.checks or ["-"])
        + "\n\n"
    )
    if b.error and not b.samples:
        return head + f"Part B failed: {b.error}\n"
    rows = []
    for concurrency in b.concurrency:
        for mode in modes_at(concurrency):
            ok = _ok(b.samples, mode, concurrency)
            cells = [_fmt(_mid([getattr(s, a) for s in ok]), d)
                     for a, d in (("throughput", 1), ("p50_ms", 1), ("p99_ms", 1), ("server_cpu_ms", 1),
                                  ("client_cpu_ms", 1))]  # fmt: skip
            both = _mid(
                [s.server_cpu_ms + s.client_cpu_ms for s in ok if s.server_cpu_ms and s.client_cpu_ms]
            )
            spread = _range([s.throughput for s in ok if s.throughput], 1)
            rows.append([str(concurrency), MODE_LABELS[mode], str(len(ok)), *cells, _fmt(both, 1), spread])
    header = ["concurrency", "mode", "rounds", "infer/s", "p50 (ms)", "p99 (ms)", "server CPU/inf (ms)",
              "client CPU/inf (ms)", "both (ms)", "per-round infer/s"]  # fmt: skip
    text = head + table(header, rows)
    ratio_rows, verdicts = [], []
    for concurrency in b.concurrency:
        tp = {m: _mid([s.throughput for s in _ok(b.samples, m, concurrency)]) for m in MODES}
        bls_ens = tp["bls"] / tp["ensemble"] if tp["bls"] and tp["ensemble"] else None
        ens_client = tp["ensemble"] / tp["client"] if tp["ensemble"] and tp["client"] else None
        bls_client = tp["bls"] / tp["client"] if tp["bls"] and tp["client"] else None
        wide_ens = tp["bls_wide"] / tp["ensemble"] if tp["bls_wide"] and tp["ensemble"] else None
        ratio_rows.append([
            str(concurrency), _fmt(bls_ens, 3), _range(_per_round(b.samples, "bls", "ensemble", concurrency)),
            _fmt(ens_client, 3), _range(_per_round(b.samples, "ensemble", "client", concurrency)),
            _fmt(bls_client, 3), _fmt(wide_ens, 3),
            _range(_per_round(b.samples, "bls_wide", "ensemble", concurrency)),
        ])  # fmt: skip
        if bls_ens is not None:
            met = bls_ens >= 1 - BLS_TOLERANCE
            verdicts.append(
                f"- c={concurrency}: BLS/ensemble throughput {bls_ens:.3f}: "
                + ("met" if met else "**not met**")
                + f" (target: within {BLS_TOLERANCE:.0%})"
            )
        if wide_ens is not None:
            verdicts.append(
                f"- c={concurrency}: not a target: {BLS_WIDE}, the same BLS model with {BLS_WIDE_INSTANCES} "
                f"instances, {wide_ens:.3f} of the ensemble's throughput"
            )
        if ens_client is not None:
            verdicts.append(
                f"- c={concurrency}: ensemble/client-side throughput {ens_client:.3f}: "
                + ("met" if ens_client >= 1.0 else "**not met**")
                + " (target: >= 1)"
            )
    ratio_header = ["concurrency", "BLS / ensemble", "per-round", "ensemble / client-side", "per-round",
                    "BLS / client-side", f"BLS x{BLS_WIDE_INSTANCES} / ensemble", "per-round"]  # fmt: skip
    text += (
        "\n\nThroughput ratios (medians over the rounds; per-round: the same ratio within each round):\n\n"
    )
    text += table(ratio_header, ratio_rows) + "\n\nTargets:\n" + "\n".join(verdicts or ["- no ratio"])
    failures = [f"- round {s.round + 1} {s.mode} c={s.concurrency}: {s.error}" for s in b.samples if s.error]
    if b.error:
        failures.append(f"- {b.error}")
    if failures:
        text += "\n\nFailed runs:\n" + "\n".join(failures)
    return text + "\n\n" + report_perf(b)


def report_perf(b: PartB) -> str:
    text = "### perf_analyzer (HTTP, -b 1, one run per model and concurrency)\n\n"
    if not b.perf:
        return text + (b.perf_note or "no run") + "\n"
    rows = []
    for run in b.perf:
        model = {CLASSIFIER: f"{CLASSIFIER} alone (pre-processed tensor)"}.get(run.model, run.model)
        if run.error:
            rows.append([str(run.concurrency), model, "failed: " + run.error, "-", "-", "-"])
            continue
        rows.append([str(run.concurrency), model, _fmt(run.throughput, 1), _fmt(run.p50_ms, 1),
                     _fmt(run.p99_ms, 1), _fmt(run.server_ms, 1)])  # fmt: skip
    header = ["concurrency", "model", "infer/s", "p50 (ms)", "p99 (ms)", "server request avg (ms)"]
    return (
        text
        + table(header, rows)
        + "\n\nperf_analyzer sends the JPEG as one BYTES element from --input-data (b64 of the 4-byte length "
        "prefix + the bytes) and asks for the raw probabilities (no class_count: it has no option for it); "
        "`--measurement-interval` windows, 3 of them, no stability check; server request avg: its -v server-side "
        "average (the ensemble's own line, not its steps').\n"
    )


# ================================================================================================= main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument(
        "--rounds", type=int, help="rounds of both parts (default: 7 for Part A, 3 for Part B)"
    )
    parser.add_argument("--calls", type=int, default=2000, help="Part A: calls per target per round")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1, 2, 4], metavar="K", help="Part A: chain lengths"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="Part B: measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="Part B: warm-up seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], metavar="N", help="Part B")
    parser.add_argument("--skip-perf-analyzer", action="store_true", help="Part B: no perf_analyzer runs")
    parser.add_argument("--perf-interval", type=int, default=3000, help="perf_analyzer window (ms)")
    add_output_options(parser, "ensembles")
    args = parser.parse_args(argv)
    args.rounds_a = args.rounds or 7
    args.rounds_b = args.rounds or 3
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.calls < 1 or args.seconds <= 0 or min(args.lengths) < 1 or min(args.concurrency) < 1:
        parser.error("--calls, --seconds, --lengths and --concurrency must be positive")
    return args


def header(loads: tuple[str, str], started: float) -> str:
    return run_header("Ensembles: per-step overhead and the classification pipeline", loads, started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    out_dir = results_dir(args.out_dir, "ensembles")
    load_start = load_note()
    print(f"[load] {load_start}", file=sys.stderr)
    sections, failed = [], False
    with tempfile.TemporaryDirectory(prefix="kiln-bench-ensembles-") as tmp:
        if args.part in ("a", "both"):
            part_a = run_part_a(args, Path(tmp))
            sections.append(report_part_a(part_a))
            failed |= bool(part_a.error) or any("WRONG" in c for c in part_a.checks)
        if args.part in ("b", "both"):
            part_b = run_part_b(args, Path(tmp), out_dir)
            sections.append(report_part_b(part_b))
            failed |= bool(part_b.error) or any(s.error for s in part_b.samples)
            failed |= any("DIFFER" in c for c in part_b.checks)
    text = header((load_start, load_note()), started) + "\n" + "\n\n".join(x.strip() for x in sections) + "\n"
    publish(text, args.markdown_out, out_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
