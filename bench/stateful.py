"""Shared memory against the wire for large tensors, and sequence batching with a real stateful model.

Part A - system shared memory vs binary HTTP vs gRPC, with perf_analyzer: one `kiln serve` on free 127.0.0.1 ports
over a repository of two ONNX models with a 4 MiB input (bench/_stateful_models.py: FP32 [batch, 1048576],
`max_batch_size: 8`, one CPU instance, no batcher): reduce_4mb (ReduceMean to [batch, 1]: 4 bytes back, so the
input's transfer dominates) and identity_4mb (4 MiB back as well). perf_analyzer, batch 1, at each concurrency
(1 and 4), over four transports: HTTP with binary tensors (its default), gRPC, and `--shared-memory system` over
HTTP and over gRPC (perf_analyzer creates and registers one region per input and output itself, writes the input
into it once, and asks for the output in its region; `--output-shared-memory-size` = the output's bytes). Each
run: `--perf-windows` windows of `--perf-interval` ms, no stability check; the transports' order reversed from one
round and concurrency to the next, `--rounds-a` rounds; medians over the rounds. Server CPU per request: the
server process's CPU time (/proc/<pid>/stat) over the whole perf_analyzer run / the requests the server counted
in it (its statistics); client CPU per request: perf_analyzer's own (getrusage of the finished child) over the
same requests. Before the runs, one request per model and protocol through tritonclient's shared-memory
utilities checks the outputs.
Target (issue): shared memory >= 1.5x the gRPC throughput at large inputs, with lower server CPU per request.

Part B - sequence batching with Silero VAD (kiln.examples.vad, 512-sample chunks at 16 kHz, state kept by the
server): one `kiln serve` with silero_vad (the config vad.write_vad writes: oldest strategy,
`max_batch_size: 32`, max_queue_delay 2 ms) and silero_vad_direct (the same model file and states,
`direct { }`). `--streams` (32) concurrent streams, asyncio tasks in this process, each on its own grpc.aio
channel sending unary ModelInfer requests, one 512-sample chunk each, one in flight per stream (it waits for the
answer before sending the next chunk); each stream runs sequence after sequence (a new sequence id each time,
START on the first chunk, END on the last) over a synthetic voiced signal (vad.synthetic_speech, `--audio-seconds`
long, 8 different seeds). When the window closes, a stream sends its next chunk with END to close its sequence.
Against: in-process ONNX Runtime on the same wrapped model (vad.serving_model(), Kiln's session options), batch 1,
chunk by chunk, one stream after the other, state threaded by hand; and (a ceiling, not a target) the same session
running all streams in lockstep at batch `--streams`. Each measurement: `--warmup` s, then `--seconds` s measured;
`--rounds-b` rounds, the order of the modes rotating. Before the runs, 8 streams at once per served model send a
whole sequence each; those and every sequence completed in the runs (warm-up included) are compared with
vad.reference() (the shipped model, state threaded by Silero's way); batch sizes come from the server's
statistics (GET /v2/models/<m>/stats, batch_stats, before and after each run).

Usage:
  .venv/bin/python bench/stateful.py --markdown-out bench/results/stateful.md         # ~5 min
  .venv/bin/python bench/stateful.py --part a --models reduce_4mb --rounds-a 1
  .venv/bin/python bench/stateful.py --part b --seconds 5 --rounds-b 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    PerfAnalyzer,
    ServerEndpoints,
    add_output_options,
    get_json,
    kiln_counts,
    kiln_server,
    load_note,
    parse_server_breakdown,
    perf_analyzer,
    process_cpu_seconds,
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
from _stateful_models import (
    LARGE_ELEMENTS,
    LARGE_MODELS,
    build_large_repository,
    build_vad_repository,
    large_expected,
    large_output_elements,
    vad_session,
)
from _vs_triton_tables import table

SHM_TARGET = 1.5  # shared memory throughput / gRPC throughput
VAD_TOLERANCE = 1e-4  # as examples/vad/client.py

# ================================================================================ Part A: shared memory

TRANSPORTS = ("http", "grpc", "http_shm", "grpc_shm")
TRANSPORT_LABELS = {
    "http": "HTTP (binary tensors)",
    "grpc": "gRPC",
    "http_shm": "HTTP + system shm",
    "grpc_shm": "gRPC + system shm",
}


@dataclasses.dataclass(frozen=True)
class ShmSample:
    model: str
    transport: str
    concurrency: int
    round: int
    throughput: float | None = None  # infer/s
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_ms: float | None = None  # server process CPU time / request
    client_cpu_ms: float | None = None  # perf_analyzer's CPU time / request
    server: dict[str, float] | None = None  # perf_analyzer -v: request, queue, input, infer, output (avg, us)
    error: str | None = None


@dataclasses.dataclass
class PartA:
    models: list[str]
    concurrency: list[int]
    rounds: int
    interval_ms: int
    windows: int
    samples: list[ShmSample] = dataclasses.field(default_factory=list)
    checks: list[str] = dataclasses.field(default_factory=list)
    error: str = ""


def check_shared_memory(endpoints: ServerEndpoints, model: str) -> list[str]:
    """One request per protocol with its input and output in system shared memory (tritonclient's utilities)
    and one with the tensors on the wire; both outputs compared with numpy's."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    x = np.random.default_rng(1).standard_normal((1, LARGE_ELEMENTS), dtype=np.float32)
    expected = large_expected(model, x)
    lines = []
    modules: dict[str, tuple[Any, str]] = {
        "http": (httpclient, endpoints.http_url),
        "grpc": (grpcclient, endpoints.grpc_url),
    }
    for protocol, (module, url) in modules.items():
        client = module.InferenceServerClient(url)
        tag = f"kiln_bench_{os.getpid()}_{model}_{protocol}"
        regions = []
        try:
            handle_in = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", x.nbytes)
            regions.append(handle_in)
            handle_out = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", expected.nbytes)
            regions.append(handle_out)
            shm.set_shared_memory_region(handle_in, [x])
            client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", x.nbytes)
            client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", expected.nbytes)
            tensor = module.InferInput("INPUT0", list(x.shape), "FP32")
            tensor.set_shared_memory(f"{tag}_in", x.nbytes)
            output = module.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory(f"{tag}_out", expected.nbytes)
            client.infer(model, [tensor], outputs=[output])
            from_shm = shm.get_contents_as_numpy(handle_out, np.float32, list(expected.shape))
            wire = module.InferInput("INPUT0", list(x.shape), "FP32")
            wire.set_data_from_numpy(x)
            from_wire = client.infer(model, [wire]).as_numpy("OUTPUT0")
            ok_shm = np.allclose(from_shm, expected, rtol=1e-4, atol=1e-6)
            ok_wire = from_wire is not None and np.allclose(from_wire, expected, rtol=1e-4, atol=1e-6)
            verdict = "ok" if ok_shm and ok_wire else f"WRONG (shared memory {ok_shm}, wire {ok_wire})"
            lines.append(f"{model} over {protocol}: output in shared memory and on the wire {verdict}")
        except Exception as exc:
            lines.append(f"{model} over {protocol}: WRONG ({type(exc).__name__}: {str(exc)[:200]})")
        finally:
            try:
                client.unregister_system_shared_memory()
            except Exception:
                pass
            for handle in regions:
                shm.destroy_shared_memory_region(handle)
            client.close()
    return lines


def measure_shm(
    pa: PerfAnalyzer,
    endpoints: ServerEndpoints,
    model: str,
    transport: str,
    concurrency: int,
    round_: int,
    part: PartA,
    out_dir: Path,
) -> ShmSample:
    protocol = transport.split("_")[0]
    url = endpoints.grpc_url if protocol == "grpc" else endpoints.http_url
    arguments = [
        "-m", model, "-u", url, "-i", protocol, "-b", "1", "--concurrency-range", str(concurrency),
        "--measurement-interval", str(part.interval_ms), "--max-trials", str(part.windows),
        "--stability-percentage", "10000", "-v",
    ]  # fmt: skip
    if transport.endswith("_shm"):
        out_bytes = large_output_elements(model) * 4
        arguments += ["--shared-memory", "system", "--output-shared-memory-size", str(out_bytes)]
    prefix = out_dir / f"perf_r{round_ + 1}_{model}_{transport}_c{concurrency}"
    cpu_before, count_before = process_cpu_seconds(endpoints.pid), kiln_counts(endpoints.http_url, model)[0]
    child_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    row, output = run_perf_analyzer(
        pa, arguments, prefix, timeout_s=30.0 + 3 * part.windows * part.interval_ms / 1e3
    )
    child_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = kiln_counts(endpoints.http_url, model)[0] - count_before
    server_cpu = process_cpu_seconds(endpoints.pid) - cpu_before
    if row is None:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        return ShmSample(
            model, transport, concurrency, round_, error=(lines[-1] if lines else "no output")[:240]
        )
    client_cpu = (child_after.ru_utime + child_after.ru_stime) - (
        child_before.ru_utime + child_before.ru_stime
    )
    sample = ShmSample(
        model, transport, concurrency, round_, row["Inferences/Second"], row["p50 latency"] / 1e3,
        row["p99 latency"] / 1e3, server_cpu * 1e3 / requests if requests else None,
        client_cpu * 1e3 / requests if requests else None, parse_server_breakdown(output),
    )  # fmt: skip
    print(
        f"[part a] round {round_ + 1} {model} {transport} c={concurrency}: {sample.throughput:,.1f}/s "
        f"p50 {sample.p50_ms:.2f} ms, server CPU {_fmt(sample.server_cpu_ms, 2)} ms/req",
        file=sys.stderr,
    )
    return sample


def run_part_a(args: argparse.Namespace, tmp: Path, out_dir: Path) -> PartA:
    part = PartA(
        list(args.models), list(args.concurrency), args.rounds_a, args.perf_interval, args.perf_windows
    )
    try:
        pa = perf_analyzer()
        repository = build_large_repository(tmp / "large")
        with kiln_server(repository, out_dir / "kiln_part_a.log") as endpoints:
            print(f"[server] part a: http {endpoints.http_url}, grpc {endpoints.grpc_url}", file=sys.stderr)
            for model in part.models:
                part.checks += check_shared_memory(endpoints, model)
            for line in part.checks:
                print(f"[check] {line}", file=sys.stderr)
            for round_ in range(part.rounds):
                for model in part.models:
                    for c_index, concurrency in enumerate(part.concurrency):
                        flip = (round_ + c_index) % 2 == 1
                        order = TRANSPORTS[::-1] if flip else TRANSPORTS
                        for transport in order:
                            part.samples.append(
                                measure_shm(
                                    pa, endpoints, model, transport, concurrency, round_, part, out_dir
                                )
                            )
    except Exception as exc:
        part.error = f"{type(exc).__name__}: {exc}"
        print(f"[part a] failed: {part.error}", file=sys.stderr)
    return part


def _shm_ok(samples: list[ShmSample], model: str, transport: str, concurrency: int) -> list[ShmSample]:
    return [
        s
        for s in samples
        if (s.model, s.transport, s.concurrency) == (model, transport, concurrency) and s.error is None
    ]


def _shm_ratios(samples: list[ShmSample], model: str, over: str, under: str, concurrency: int) -> list[float]:
    below = {s.round: s.throughput for s in _shm_ok(samples, model, under, concurrency)}
    return [
        s.throughput / below[s.round]
        for s in _shm_ok(samples, model, over, concurrency)
        if s.throughput and below.get(s.round)
    ]


def report_part_a(a: PartA) -> str:
    head = (
        "## Part A: system shared memory vs binary HTTP vs gRPC (perf_analyzer)\n\n"
        f"One `kiln serve`; models FP32 [batch, {LARGE_ELEMENTS:,}] in ({LARGE_ELEMENTS * 4 / 2**20:g} MiB per "
        "request), one CPU instance, no batcher: reduce_4mb (ReduceMean: 4 bytes back) and identity_4mb (4 MiB "
        f"back). perf_analyzer -b 1, {a.windows} windows of {a.interval_ms} ms per run, no stability check, "
        f"{a.rounds} rounds (the transports' order reversed from one round and concurrency to the next); "
        "medians over the rounds. "
        "`--shared-memory system`: perf_analyzer writes the input into its region once, so the client's copy into "
        "shared memory is not in the per-request numbers (a real client pays one 4 MiB memcpy per request). "
        "Server CPU/req: the server process's CPU time over the whole perf_analyzer run (warm-up included) / the "
        "requests the server counted; perf_analyzer CPU/req likewise (it shares the machine's cores with the "
        "server). Server request / compute input: perf_analyzer -v's server-side averages.\n\n"
        "Outputs checked (tritonclient's shared-memory utilities, one request each way):\n"
        + "\n".join(f"- {line}" for line in a.checks or ["-"])
        + "\n\n"
    )
    if not a.samples:
        return head + f"Part A failed: {a.error or 'no measurement'}\n"
    rows = []
    for model in a.models:
        for concurrency in a.concurrency:
            for transport in TRANSPORTS:
                ok = _shm_ok(a.samples, model, transport, concurrency)
                cells = [_fmt(_mid([getattr(s, k) for s in ok]), d)
                         for k, d in (("throughput", 1), ("p50_ms", 2), ("p99_ms", 2), ("server_cpu_ms", 2),
                                      ("client_cpu_ms", 2))]  # fmt: skip
                server = [_fmt(_mid([(s.server or {}).get(k) for s in ok]), 0) for k in ("request", "input")]
                spread = _range([s.throughput for s in ok if s.throughput], 1)
                rows.append([model, str(concurrency), TRANSPORT_LABELS[transport], str(len(ok)), *cells,
                             *server, spread])  # fmt: skip
    header = ["model", "concurrency", "transport", "rounds", "infer/s", "p50 (ms)", "p99 (ms)",
              "server CPU/req (ms)", "perf_analyzer CPU/req (ms)", "server request avg (us)",
              "compute input avg (us)", "per-round infer/s"]  # fmt: skip
    text = head + table(header, rows)
    ratio_rows, verdicts = [], []
    for model in a.models:
        for concurrency in a.concurrency:
            tp = {
                t: _mid([s.throughput for s in _shm_ok(a.samples, model, t, concurrency)]) for t in TRANSPORTS
            }
            cpu = {
                t: _mid([s.server_cpu_ms for s in _shm_ok(a.samples, model, t, concurrency)])
                for t in TRANSPORTS
            }

            def ratio(over: str, under: str, values: dict[str, float | None]) -> float | None:
                top, bottom = values[over], values[under]
                return top / bottom if top and bottom else None

            grpc_ratio, http_ratio = ratio("grpc_shm", "grpc", tp), ratio("http_shm", "grpc", tp)
            cpu_grpc, cpu_http = ratio("grpc_shm", "grpc", cpu), ratio("http_shm", "grpc", cpu)
            ratio_rows.append([
                model, str(concurrency),
                _fmt(grpc_ratio, 2), _range(_shm_ratios(a.samples, model, "grpc_shm", "grpc", concurrency)),
                _fmt(http_ratio, 2), _range(_shm_ratios(a.samples, model, "http_shm", "grpc", concurrency)),
                _fmt(ratio("http_shm", "http", tp), 2),
                _range(_shm_ratios(a.samples, model, "http_shm", "http", concurrency)),
                _fmt(ratio("http", "grpc", tp), 2), _fmt(cpu_grpc, 2), _fmt(cpu_http, 2),
            ])  # fmt: skip
            for label, tp_ratio, cpu_ratio in (
                ("gRPC + shm", grpc_ratio, cpu_grpc),
                ("HTTP + shm", http_ratio, cpu_http),
            ):
                if tp_ratio is None:
                    continue
                met = tp_ratio >= SHM_TARGET and cpu_ratio is not None and cpu_ratio < 1.0
                verdicts.append(
                    f"- {model} c={concurrency}: {label} / gRPC throughput {tp_ratio:.2f}, server CPU/req "
                    f"{_fmt(cpu_ratio, 2)}x gRPC's: " + ("met" if met else "**not met**")
                )
    ratio_header = ["model", "concurrency", "gRPC+shm / gRPC", "per-round", "HTTP+shm / gRPC", "per-round",
                    "HTTP+shm / HTTP", "per-round", "HTTP / gRPC", "server CPU/req gRPC+shm / gRPC",
                    "server CPU/req HTTP+shm / gRPC"]  # fmt: skip
    text += "\n\nRatios (throughput unless said; medians over the rounds; per-round: within each round):\n\n"
    text += table(ratio_header, ratio_rows)
    text += (
        f"\n\nTarget (shared memory >= {SHM_TARGET}x gRPC throughput and lower server CPU per request):\n"
        + "\n".join(verdicts or ["- no ratio"])
    )
    failures = [
        f"- round {s.round + 1} {s.model} {s.transport} c={s.concurrency}: {s.error}"
        for s in a.samples
        if s.error
    ]
    if a.error:
        failures.append(f"- {a.error}")
    if failures:
        text += "\n\nFailed runs:\n" + "\n".join(failures)
    return text + "\n"


# ============================================================================ Part B: sequence batching

OLDEST, DIRECT, ORT_1, ORT_N = "oldest", "direct", "ort_1", "ort_n"
MODES = (OLDEST, DIRECT, ORT_1, ORT_N)
BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 32))


