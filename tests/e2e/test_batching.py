"""Dynamic batching, queue policies, instance groups, cancellation and draining, end to end via tritonclient."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servers import KilnProcess, wait_until


def inputs(mod: Any, value: float) -> list[Any]:
    a = np.full((1, 4), value, np.float32)
    tensors = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
    for t in tensors:
        t.set_data_from_numpy(a)
    return tensors


def stats(server: KilnProcess, model: str) -> dict[str, Any]:
    return httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)["model_stats"][0]


def metric(server: KilnProcess, name: str, model: str, reason: str | None = None) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'{name}{{model="{model}"') and (
                reason is None or f'reason="{reason}"' in line
            ):
                return float(line.split()[-1])
    raise AssertionError(f"{name} for {model} not found")


def test_concurrent_requests_form_batches(server: KilnProcess) -> None:
    async def burst() -> list[Any]:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            return await asyncio.gather(*[client.infer("batched", inputs(grpcclient, v)) for v in range(6)])
        finally:
            await client.close()

    before = stats(server, "batched")
    results = asyncio.run(burst())
    assert [r.as_numpy("OUTPUT0")[0, 0] for r in results] == [2 * v for v in range(6)]
    after = stats(server, "batched")
    assert after["inference_count"] - before["inference_count"] == 6
    executions = after["execution_count"] - before["execution_count"]
    assert executions < 6, "six concurrent requests within the queue delay must share executions"
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])
    assert metric(server, "nv_inference_exec_count", "batched") == after["execution_count"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_full_queue_rejects_at_once(server: KilnProcess, transport: str) -> None:
    mod = httpclient if transport == "http" else grpcclient
    client = (mod.InferenceServerClient(server.http_url) if transport == "http"
              else mod.InferenceServerClient(server.grpc_url))  # fmt: skip
    first = threading.Thread(target=lambda: client.infer("queue_of_one", inputs(mod, 1)))
    first.start()
    wait_until(
        lambda: metric(server, "nv_inference_pending_request_count", "queue_of_one") == 1,
        what="the first request waits in the queue",
    )
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        mod.InferenceServerClient(server.http_url if transport == "http" else server.grpc_url).infer(
            "queue_of_one", inputs(mod, 2)
        )
    assert time.monotonic() - started < 1.0, "a full queue must answer at once"
    assert "queue" in str(err.value) and "full" in str(err.value)
    assert err.value.status() == ("503" if transport == "http" else "StatusCode.UNAVAILABLE")
    first.join(10)


@pytest.mark.parametrize("timeout_us", [None, 20000])
def test_queue_timeout_is_an_error_not_a_silent_drop(server: KilnProcess, timeout_us: int | None) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="timed out"):
        client.infer("queue_timeout", inputs(httpclient, 1), timeout=timeout_us)
    assert time.monotonic() - started < 1.5  # long before the 2 s queue delay
    assert metric(server, "nv_inference_request_failure", "queue_timeout", reason="REJECTED") >= 1


def test_priorities(server: KilnProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for priority in (0, 1, 2):
        out = client.infer("prioritised", inputs(grpcclient, 3), priority=priority).as_numpy("OUTPUT0")
        assert out[0, 0] == 6
    with pytest.raises(InferenceServerException, match="priority 3 is out of range"):
        client.infer("prioritised", inputs(grpcclient, 3), priority=3)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_client_that_gives_up_leaves_the_queue(server: KilnProcess, transport: str) -> None:
    before = stats(server, "slow_queue")
    if transport == "grpc":
        with pytest.raises(InferenceServerException, match="Deadline") as err:
            grpcclient.InferenceServerClient(server.grpc_url).infer(
                "slow_queue", inputs(grpcclient, 1), client_timeout=0.2
            )
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    else:
        client = httpclient.InferenceServerClient(
            server.http_url, network_timeout=0.2, connection_timeout=0.2
        )
        with pytest.raises(TimeoutError):  # the client's socket times out and it hangs up
            client.infer("slow_queue", inputs(httpclient, 1))
        client.close()
    wait_until(
        lambda: metric(server, "nv_inference_pending_request_count", "slow_queue") == 0,
        timeout=1.0,
        what="the abandoned request leaves the queue",
    )
    # one more request: one instance runs the queue in order, so a request still queued would have run with
    # this one (two inferences) or before it (two executions) by the time this one is answered
    out = httpclient.InferenceServerClient(server.http_url).infer("slow_queue", inputs(httpclient, 2))
    assert out.as_numpy("OUTPUT0")[0, 0] == 4
    after = stats(server, "slow_queue")
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_count"] - before["inference_count"] == 1
    assert metric(server, "nv_inference_request_failure", "slow_queue", reason="CANCELED") >= 1


def test_a_model_with_two_instances_is_served_with_its_instance_group(server: KilnProcess) -> None:
    """The served config keeps both instances of the group. That they execute at the same time is proven in
    e2e/test_contract.py (test_instances_of_one_model_execute_at_the_same_time, with a barrier)."""
    http = httpclient.InferenceServerClient(server.http_url)
    groups = http.get_model_config("two_instances")["instance_group"]
    assert [(g["count"], g["kind"]) for g in groups] == [(2, "KIND_CPU")]
    grpc_groups = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("two_instances")
    assert [g.count for g in grpc_groups.config.instance_group] == [2]
    assert http.infer("two_instances", inputs(httpclient, 1)).as_numpy("OUTPUT0")[0, 0] == 2


def test_kind_gpu_without_a_gpu_is_a_clear_load_error(server: KilnProcess) -> None:
    index = {
        m["name"]: m for m in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    assert index["gpu_only"]["state"] == "UNAVAILABLE"
    assert "KIND_GPU" in index["gpu_only"]["reason"] and "no GPU" in index["gpu_only"]["reason"]


def test_sigterm_drains_in_flight_requests(test_repo: Path, tmp_path: Path) -> None:
    server = KilnProcess([test_repo], "--strict-readiness", "false", log_dir=tmp_path).start()
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            out = httpclient.InferenceServerClient(server.http_url).infer("slow_queue", inputs(httpclient, 4))
            result["value"] = out.as_numpy("OUTPUT0")[0, 0]
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(
        lambda: metric(server, "nv_inference_pending_request_count", "slow_queue") == 1,
        what="the request waits in the queue",
    )
    assert server.stop() == 0
    thread.join(10)
    assert result == {"value": 8.0}, result
