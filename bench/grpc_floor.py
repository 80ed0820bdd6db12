"""What a gRPC ModelInfer costs the server, from the floor up: Python gRPC servers that answer without doing
anything, Kiln on a Python and an ONNX model, and (with --triton) real Triton on the same model.py.

Every server is driven by the same client (bench/_loadgen.py over gRPC: one pre-serialised batch-1 ModelInfer of
add_sub's two FP32 [4] inputs, sent as bytes on a grpc.aio channel, `--concurrency` requests in flight), one
server at a time, alternating rounds. The figure that matters is the server's CPU per request (user + system
of the server's processes - Triton's Python stub included - from /proc, over the measured window, divided by
the requests answered in it): on this 2-core machine the client and the server share the cores, so CPU per
request is what limits throughput.

The floor servers answer ModelInfer with one fixed, pre-serialised ModelInferResponse:
  * grpc.aio  - grpc.aio.server on uvloop (as `kiln serve` runs it), a generic handler on bytes: no protobuf
                parsing, no model, no Kiln;
  * grpc sync - grpc.server with a thread pool of `--sync-threads`, the same handler;
  * grpc.aio + protobuf - the generated GRPCInferenceService servicer on grpc.aio: the request parsed, add and
                sub in numpy, a ModelInferResponse built and serialised - the least a real server does.
Whatever the servers with a model cost above the grpc.aio floor is the model, the protobuf conversion and the
server's own code; what the floor costs is the gRPC stack's, and no Python code on top can go under it.

Usage:
  .venv/bin/python bench/grpc_floor.py --markdown-out bench/results/grpc_floor.md          # ~2 min
  .venv/bin/python bench/grpc_floor.py --triton        # also Triton (bash bench/setup_triton.sh first)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from _common import (
    REPO_ROOT,
    ServerEndpoints,
    add_output_options,
    free_ports,
    kiln_server,
    process_tree_cpu_seconds,
    publish,
    results_dir,
    run_header,
    running_server,
    venv_dir,
    venv_python,
)
from _loadgen import run_load
from _python_models import ADD_SUB, ADD_SUB_PY, DIMS, python_config, write_python_model
from _triton import Triton, add_triton_options

ONNX_ADD_SUB = "add_sub_onnx"

FLOOR_SERVER = r"""
import asyncio, sys
from concurrent import futures

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

mode, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
response = service_pb2.ModelInferResponse(model_name="add_sub", model_version="1")
for name in ("OUTPUT0", "OUTPUT1"):
    out = response.outputs.add(name=name, datatype="FP32")
    out.shape.extend([4])
    response.raw_output_contents.append(bytes(16))
answer = response.SerializeToString()


def same(b):
    return b