@dataclasses.dataclass(frozen=True)
class SeqSample:
    mode: str
    round: int
    throughput: float | None = None  # chunks/s
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_ms: float | None = None  # server process CPU time / chunk, over the window
    client_cpu_ms: float | None = None  # this process's CPU time / chunk, over the window
    batches: dict[int, int] | None = None  # batch size -> executions (server statistics, whole run)
    counts: tuple[int, int] | None = None  # (inference_count, execution_count) deltas, whole run
    checked: int = 0  # completed sequences compared with vad.reference()
    max_diff: float = 0.0
    error: str | None = None


@dataclasses.dataclass
class PartB:
    streams: int
    rounds: int
    seconds: float
    warmup_s: float
    audio_s: float
    modes: list[str]
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # mode -> served model
    chunks_per_sequence: int = 0
    checks: list[str] = dataclasses.field(default_factory=list)
    check_streams: int = 0
    samples: list[SeqSample] = dataclasses.field(default_factory=list)
    error: str = ""


@dataclasses.dataclass
class Audio:
    """The streams' signals, their chunks (and their raw bytes) and the reference probabilities."""

    chunks: list[list[np.ndarray]]
    raw: list[list[bytes]]
    reference: list[np.ndarray]

    @classmethod
    def make(cls, seconds: float, signals: int) -> Audio:
        from kiln.examples import vad

        waves = [vad.synthetic_speech(seconds, seed) for seed in range(signals)]
        chunks = [vad.chunks(w) for w in waves]
        return cls(chunks, [[c.tobytes() for c in cs] for cs in chunks], [vad.reference(w) for w in waves])

    def diff(self, signal: int, outputs: Sequence[float]) -> float:
        return float(np.abs(np.asarray(outputs, np.float32) - self.reference[signal]).max())


