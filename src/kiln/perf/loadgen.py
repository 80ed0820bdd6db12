"""A closed-loop load generator for a running server: ``concurrency`` requests always in flight over gRPC.

``kiln tune`` measures each candidate config with it. One request is built and serialised once
(``ModelInfer`` with the inputs as ``raw_input_contents``) and sent again and again on one ``grpc.aio`` channel,
so the client's cost per request is small and the same for every configuration measured. Latency is counted
from the moment a request is sent to its answer (client side, as perf_analyzer reports it), for the requests that
complete inside the measurement window, after a warm-up the window does not count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kiln.errors import InvalidArgumentError
from kiln.types.datatypes import from_numpy

_MESSAGE_LIMIT = 256 << 20


@dataclass(frozen=True)
class LoadPoint:
    """One measurement at one concurrency: successful requests per second and client-side latencies."""

    concurrency: int
    requests: int  # completed inside the window
    errors: int
    duration_s: float
    throughput: float  # requests per second (inferences per second for batch-1 requests)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    first_error: str = ""


def infer_request(model: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialised ``ModelInferRequest`` carrying ``inputs`` as raw tensors."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = from_numpy(array.dtype)
        if datatype.name == "BYTES":
            raise InvalidArgumentError(f"input '{name}': the load generator sends numeric tensors only")
        tensor = request.inputs.add(name=name, datatype=datatype.name)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()


async def closed_loop(
    url: str, payload: bytes, concurrency: int, start: float, end: float
) -> tuple[list[int], int, str]:
    """``concurrency`` copies of ``payload`` always in flight until ``end``; latencies (ns) of the requests sent
    at or after ``start`` that completed before ``end``, the error count and the first error. ``start`` and
    ``end`` are ``time.time()`` values, so that several client processes can share one window."""
    import grpc

    options = [
        ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
        ("grpc.max_send_message_length", _MESSAGE_LIMIT),
    ]
    latencies: list[int] = []
    errors, first_error = 0, ""
    # the window on this process's monotonic clock
    offset = time.perf_counter() - time.time()
    start, end = start + offset, end + offset
    async with grpc.aio.insecure_channel(url, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def client() -> None:
            nonlocal errors, first_error
            while (sent := time.perf_counter()) < end:
                try:
                    await call(payload, timeout=max(30.0, 4 * (end - sent)))
                except grpc.aio.AioRpcError as e:
                    if sent >= start:
                        errors += 1
                        first_error = first_error or f"{e.code().name}: {e.details()}"
                    continue
                done = time.perf_counter()
                if sent >= start and done < end:
                    latencies.append(int((done - sent) * 1e9))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors, first_error


def run_load(
    url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
) -> LoadPoint:
    """Keep ``concurrency`` requests in flight against ``url`` (host:port of the gRPC endpoint) for
    ``warmup_s + duration_s`` seconds; the point covers the last ``duration_s``."""
    if concurrency < 1 or duration_s <= 0:
        raise InvalidArgumentError("the load needs a concurrency >= 1 and a positive duration")
    payload = infer_request(model, inputs)
    start = time.time() + warmup_s
    latencies, errors, first_error = asyncio.run(
        closed_loop(url, payload, concurrency, start, start + duration_s)
    )
    return point(concurrency, latencies, errors, duration_s, first_error)


def point(
    concurrency: int, latencies_ns: list[int], errors: int, duration_s: float, first_error: str = ""
) -> LoadPoint:
    if not latencies_ns:
        nan = float("nan")
        return LoadPoint(concurrency, 0, errors, duration_s, 0.0, nan, nan, nan, nan, first_error)
    ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LoadPoint(
        concurrency=concurrency,
        requests=len(ms),
        errors=errors,
        duration_s=duration_s,
        throughput=len(ms) / duration_s,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        first_error=first_error,
    )
