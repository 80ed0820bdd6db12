"""The execution contract end to end: a real server with small in-process backends (tests/contract_backends.py)
answering real tritonclient calls over HTTP and gRPC."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess

BACKENDS = {
    "echo": "EchoBackend",
    "repeat": "RepeatBackend",
    "caller": "CallerBackend",
    "probe": "ProbeBackend",
}

CONFIGS = {
    # no readable signature: the config alone describes the model; dynamic batching merges requests
    "echo": """backend: "echo" max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 200000 }
input [{ name: "IN" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [2] }, { name: "IDENTITY" data_type: TYPE_STRING dims: [1] }]""",
    "repeat": """backend: "repeat" max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "N" data_type: TYPE_INT32 dims: [1] },
       { name: "DELAY_MS" data_type: TYPE_FP32 dims: [1] optional: true }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]""",
    "caller": """backend: "caller" max_batch_size: 0
parameters { key: "callee" value: { string_value: "add_one" } }
input [{ name: "IN" data_type: TYPE_FP32 dims: [1, 4] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1, 4] }]""",
    "probe": """backend: "probe" max_batch_size: 4
instance_group [{ count: 2 kind: KIND_CPU }]
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP64 dims: [2] }]""",
    "decoupled_probe": """backend: "probe" max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP64 dims: [2] }]""",
}


def _add_one() -> onnx.ModelProto:
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["IN", "one"], ["OUT"])],
        "add_one",
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [1, 4])],
        [one],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION
    )


def _repository(root: Path) -> Path:
    for name, config in CONFIGS.items():
        backend = config.split('"')[1]
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / f"model.{backend}").write_text("")
        (root / name / "config.pbtxt").write_text(config + "\n")
    # the callee: a real ONNX model, OUT = IN + 1 on [1, 4]
    write_model(root, "add_one", _add_one(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = _repository(tmp_path_factory.mktemp("contract"))
    flags = [f"--backend={n}=contract_backends:{c}" for n, c in BACKENDS.items()]
    proc = KilnProcess([repo], "--strict-readiness", "false", *flags, log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _stats(server: KilnProcess, name: str) -> dict[str, Any]:
    return httpclient.InferenceServerClient(server.http_url).get_inference_statistics(name)["model_stats"][0]


def _echo_input(module: Any, value: float) -> list[Any]:
    x = module.InferInput("IN", [1, 2], "FP32")
    x.set_data_from_numpy(np.full((1, 2), value, np.float32))
    return [x]


def test_models_without_a_signature_load_from_their_config(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert {n: index[n]["state"] for n in ("echo", "repeat", "caller", "probe")} == dict.fromkeys(
        ("echo", "repeat", "caller", "probe"), "READY"
    )
    # a decoupled model needs a backend that answers per request: a batched runtime is refused at load
    assert index["decoupled_probe"]["state"] == "UNAVAILABLE"
    assert "decoupled needs a backend that answers each request itself" in index["decoupled_probe"]["reason"]
    assert client.get_model_metadata("echo")["inputs"] == [
        {"name": "IN", "datatype": "FP32", "shape": [-1, 2]}
    ]


def test_the_request_identity_reaches_the_backend(server: KilnProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer(
        "echo",
        _echo_input(grpcclient, 3.0),
        request_id="req-7",
        sequence_id=42,
        sequence_start=True,
        priority=0,
        timeout=5000,
        parameters={"tenant": "acme"},
        outputs=[grpcclient.InferRequestedOutput("IDENTITY")],
    )
    seen = orjson.loads(result.as_numpy("IDENTITY")[0, 0])
    assert seen["id"] == "req-7" and seen["correlation_id"] == 42
    assert seen["sequence_start"] is True and seen["sequence_end"] is False
    assert seen["timeout_us"] == 5000 and seen["parameters"] == {"tenant": "acme"}
    assert seen["outputs"] == ["IDENTITY"]
    # a string correlation id over HTTP
    http = httpclient.InferenceServerClient(server.http_url)
    out = http.infer("echo", _echo_input(httpclient, 1.0), sequence_id="user-9", sequence_end=True)
    seen = orjson.loads(out.as_numpy("IDENTITY")[0, 0])
    assert seen["correlation_id"] == "user-9" and seen["sequence_end"] is True


def test_one_failing_request_in_a_batch_fails_only_itself(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=4)
    before = _stats(server, "echo")["execution_count"]
    asks = [
        client.async_infer(
            "echo", _echo_input(httpclient, v), request_id=f"r{v}", parameters={"fail": v == 2}
        )
        for v in range(4)
    ]
    outcomes = []
    for ask in asks:
        try:
            outcomes.append(float(ask.get_result().as_numpy("OUT")[0, 0]))
        except InferenceServerException as e:
            outcomes.append(str(e))
    assert outcomes[0] == 0.0 and outcomes[1] == 1.0 and outcomes[3] == 3.0
    assert "request 'r2' asked to fail" in str(outcomes[2])
    assert _stats(server, "echo")["execution_count"] - before < 4  # they were scheduled together


def _stream(server: KilnProcess, model: str, feeds: dict[str, np.ndarray], **kw: Any) -> list[Any]:
    """Responses of one streamed request until the server has nothing more (a bounded wait)."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=partial(lambda q, result, error: q.put(error or result), results))
    inputs = []
    for name, value in feeds.items():
        tensor = grpcclient.InferInput(
            name, list(value.shape), "INT32" if value.dtype == np.int32 else "FP32"
        )
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client.async_stream_infer(model, inputs, request_id="s1", **kw)
    got = []
    while True:
        try:
            item = results.get(timeout=1.5 if got else 4)
        except queue.Empty:
            break
        got.append(item)
        if kw.get("enable_empty_final_response") and not isinstance(item, InferenceServerException):
            if item.get_response().parameters["triton_final_response"].bool_param:
                break
    client.stop_stream()
    client.close()
    return got