def model_stats(http_url: str, model: str) -> tuple[dict[int, int], tuple[int, int]]:
    """({batch size: executions}, (inference_count, execution_count)) of `model` so far."""
    stats = get_json(f"http://{http_url}/v2/models/{model}/stats")
    assert isinstance(stats, dict)
    batches: dict[int, int] = {}
    for entry in stats["model_stats"]:
        for b in entry.get("batch_stats", []):
            batches[int(b["batch_size"])] = batches.get(int(b["batch_size"]), 0) + int(
                b["compute_infer"]["count"]
            )
    return batches, kiln_counts(http_url, model)


def _vad_request(model: str, chunk: bytes, sequence_id: int, start: bool, end: bool) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "audio", "FP32"
    tensor.shape.extend([1, len(chunk) // 4])
    request.raw_input_contents.append(chunk)
    request.outputs.add().name = "probability"
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request.SerializeToString()


async def _served_streams(
    endpoints: ServerEndpoints, model: str, audio: Audio, part: PartB, ids: itertools.count[int]
) -> tuple[list[list[tuple[float, float]]], list[tuple[int, list[float]]], dict[str, float], list[str]]:
    """`part.streams` closed-loop streams; (per-stream (sent, answered) times, completed sequences (signal,
    outputs), the window and the CPU seconds over it, errors)."""
    import grpc
    from tritonclient.grpc import service_pb2

    loop_start = time.perf_counter()
    window = {"start": loop_start + part.warmup_s, "end": loop_start + part.warmup_s + part.seconds}
    spans: list[list[tuple[float, float]]] = [[] for _ in range(part.streams)]
    completed: list[tuple[int, list[float]]] = []
    errors: list[str] = []

    async def stream(index: int) -> None:
        signal = index % len(audio.raw)
        async with grpc.aio.insecure_channel(endpoints.grpc_url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while not errors:
                sequence_id, outputs, last = next(ids), [], len(audio.raw[signal]) - 1
                for position, chunk in enumerate(audio.raw[signal]):
                    closing = time.perf_counter() >= window["end"]
                    payload = _vad_request(
                        model, chunk, sequence_id, position == 0, closing or position == last
                    )
                    sent = time.perf_counter()
                    try:
                        reply = service_pb2.ModelInferResponse.FromString(await call(payload))
                    except grpc.aio.AioRpcError as exc:
                        errors.append(
                            f"stream {index} sequence {sequence_id}: {exc.code().name}: {exc.details()}"
                        )
                        return
                    spans[index].append((sent, time.perf_counter()))
                    if closing:
                        return
                    outputs.append(float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0]))
                completed.append((signal, outputs))

    async def watch() -> dict[str, float]:
        await asyncio.sleep(max(0.0, window["start"] - time.perf_counter()))
        server, client = process_cpu_seconds(endpoints.pid), time.process_time()
        await asyncio.sleep(max(0.0, window["end"] - time.perf_counter()))
        return {
            **window,
            "server_cpu": process_cpu_seconds(endpoints.pid) - server,
            "client_cpu": time.process_time() - client,
        }

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(stream(i) for i in range(part.streams)))
    return spans, completed, await watcher, errors


