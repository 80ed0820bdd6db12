"""A small closed-loop load generator for KServe V2 servers, used identically against Kiln and MLServer.

perf_analyzer cannot drive MLServer (it asks every server for Triton's model config, which MLServer does not
have), so bench/vs_mlserver.py uses this for both servers. It sends the same pre-built request for the whole
run, so the client's cost per request is a fixed, small, identical amount for both servers:

  * grpc - `inference.GRPCInferenceService/ModelInfer`, the request serialised once (inputs as
    `raw_input_contents`), sent as bytes on a grpc.aio channel; responses are parsed only to check them;
  * http - `POST /v2/models/{m}/infer` with one pre-encoded JSON body on an aiohttp session (MLServer has no
    binary-tensor extension, so JSON it is for both).

`concurrency` requests are kept in flight, spread over `processes` worker processes (asyncio tasks in each).
Latencies count from a common start (after `warmup` seconds) for `duration` seconds.

Library use: run_load(...); command line (the worker): python bench/_loadgen.py --worker SPEC_JSON
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.perf.loadgen import closed_loop, infer_request
from kiln.types.datatypes import from_numpy


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    throughput: float  # requests/s
    p50_us: float
    p99_us: float
    mean_us: float
    first_error: str = ""


def http_request_body(inputs: dict[str, np.ndarray]) -> bytes:
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": from_numpy(a.dtype).name,
                "data": a.ravel().tolist(),
            }
            for n, a in inputs.items()
        ]
    }
    return json.dumps(body).encode()


async def _grpc_worker(spec: dict, payload: bytes) -> tuple[list[int], int, str]:
    import grpc
    from tritonclient.grpc import service_pb2

    async with grpc.aio.insecure_channel(spec["url"]) as channel:
        # one checked request first: the server answers this payload with outputs
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        response = service_pb2.ModelInferResponse.FromString(await call(payload))
        if not response.outputs:
            raise RuntimeError(f"no outputs in the response: {response}")
    return await closed_loop(spec["url"], payload, spec["tasks"], spec["start"], spec["end"])


async def _http_worker(spec: dict, payload: bytes) -> tuple[list[int], int, str]:
    import aiohttp

    latencies: list[int] = []
    errors, first_error = 0, ""
    url = f"http://{spec['url']}/v2/models/{spec['model']}/infer"
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url, data=payload, headers=headers) as response:
            body = await response.json()
            if response.status != 200 or not body.get("outputs"):
                raise RuntimeError(f"HTTP {response.status}: {str(body)[:300]}")

        async def loop() -> None:
            nonlocal errors, first_error
            while time.time() < spec["end"]:
                start = time.perf_counter_ns()
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        first_error = first_error or f"HTTP {response.status}"
                        continue
                if spec["start"] <= time.time() < spec["end"]:
                    latencies.append(time.perf_counter_ns() - start)

        await asyncio.gather(*(loop() for _ in range(spec["tasks"])))
    return latencies, errors, first_error


def _worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    inputs = {name: np.load(path) for name, path in spec["inputs"].items()}
    if spec["protocol"] == "grpc":
        payload = infer_request(spec["model"], inputs)
        latencies, errors, first = asyncio.run(_grpc_worker(spec, payload))
    else:
        payload = http_request_body(inputs)
        latencies, errors, first = asyncio.run(_http_worker(spec, payload))
    json.dump({"latencies_ns": latencies, "errors": errors, "first_error": first}, sys.stdout)


def run_load(
    url: str,
    protocol: str,
    model: str,
    inputs: dict[str, np.ndarray],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    workdir: Path,
    processes: int = 2,
    python: str = sys.executable,
) -> LoadResult:
    """Closed loop with `concurrency` requests in flight, over min(processes, concurrency) processes."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, array in inputs.items():
        paths[name] = str(workdir / f"input_{name}.npy")
        np.save(paths[name], array)
    processes = max(1, min(processes, concurrency))
    start = time.time() + 2.0 + warmup_s  # 2 s for the workers to import and connect
    tasks = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    procs = []
    for n in tasks:
        spec = {
            "url": url, "protocol": protocol, "model": model, "inputs": paths, "tasks": n,
            "start": start, "end": start + duration_s,
        }  # fmt: skip
        procs.append(
            subprocess.Popen(
                [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    latencies: list[np.ndarray] = []
    errors, first_error = 0, ""
    for proc in procs:
        out, err = proc.communicate(timeout=duration_s + warmup_s + 120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"load worker failed ({proc.returncode}): {err.decode(errors='replace')[-800:]}"
            )
        data = json.loads(out)
        latencies.append(np.asarray(data["latencies_ns"], dtype=np.int64))
        errors += data["errors"]
        first_error = first_error or data["first_error"]
    merged = np.concatenate(latencies) if latencies else np.zeros(0, np.int64)
    if merged.size == 0:
        return LoadResult(0, errors, 0.0, float("nan"), float("nan"), float("nan"), first_error)
    return LoadResult(
        requests=int(merged.size),
        errors=errors,
        throughput=merged.size / duration_s,
        p50_us=float(np.percentile(merged, 50)) / 1e3,
        p99_us=float(np.percentile(merged, 99)) / 1e3,
        mean_us=float(merged.mean()) / 1e3,
        first_error=first_error,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        sys.exit("usage: python bench/_loadgen.py --worker SPEC_JSON (used by bench/vs_mlserver.py)")