def handlers(fn):
    method = grpc.unary_unary_rpc_method_handler(fn, request_deserializer=same, response_serializer=same)
    return [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": method})]


class AddSub(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):
        a, b = (np.frombuffer(raw, np.float32) for raw in request.raw_input_contents)
        reply = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for name, value in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
            out = reply.outputs.add(name=name, datatype="FP32")
            out.shape.extend(request.inputs[0].shape)
            reply.raw_output_contents.append(value.tobytes())
        return reply


if mode in ("aio", "servicer"):
    import uvloop

    async def infer(request, context):
        return answer

    async def main():
        server = grpc.aio.server()
        if mode == "aio":
            server.add_generic_rpc_handlers(handlers(infer))
        else:
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(AddSub(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    uvloop.run(main())
else:
    server = grpc.server(futures.ThreadPoolExecutor(threads))
    server.add_generic_rpc_handlers(handlers(lambda request, context: answer))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
"""


@dataclass
class Row:
    server: str
    what: str
    cpu_us: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    p50_us: list[float] = field(default_factory=list)


@contextlib.contextmanager
def floor_server(mode: str, threads: int, log: Path) -> Iterator[ServerEndpoints]:
    (port,) = free_ports(1)
    command = [str(venv_python()), "-c", FLOOR_SERVER, mode, str(port), str(threads)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"ready" not in log.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{mode} floor server did not start:\n{log.read_text()[-800:]}")
                time.sleep(0.1)
            yield ServerEndpoints(0, port, 0, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextlib.contextmanager
def triton_server(repository: Path, log: Path, args: argparse.Namespace) -> Iterator[ServerEndpoints]:
    triton = Triton.find(args.triton_venv, args.triton_backends)
    endpoints = ServerEndpoints(*free_ports(3))
    ready = f"http://{endpoints.http_url}/v2/health/ready"
    with running_server(triton.command(repository, endpoints), log, ready, 120, triton.env()) as process:
        yield ServerEndpoints(endpoints.http_port, endpoints.grpc_port, endpoints.metrics_port, process.pid)


def build_repository(root: Path) -> Path:
    """add_sub (the Python model.py of bench/vs_triton_python.py, FP32 [4]) and an ONNX model of the same I/O."""
    import onnx
    from onnx import TensorProto, helper

    pair = ("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")
    write_python_model(root, ADD_SUB, ADD_SUB_PY, python_config(ADD_SUB, *pair, DIMS, 0))
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [DIMS]) for n in (*pair[0], *pair[1])]
    graph = helper.make_graph(
        [
            helper.make_node("Add", list(pair[0]), ["OUTPUT0"]),
            helper.make_node("Sub", list(pair[0]), ["OUTPUT1"]),
        ],
        "add_sub",
        tensors[:2],
        tensors[2:],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / ONNX_ADD_SUB / "1").mkdir(parents=True)
    onnx.save(model, str(root / ONNX_ADD_SUB / "1" / "model.onnx"))
    config = python_config(ONNX_ADD_SUB, *pair, DIMS, 0).replace(
        'backend: "python"', 'backend: "onnxruntime"'
    )
    (root / ONNX_ADD_SUB / "config.pbtxt").write_text(config)
    return root


def measure(
    endpoints: ServerEndpoints, model: str, args: argparse.Namespace, work: Path
) -> tuple[float, ...]:
    """(server CPU us per request, requests/s, p50 us) over one measured window."""
    inputs = {n: np.ones(DIMS, np.float32) for n in ("INPUT0", "INPUT1")}
    # run_load's own schedule: 2 s for the client to connect, then the warm-up, then the window
    window_start = time.time() + 2.0 + args.warmup
    cpu: list[float] = []

    def sample() -> None:
        for at in (window_start, window_start + args.seconds):
            time.sleep(max(0.0, at - time.time()))
            cpu.append(process_tree_cpu_seconds(endpoints.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = run_load(
        endpoints.grpc_url, "grpc", model, inputs, args.concurrency, args.seconds, args.warmup, work
    )
    sampler.join()
    if result.errors or not result.requests:
        raise RuntimeError(
            f"{model} on {endpoints.grpc_url}: {result.errors} errors, first: {result.first_error}"
        )
    return (cpu[1] - cpu[0]) * 1e6 / result.requests, result.throughput, result.p50_us


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def render(rows: list[Row], args: argparse.Namespace, header: str) -> str:
    floor = median(rows[0].cpu_us)
    lines = [
        header,
        f"Client: bench/_loadgen.py over gRPC, concurrency {args.concurrency}, {args.seconds:.0f} s windows after "
        f"{args.warmup:.0f} s warm-up, {args.rounds} alternating rounds (medians; every round in brackets).",
        "",
        "| server | what it does per request | server CPU us / request | above the grpc.aio floor "
        "| requests/s | p50 us |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        every = ", ".join(f"{v:.0f}" for v in row.cpu_us)
        lines.append(
            f"| {row.server} | {row.what} | {median(row.cpu_us):.0f} ({every}) | {median(row.cpu_us) - floor:+.0f} "
            f"| {median(row.throughput):,.0f} | {median(row.p50_us):.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync-threads", type=int, default=2)
    parser.add_argument("--triton", action="store_true", help="also real Triton (bash bench/setup_triton.sh)")
    add_triton_options(parser)
    add_output_options(parser, "grpc_floor")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out_dir = results_dir(args.out_dir, "grpc_floor")
    repository = build_repository(Path(tempfile.mkdtemp(prefix="grpc_floor_")) / "models")
    triton_repository = (
        repository.parent / "triton"
    )  # the Python model alone: this Triton has no ONNX backend
    shutil.copytree(repository / ADD_SUB, triton_repository / ADD_SUB)
    if not (venv_dir() / "bin" / "kiln").exists():
        sys.exit(f"no Kiln in {venv_dir()}; run `make setup`")

    def plan() -> list[tuple[Row, str, contextlib.AbstractContextManager[ServerEndpoints]]]:
        return [
            (rows[0], ADD_SUB, floor_server("aio", 0, out_dir / "aio.log")),
            (rows[1], ADD_SUB, floor_server("sync", args.sync_threads, out_dir / "sync.log")),
            (rows[2], ADD_SUB, floor_server("servicer", 0, out_dir / "servicer.log")),
            (rows[3], ADD_SUB, kiln_server(repository, out_dir / "kiln.log")),
            (rows[4], ONNX_ADD_SUB, kiln_server(repository, out_dir / "kiln.log")),
            *(
                [(rows[5], ADD_SUB, triton_server(triton_repository, out_dir / "triton.log", args))]
                if args.triton
                else []
            ),
        ]

    rows = [
        Row("grpc.aio (uvloop)", "answers a fixed response; nothing parsed"),
        Row(f"grpc sync ({args.sync_threads} threads)", "the same"),
        Row("grpc.aio + protobuf", "parses the request, add/sub in numpy, builds the response"),
        Row("Kiln", "add_sub model.py (Python backend, in-process)"),
        Row("Kiln", "add_sub ONNX model (ONNX Runtime)"),
        *([Row("Triton 2.51", "the same add_sub model.py (Python backend stub)")] if args.triton else []),
    ]
    for round_no in range(args.rounds):
        cases = plan()
        for row, model, server in cases:
            with server as endpoints:
                cpu_us, rps, p50 = measure(endpoints, model, args, out_dir / "load")
            row.cpu_us.append(cpu_us)
            row.throughput.append(rps)
            row.p50_us.append(p50)
            print(f"[round {round_no + 1}] {row.server}, {row.what}: {cpu_us:.0f} us CPU / request, "
                  f"{rps:,.0f} req/s", file=sys.stderr)  # fmt: skip
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    header = run_header(
        "gRPC: the server's CPU per ModelInfer, from the floor up", (load_start, load_end), started
    )
    publish(render(rows, args, header), args.markdown_out, out_dir)
    return 0


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