async def _check_streams(
    endpoints: ServerEndpoints, model: str, audio: Audio, streams: int, ids: itertools.count[int]
) -> list[tuple[int, float]]:
    """`streams` whole sequences at once (stream i on signal i), one chunk in flight each; (signal, max |diff|
    against vad.reference()) per stream."""
    import grpc
    from tritonclient.grpc import service_pb2

    async def one(signal: int) -> tuple[int, float]:
        async with grpc.aio.insecure_channel(endpoints.grpc_url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            sequence_id, raw, outputs = next(ids), audio.raw[signal], []
            for position, chunk in enumerate(raw):
                payload = _vad_request(model, chunk, sequence_id, position == 0, position == len(raw) - 1)
                reply = service_pb2.ModelInferResponse.FromString(await call(payload))
                outputs.append(float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0]))
        return signal, audio.diff(signal, outputs)

    return list(await asyncio.gather(*(one(i % len(audio.raw)) for i in range(streams))))


def check_served(
    endpoints: ServerEndpoints, models: dict[str, str], audio: Audio, ids: itertools.count[int]
) -> list[str]:
    lines = []
    for mode, model in models.items():
        try:
            diffs = asyncio.run(_check_streams(endpoints, model, audio, len(audio.raw), ids))
        except Exception as exc:
            lines.append(f"{model}: WRONG ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        worst = max(d for _, d in diffs)
        verdict = (
            "same as vad.reference()" if worst <= VAD_TOLERANCE else "WRONG: differs from vad.reference()"
        )
        lines.append(
            f"{model} ({mode}): {len(diffs)} streams at once, whole sequences, max |diff| {worst:.1e}: {verdict}"
        )
    return lines


def _window_stats(spans: list[list[tuple[float, float]]], window: dict[str, float]) -> tuple[int, np.ndarray]:
    """(chunks answered inside the window, latencies (ms) of the chunks sent and answered inside it)."""
    start, end = window["start"], window["end"]
    finished = sum(1 for s in spans for _, t1 in s if start <= t1 < end)
    inside = np.array([t1 - t0 for s in spans for t0, t1 in s if t0 >= start and t1 <= end]) * 1e3
    return finished, inside


def measure_served(
    endpoints: ServerEndpoints, mode: str, model: str, audio: Audio, part: PartB, round_: int,
    ids: itertools.count[int],
) -> SeqSample:  # fmt: skip
    batches_before, counts_before = model_stats(endpoints.http_url, model)
    spans, completed, window, errors = asyncio.run(_served_streams(endpoints, model, audio, part, ids))
    batches_after, counts_after = model_stats(endpoints.http_url, model)
    if errors:
        return SeqSample(mode, round_, error=errors[0][:300])
    finished, inside = _window_stats(spans, window)
    if not finished or not inside.size:
        return SeqSample(mode, round_, error="no chunk answered in the window")
    batches = {
        size: count - batches_before.get(size, 0)
        for size, count in batches_after.items()
        if count > batches_before.get(size, 0)
    }
    diffs = [audio.diff(signal, outputs) for signal, outputs in completed]
    return SeqSample(
        mode, round_, finished / part.seconds, float(np.percentile(inside, 50)), float(np.percentile(inside, 99)),
        window["server_cpu"] * 1e3 / finished, window["client_cpu"] * 1e3 / finished, batches,
        (counts_after[0] - counts_before[0], counts_after[1] - counts_before[1]), len(diffs), max(diffs, default=0.0),
    )  # fmt: skip


def measure_ort(session: Any, mode: str, audio: Audio, part: PartB, round_: int) -> SeqSample:
    """In-process ORT: ORT_1 runs one stream after another at batch 1; ORT_N all streams in lockstep."""
    from kiln.examples.vad import CONTEXT

    width = 1 if mode == ORT_1 else part.streams
    names = ["probability", "state_out", "context_out"]
    start = time.perf_counter() + part.warmup_s
    end = start + part.seconds
    latencies: list[float] = []
    finished, diffs, batch_runs = 0, [], 0
    cpu_start: float | None = None
    cpu = 0.0
    stream = 0
    length = len(audio.chunks[0])
    while time.perf_counter() < end:
        signals = [(stream + k) % part.streams % len(audio.chunks) for k in range(width)]
        stream += width
        state = np.zeros((width, 2, 128), np.float32)
        context = np.zeros((width, CONTEXT), np.float32)
        outputs = np.zeros((width, length), np.float32)
        for position in range(length):
            if cpu_start is None and time.perf_counter() >= start:
                cpu_start = time.process_time()
            chunk = np.stack([audio.chunks[s][position] for s in signals])
            t0 = time.perf_counter()
            probability, state, context = session.run(
                names, {"audio": chunk, "state_in": state, "context_in": context}
            )
            t1 = time.perf_counter()
            batch_runs += 1
            outputs[:, position] = probability[:, 0]
            if start <= t1 < end:
                finished += width
            if t0 >= start and t1 <= end:
                latencies.extend([(t1 - t0) * 1e3] * width)
            if t1 >= end:
                break
        else:
            diffs += [audio.diff(s, outputs[k]) for k, s in enumerate(signals)]
    if cpu_start is not None:
        cpu = time.process_time() - cpu_start
    if not finished or not latencies:
        return SeqSample(mode, round_, error="no chunk finished in the window")
    inside = np.array(latencies)
    return SeqSample(
        mode, round_, finished / part.seconds, float(np.percentile(inside, 50)), float(np.percentile(inside, 99)),
        None, cpu * 1e3 / finished, None, None, len(diffs), max(diffs, default=0.0),
    )  # fmt: skip


def run_part_b(args: argparse.Namespace, tmp: Path, out_dir: Path) -> PartB:
    modes = [m for m in MODES if not (args.skip_ort_batch and m == ORT_N)]
    part = PartB(args.streams, args.rounds_b, args.seconds, args.warmup, args.audio_seconds, modes)
    try:
        oldest, direct = build_vad_repository(tmp / "vad")
        part.models = {OLDEST: oldest, DIRECT: direct}
        audio = Audio.make(part.audio_s, min(8, part.streams))
        part.chunks_per_sequence, part.check_streams = len(audio.chunks[0]), len(audio.raw)
        session = vad_session(tmp / "vad" / oldest / "1" / "model.onnx")
        ids = itertools.count(1)
        with kiln_server(tmp / "vad", out_dir / "kiln_part_b.log") as endpoints:
            print(f"[server] part b: http {endpoints.http_url}, grpc {endpoints.grpc_url}", file=sys.stderr)
            part.checks = check_served(endpoints, part.models, audio, ids)
            for line in part.checks:
                print(f"[check] {line}", file=sys.stderr)
            for round_ in range(part.rounds):
                shift = round_ % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    if mode in part.models:
                        sample = measure_served(endpoints, mode, part.models[mode], audio, part, round_, ids)
                    else:
                        sample = measure_ort(session, mode, audio, part, round_)
                    part.samples.append(sample)
                    shown = sample.error or (
                        f"{sample.throughput:,.1f} chunks/s p50 {sample.p50_ms:.2f} ms p99 {sample.p99_ms:.2f} ms, "
                        f"{sample.checked} sequences checked, max diff {sample.max_diff:.1e}"
                    )
                    print(f"[part b] round {round_ + 1} {mode}: {shown}", file=sys.stderr)
    except Exception as exc:
        part.error = f"{type(exc).__name__}: {exc}"
        print(f"[part b] failed: {part.error}", file=sys.stderr)
    return part


def mode_label(mode: str, part: PartB) -> str:
    return {
        OLDEST: f"{part.models.get(OLDEST, 'silero_vad')} (oldest, as vad.write_vad)",
        DIRECT: f"{part.models.get(DIRECT, 'silero_vad_direct')} (direct)",
        ORT_1: "in-process ORT, batch 1, one stream after another",
        ORT_N: f"in-process ORT, {part.streams} streams in lockstep, batch {part.streams} (ceiling)",
    }[mode]


def _seq_ok(samples: list[SeqSample], mode: str) -> list[SeqSample]:
    return [s for s in samples if s.mode == mode and s.error is None]


def _seq_ratios(samples: list[SeqSample], over: str, under: str) -> list[float]:
    below = {s.round: s.throughput for s in _seq_ok(samples, under)}
    return [
        s.throughput / below[s.round] for s in _seq_ok(samples, over) if s.throughput and below.get(s.round)
    ]


def report_part_b(b: PartB) -> str:
    head = (
        "## Part B: sequence batching with Silero VAD\n\n"
        f"{b.streams} concurrent streams, asyncio tasks in the bench process, each on its own grpc.aio channel: "
        "unary ModelInfer, one 512-sample FP32 chunk per request, one request in flight per stream; sequence after "
        f"sequence per stream ({b.audio_s:g} s of vad.synthetic_speech = {b.chunks_per_sequence} chunks, START on "
        "the first, END on the last; a new sequence id each time). Served models: the one vad.write_vad writes "
        "(`oldest { max_candidate_sequences: 64 max_queue_delay_microseconds: 2000 }`, `max_batch_size: 32`, one "
        "CPU instance) and the same file with `direct { }`. In-process ORT: the wrapped model "
        "(vad.serving_model()) with Kiln's session options, state threaded by hand. "
        f"{b.warmup_s:g} s warm-up + {b.seconds:g} s measured per run, {b.rounds} rounds (mode order rotating); "
        "medians over the rounds. CPU/chunk over the measured window: the server process's, and the bench "
        "process's (the gRPC clients, or ORT itself for the in-process modes); they share the machine's cores.\n\n"
    )
    if not b.samples:
        return head + f"Part B failed: {b.error or 'no measurement'}\n"
    rows = []
    for mode in b.modes:
        ok = _seq_ok(b.samples, mode)
        cells = [_fmt(_mid([getattr(s, k) for s in ok]), d)
                 for k, d in (("throughput", 1), ("p50_ms", 2), ("p99_ms", 2), ("server_cpu_ms", 3),
                              ("client_cpu_ms", 3))]  # fmt: skip
        rows.append(
            [mode_label(mode, b), str(len(ok)), *cells, _range([s.throughput for s in ok if s.throughput], 1)]
        )
    header = ["mode", "rounds", "chunks/s", "p50 (ms)", "p99 (ms)", "server CPU/chunk (ms)",
              "bench process CPU/chunk (ms)", "per-round chunks/s"]  # fmt: skip
    text = head + table(header, rows)

    batch_rows = []
    for mode in (OLDEST, DIRECT):
        ok = _seq_ok(b.samples, mode)
        merged: dict[int, int] = {}
        for s in ok:
            for size, count in (s.batches or {}).items():
                merged[size] = merged.get(size, 0) + count
        executions = sum(merged.values())
        if not executions:
            continue
        inferences = sum(s.counts[0] for s in ok if s.counts)
        runs = sum(s.counts[1] for s in ok if s.counts)
        mean_batch = sum(size * count for size, count in merged.items()) / executions
        shares = [
            f"{sum(c for size, c in merged.items() if lo <= size <= hi) / executions:.0%}"
            for lo, hi in BUCKETS
        ]
        top = sorted(merged.items(), key=lambda item: -item[1])[:3]
        batch_rows.append([
            mode_label(mode, b), f"{executions:,}", f"{mean_batch:.1f}",
            f"{inferences / runs:.1f}" if runs else "-", *shares,
            ", ".join(f"{size} ({count / executions:.0%})" for size, count in top),
        ])  # fmt: skip
    if batch_rows:
        text += (
            "\n\nBatch sizes the model ran (server statistics, batch_stats compute_infer counts, summed over the "
            "rounds, warm-up and closing requests included; mean = sum(size x count) / executions; requests per "
            "execution = inference_count / execution_count deltas):\n\n"
        )
        bucket_names = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in BUCKETS]
        text += table(["model", "executions", "mean batch", "requests / execution", *bucket_names, "commonest"],
                      batch_rows)  # fmt: skip

    tp = {m: _mid([s.throughput for s in _seq_ok(b.samples, m)]) for m in b.modes}
    ratio_rows = []
    for over, under in ((DIRECT, OLDEST), (OLDEST, ORT_1), (DIRECT, ORT_1), (OLDEST, ORT_N), (DIRECT, ORT_N)):
        if over in tp and under in tp and tp[over] and tp[under]:
            ratio_rows.append([f"{over} / {under}", f"{tp[over] / tp[under]:.2f}",  # type: ignore[operator]
                               _range(_seq_ratios(b.samples, over, under))])  # fmt: skip
    if ratio_rows:
        text += "\n\nThroughput ratios (chunks/s; medians over the rounds; per-round: within each round):\n\n"
        text += table(["ratio", "median", "per-round"], ratio_rows)

    checks = []
    for mode in b.modes:
        ok = _seq_ok(b.samples, mode)
        checked = sum(s.checked for s in ok)
        worst = max((s.max_diff for s in ok), default=0.0)
        verdict = "same as vad.reference()" if worst <= VAD_TOLERANCE else "**DIFFERENT**"
        checks.append(
            f"- {mode_label(mode, b)}: {checked} completed sequences compared, max |diff| {worst:.1e}: {verdict}"
        )
    text += (
        f"\n\nOutputs against vad.reference() (tolerance {VAD_TOLERANCE:g}): before the runs, "
        f"{b.check_streams} streams at once per served model, each a whole sequence "
        "on its own signal:\n"
        + "\n".join(f"- {line}" for line in b.checks or ["-"])
        + "\n\nand in the runs, every sequence completed (warm-up included; a sequence cut by the window's end is "
        "not compared):\n"
    )
    text += "\n".join(checks)
    failures = [f"- round {s.round + 1} {s.mode}: {s.error}" for s in b.samples if s.error]
    if b.error:
        failures.append(f"- {b.error}")
    if failures:
        text += "\n\nFailed runs:\n" + "\n".join(failures)
    return text + "\n"