@pytest.mark.parametrize("count", [0, 1, 5])
def test_decoupled_model_streams_zero_one_or_many_responses(server: KilnProcess, count: int) -> None:
    got = _stream(server, "repeat", {"N": np.array([count], np.int32)})
    assert [int(r.as_numpy("OUT")[0]) for r in got] == list(range(count))


def test_empty_final_response_carries_the_final_flag(server: KilnProcess) -> None:
    got = _stream(server, "repeat", {"N": np.array([3], np.int32)}, enable_empty_final_response=True)
    flags = [r.get_response().parameters["triton_final_response"].bool_param for r in got]
    assert flags == [False, False, False, True]
    assert got[-1].get_response().outputs == [] and got[-1].get_response().id == "s1"


def test_responses_stream_as_they_are_produced(server: KilnProcess) -> None:
    """With 300 ms between responses, the first arrives long before the last is produced."""
    import time

    results: queue.Queue[tuple[float, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((time.monotonic(), error or result)))
    n = grpcclient.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([3], np.int32))
    delay = grpcclient.InferInput("DELAY_MS", [1], "FP32")
    delay.set_data_from_numpy(np.array([300], np.float32))
    sent = time.monotonic()
    client.async_stream_infer("repeat", [n, delay])
    arrivals = [results.get(timeout=10)[0] - sent for _ in range(3)]
    client.stop_stream()
    client.close()
    assert arrivals[0] < arrivals[2] - 0.3  # not held back until the end


def test_one_response_endpoints_refuse_a_decoupled_model(server: KilnProcess) -> None:
    n = np.array([2], np.int32)
    http = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("N", [1], "INT32")
    x.set_data_from_numpy(n)
    with pytest.raises(InferenceServerException, match="decoupled") as e:
        http.infer("repeat", [x])
    assert e.value.status() == "501"
    g = grpcclient.InferInput("N", [1], "INT32")
    g.set_data_from_numpy(n)
    with pytest.raises(InferenceServerException, match="ModelStreamInfer") as e:
        grpcclient.InferenceServerClient(server.grpc_url).infer("repeat", [g])
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    assert http.is_server_live()


def test_a_backend_calls_another_model_through_the_core(server: KilnProcess) -> None:
    before = _stats(server, "add_one")["inference_stats"]["success"]["count"]
    x = httpclient.InferInput("IN", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    out = httpclient.InferenceServerClient(server.http_url).infer("caller", [x]).as_numpy("OUT")
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32).reshape(1, 4) + 1)
    # the inner call went through the callee's own scheduler and statistics
    assert _stats(server, "add_one")["inference_stats"]["success"]["count"] == before + 1


def test_instances_of_one_model_execute_at_the_same_time(server: KilnProcess) -> None:
    """Each probe execution returns only once another is in flight: two answers prove two instances overlap."""
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    x = httpclient.InferInput("IN", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), np.float32))
    asks = [client.async_infer("probe", [x]) for _ in range(2)]
    (s1, e1), (s2, e2) = (ask.get_result().as_numpy("OUT")[0] for ask in asks)
    assert s1 < e2 and s2 < e1


def test_unload_dependents_unloads_what_a_model_calls(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo")
    flags = [f"--backend={n}=contract_backends:{c}" for n, c in BACKENDS.items()]
    proc = KilnProcess([repo], "--model-control-mode", "explicit", "--load-model", "caller",
                       "--load-model", "add_one", *flags, log_dir=tmp_path)  # fmt: skip
    with proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        assert client.is_model_ready("caller") and client.is_model_ready("add_one")
        client.unload_model("caller")  # without the flag, what it calls stays loaded
        assert client.is_model_ready("add_one")
        client.load_model("caller")
        client.unload_model("caller", unload_dependents=True)
        assert not client.is_model_ready("caller") and not client.is_model_ready("add_one")