def part_b_failed(b: PartB) -> bool:
    wrong = any("WRONG" in line for line in b.checks)
    return wrong or bool(b.error) or any(s.error or s.max_diff > VAD_TOLERANCE for s in b.samples)


# ============================================================================================== helpers


# ================================================================================================= main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument(
        "--models", nargs="+", choices=LARGE_MODELS, default=list(LARGE_MODELS), help="Part A"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], metavar="N", help="Part A")
    parser.add_argument("--rounds-a", type=int, default=2, help="Part A rounds")
    parser.add_argument("--perf-interval", type=int, default=1500, help="Part A: perf_analyzer window (ms)")
    parser.add_argument("--perf-windows", type=int, default=3, help="Part A: windows per perf_analyzer run")
    parser.add_argument("--streams", type=int, default=32, help="Part B: concurrent streams (sequences)")
    parser.add_argument("--audio-seconds", type=float, default=3.0, help="Part B: audio per sequence")
    parser.add_argument("--seconds", type=float, default=8.0, help="Part B: measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="Part B: warm-up seconds per run")
    parser.add_argument("--rounds-b", type=int, default=3, help="Part B rounds")
    parser.add_argument("--skip-ort-batch", action="store_true", help="Part B: no in-process batch-N ceiling")
    add_output_options(parser, "stateful")
    args = parser.parse_args(argv)
    if min(args.rounds_a, args.rounds_b, args.perf_windows, args.streams, *args.concurrency) < 1:
        parser.error("rounds, windows, streams and concurrency must be at least 1")
    if args.seconds <= 0 or args.audio_seconds <= 0 or args.perf_interval <= 0:
        parser.error("--seconds, --audio-seconds and --perf-interval must be positive")
    return args


def header(loads: tuple[str, str], started: float) -> str:
    return run_header(
        "Stateful and large-tensor serving: system shared memory, sequence batching", loads, started
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    out_dir = results_dir(args.out_dir, "stateful")
    load_start = load_note()
    print(f"[load] {load_start}", file=sys.stderr)
    sections, failed = [], False
    with tempfile.TemporaryDirectory(prefix="kiln-bench-stateful-") as tmp:
        if args.part in ("a", "both"):
            part_a = run_part_a(args, Path(tmp), out_dir)
            sections.append(report_part_a(part_a))
            failed |= bool(part_a.error) or any(s.error for s in part_a.samples)
            failed |= any("WRONG" in c for c in part_a.checks)
        if args.part in ("b", "both"):
            part_b = run_part_b(args, Path(tmp), out_dir)
            sections.append(report_part_b(part_b))
            failed |= part_b_failed(part_b)
    text = header((load_start, load_note()), started) + "\n" + "\n\n".join(x.strip() for x in sections) + "\n"
    publish(text, args.markdown_out, out_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
