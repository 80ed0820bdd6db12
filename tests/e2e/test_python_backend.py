"""The Python backend (in-process): Triton-style model.py files of our own, served by a real server and called
through tritonclient — sync and async execute, BLS into an ONNX model, decoupled streaming, errors."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess

ADD_SUB = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        config = json.loads(args["model_config"])
        out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
        self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if (a < 0).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative input")))
                continue
            info = json.dumps({"name": self.args["model_name"], "instance": self.args["model_instance_name"],
                               "version": self.args["model_version"], "id": request.request_id(),
                               "parameters": json.loads(request.parameters())})
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype)),
                pb_utils.Tensor("INFO", np.array([[info.encode()]] * len(a), dtype=np.object_)),
            ]))
        return responses

    def finalize(self):
        pass
"""

ASYNC_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN")
            inner = pb_utils.InferenceRequest(model_name="add_sub_onnx", requested_output_names=["OUTPUT0"],
                                              inputs=[pb_utils.Tensor("INPUT0", x.as_numpy()),
                                                      pb_utils.Tensor("INPUT1", x.as_numpy())])
            answer = await inner.async_exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            missing = pb_utils.InferenceRequest(model_name="no_such_model", requested_output_names=["Y"],
                                                inputs=[pb_utils.Tensor("X", out)]).exec()
            assert missing.has_error() and "unknown model" in missing.error().message()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
"""

REPEAT = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.answer, args=(request,)).start()
        return None

    def answer(self, request):
        sender = request.get_response_sender()
        n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
        for i in range(n):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

BROKEN = """
class TritonPythonModel:
    def execute(self, requests):
        if len(requests) and requests[0].request_id() == "count":
            return []
        raise ValueError("something went wrong inside")
"""

AUTO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        for name in ("INPUT0", "INPUT1"):
            auto_complete_model_config.add_input({"name": name, "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        out = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a * b)]))
        return out
"""

METRICS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # the kinds spelled the three ways Triton's stub exports them
        requests = pb_utils.MetricFamily("kiln_test_requests", "requests seen", pb_utils.COUNTER)
        sizes = pb_utils.MetricFamily("kiln_test_sizes", "input sizes", pb_utils.MetricKind.HISTOGRAM)
        last = pb_utils.MetricFamily("kiln_test_last", "last input size", pb_utils.MetricFamily.GAUGE)
        self.count = requests.Metric(labels={"kind": "all"})
        self.sizes = sizes.Metric(labels={"kind": "all"}, buckets=[1.0, 10.0])
        self.last = last.Metric(labels={"kind": "all"})

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            self.count.increment(1)
            self.sizes.observe(float(x.size))
            self.last.set(float(x.size))
            ready = pb_utils.is_model_ready("add_sub_onnx")
            try:
                pb_utils.load_model("add_sub_onnx")
                loaded = "loaded"
            except pb_utils.TritonModelException as e:
                loaded = str(e)
            note = np.array([f"{ready}|{loaded}".encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x), pb_utils.Tensor("NOTE", note)]))
        return out
"""

BLS_DECOUPLED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "N")
            name = np.array([b"repeat_py"], dtype=np.object_)[0]  # bytes, as Triton's examples pass names
            inner = pb_utils.InferenceRequest(model_name=name, requested_output_names=["OUT"], inputs=[n])
            responses = await inner.async_exec(decoupled=True)
            total = 0
            for response in responses:  # a plain for, as with Triton
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
                if response.output_tensors():
                    total += int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0])
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([total]))]))  # int64
        return out
"""

# the rest of Triton's module surface: byte-tensor helpers, type numbers, log levels, the DLPack protocol, BLS
# flags and preferred memory, a decoupled BLS call cancelled after its first response, rescheduling refused
SURFACE = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            packed = pb_utils.serialize_byte_tensor(text)
            back = pb_utils.deserialize_bytes_tensor(packed)
            pb_utils.Logger.log("surface check", pb_utils.Logger.LogLevel.INFO)
            call = pb_utils.InferenceRequest(
                model_name="repeat_py", requested_output_names=["OUT"],
                inputs=[pb_utils.Tensor("N", np.array([5], np.int32))],
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
            call.set_flags(0)
            stream = call.exec(decoupled=True)
            first = next(stream)
            stream.cancel()
            try:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                reschedule = "accepted"
            except pb_utils.TritonModelException as e:
                reschedule = str(e)
            request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL)
            note = {
                "packed": len(packed), "back": [b.decode() for b in back],
                "empty": pb_utils.serialize_byte_tensor(np.array([], dtype=np.object_)) == (),
                "fp32": pb_utils.triton_to_numpy_type(11).__name__,
                "int32": pb_utils.numpy_to_triton_type(np.int32),
                "bytes": pb_utils.numpy_to_triton_type(np.object_),
                "dlpack": np.from_dlpack(pb_utils.Tensor("X", np.arange(3, dtype=np.float32))).tolist(),
                "first": int(pb_utils.get_output_tensor_by_name(first, "OUT").as_numpy()[0]),
                "after_cancel": len(list(stream)),
                "iterator": isinstance(stream, pb_utils.ResponseIterator),
                "reschedule": reschedule,
            }
            out = np.array([json.dumps(note).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("NOTE", out)]))
        return responses
"""

# Triton's optional is_ready(): asked on every readiness check; a flag file in the model's folder picks its answer
READY = """
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.folder = args["model_repository"]

    def is_ready(self):
        flag = lambda name: os.path.exists(os.path.join(self.folder, name))
        if flag("SLOW"):
            time.sleep(7)
        if flag("RAISE"):
            raise RuntimeError("the cache is cold")
        if flag("WEIRD"):
            return "yes"
        return not flag("NOT_READY")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "IN")]) for r in requests]
"""

READY_ASYNC = """
import asyncio
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def is_ready(self):
        await asyncio.sleep(0)
        return True

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "IN")]) for r in requests]
"""

# await async_exec(decoupled=True) returns at the callee's first response: the callee sends its second only once the
# caller, holding the first, writes a flag file ("late" if it waited 10 s for it)
HANDSHAKE = """
import os
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.flag = os.path.join(args["model_repository"], "GO")

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.answer, args=(request.get_response_sender(),)).start()
        return None

    def answer(self, sender):
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([b"first"], np.object_))]))
        deadline = time.monotonic() + 10
        while not os.path.exists(self.flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        second = b"second" if os.path.exists(self.flag) else b"late"
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([second], np.object_))]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

HANDSHAKE_CALLER = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.flag = os.path.join(os.path.dirname(args["model_repository"]), "handshake_py", "GO")

    async def execute(self, requests):
        out = []
        for request in requests:
            call = pb_utils.InferenceRequest(model_name="handshake_py", requested_output_names=["OUT"],
                                             inputs=[pb_utils.get_input_tensor_by_name(request, "IN")])
            responses = await call.async_exec(decoupled=True)
            words = []
            for response in responses:
                if not words:
                    open(self.flag, "w").close()
                if response.output_tensors():
                    words.append(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0])
            os.remove(self.flag)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("WORDS", np.array(words, np.object_))]))
        return out
"""

READY_CONFIG = """backend: "python" max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]"""
IO = 'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]'
CONFIGS: dict[str, tuple[str, str | None]] = {
    "add_sub_py": (
        ADD_SUB,
        f"""backend: "python" max_batch_size: 8 dynamic_batching {{ }}
{IO}
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [4] }},
        {{ name: "INFO" data_type: TYPE_STRING dims: [1] }}]""",
    ),
    "bls_py": (
        ASYNC_BLS,
        """backend: "python" max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [1, 4] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1, 4] }]""",
    ),
    "repeat_py": (
        REPEAT,
        """backend: "python" max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]""",
    ),
    "auto_py": (AUTO, None),
    "auto_conflict_py": (
        AUTO,
        """max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [4] }]""",
    ),
    "metrics_py": (
        METRICS,
        """backend: "python" max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }, { name: "NOTE" data_type: TYPE_STRING dims: [1] }]
instance_group [{ count: 2 kind: KIND_CPU }]""",
    ),
    "bls_decoupled_py": (
        BLS_DECOUPLED,
        """backend: "python" max_batch_size: 0
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "SUM" data_type: TYPE_INT32 dims: [1] }]""",
    ),
    "surface_py": (
        SURFACE,
        """backend: "python" max_batch_size: 0
input [{ name: "TEXT" data_type: TYPE_STRING dims: [-1] }]
output [{ name: "NOTE" data_type: TYPE_STRING dims: [1] }]""",
    ),
    "ready_py": (READY, READY_CONFIG),
    "handshake_py": (
        HANDSHAKE,
        """backend: "python" max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUT" data_type: TYPE_STRING dims: [1] }]""",
    ),
    "handshake_caller_py": (
        HANDSHAKE_CALLER,
        """backend: "python" max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "WORDS" data_type: TYPE_STRING dims: [-1] }]""",
    ),
    "ready_async_py": (READY_ASYNC, READY_CONFIG),
    "broken_py": (
        BROKEN,
        f"""backend: "python" max_batch_size: 0
{IO.replace("[4]", "[1, 4]")}
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [1, 4] }}]""",
    ),
}


def isolation(mode: str) -> str:
    return f'parameters {{ key: "KILN_ISOLATION" value: {{ string_value: "{mode}" }} }}'


@pytest.fixture(scope="module", params=["in-process", "process"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    """Every test below runs against both isolation modes: in the server process, and one worker per instance."""
    repo = tmp_path_factory.mktemp("python_repo")
    for name, (code, config) in CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        if request.param == "process":
            config = f"{config or ''}\n{isolation('process')}"
        if config is not None:  # in-process auto_py has none: its model.py completes the config
            (repo / name / "config.pbtxt").write_text(config + "\n")
    write_model(
        repo, "add_sub_onnx", models.add_sub([1, 4]), 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    )
    proc = KilnProcess([repo], "--strict-readiness", "false", log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _inputs(module: Any, a: np.ndarray, b: np.ndarray) -> list[Any]:
    out = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        t = module.InferInput(name, list(value.shape), "FP32")
        t.set_data_from_numpy(value)
        out.append(t)
    return out


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_add_sub_model_py_runs_with_the_triton_api(server: KilnProcess, module: Any) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)
    result = module.InferenceServerClient(url).infer("add_sub_py", _inputs(module, a, b), request_id="r1",
                                                     parameters={"k": "v"})  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    info = json.loads(result.as_numpy("INFO")[0, 0])
    assert info == {"name": "add_sub_py", "instance": "add_sub_py_0_0", "version": "1", "id": "r1",
                    "parameters": {"k": "v"}}  # fmt: skip


def test_an_error_response_fails_only_its_request(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="negative input"):
        client.infer(
            "add_sub_py", _inputs(httpclient, -np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))
        )
    assert (
        client.infer("add_sub_py", _inputs(httpclient, *(np.ones((1, 4), np.float32),) * 2)).as_numpy(
            "OUTPUT0"
        )[0, 0]
        == 2
    )


def test_async_bls_calls_an_onnx_model_through_the_core(server: KilnProcess) -> None:
    x = httpclient.InferInput("IN", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    out = httpclient.InferenceServerClient(server.http_url).infer("bls_py", [x]).as_numpy("OUT")
    np.testing.assert_array_equal(out, 2 * np.arange(4, dtype=np.float32).reshape(1, 4))


def test_decoupled_model_py_streams_its_responses(server: KilnProcess) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error or result))
    n = grpcclient.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([4], np.int32))
    client.async_stream_infer("repeat_py", [n], enable_empty_final_response=True)
    got = []
    while True:
        item = results.get(timeout=10)
        got.append(item)
        if item.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    assert [int(r.as_numpy("OUT")[0]) for r in got[:-1]] == [0, 1, 2, 3]


def test_exceptions_and_wrong_response_counts_are_clear_errors(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException, match="Failed to process the request\\(s\\) for model 'broken_py', "
                       "message: ValueError: something went wrong inside"):  # fmt: skip
        client.infer("broken_py", _inputs(httpclient, a, a))
    with pytest.raises(InferenceServerException, match="expected 1 responses, got 0"):
        client.infer("broken_py", _inputs(httpclient, a, a), request_id="count")
    assert client.is_server_live()


def test_auto_complete_config_fills_a_missing_config(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("auto_py")
    assert config["backend"] == "python" and config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    a = np.full((2, 4), 3, np.float32)
    np.testing.assert_array_equal(
        client.infer("auto_py", _inputs(httpclient, a, a)).as_numpy("OUTPUT0"), a * a
    )


def test_auto_complete_conflicts_fail_the_load_with_triton_s_message(server: KilnProcess) -> None:
    index = {
        m["name"]: m for m in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    assert index["auto_conflict_py"]["state"] == "UNAVAILABLE"
    assert (
        "configuration expects datatype TYPE_INT32 for input 'INPUT0', model provides TYPE_FP32"
        in (index["auto_conflict_py"]["reason"])
    )
    assert index["auto_py"]["state"] == "READY"  # the other models keep serving


def test_custom_metrics_are_exported_with_model_labels(server: KilnProcess) -> None:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("IN", [3], "FP32")
    x.set_data_from_numpy(np.ones(3, np.float32))
    for _ in range(2):
        note = client.infer("metrics_py", [x]).as_numpy("NOTE")[0].decode()
    # the repository API from a model: readiness, and load refused outside explicit mode
    assert note.startswith("True|") and "not allowed" in note
    with urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Triton's exposition: the counter's own name on the HELP/TYPE lines and the sample, no _total suffix
    assert "# TYPE kiln_test_requests counter\n" in text
    assert 'kiln_test_requests{kind="all",model="metrics_py",version="1"} 2\n' in text
    assert families["kiln_test_requests"].type == "counter"  # Prometheus' own parser reads it as a counter
    hist = families["kiln_test_sizes"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert hist.type == "histogram" and buckets == {"1.0": 0, "10.0": 2, "+Inf": 2}
    assert families["kiln_test_last"].type == "gauge"
    assert 'kiln_test_last{kind="all",model="metrics_py",version="1"} 3\n' in text


def test_models_load_other_models_in_explicit_mode(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    code, config = CONFIGS["metrics_py"]
    assert config is not None
    (repo / "metrics_py" / "1").mkdir(parents=True)
    (repo / "metrics_py" / "1" / "model.py").write_text(code)
    (repo / "metrics_py" / "config.pbtxt").write_text(config + "\n")
    write_model(
        repo, "add_sub_onnx", models.add_sub([1, 4]), 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    )
    proc = KilnProcess(
        [repo], "--model-control-mode", "explicit", "--load-model", "metrics_py", log_dir=tmp_path
    )
    with proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        assert not client.is_model_ready("add_sub_onnx")
        x = httpclient.InferInput("IN", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        note = client.infer("metrics_py", [x]).as_numpy("NOTE")[0].decode()
        assert note == "False|loaded" and client.is_model_ready("add_sub_onnx")


def test_decoupled_bls_with_a_bytes_model_name_and_an_int64_output(server: KilnProcess) -> None:
    """Triton's bls_decoupled example: the callee named by bytes, its responses iterated with a plain ``for``
    after ``await async_exec(decoupled=True)``, and an int64 sum returned for a TYPE_INT32 output (converted: no
    value is lost)."""
    n = httpclient.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([4], np.int32))
    result = httpclient.InferenceServerClient(server.http_url).infer("bls_decoupled_py", [n])
    assert result.as_numpy("SUM").dtype == np.int32 and int(result.as_numpy("SUM")[0]) == 0 + 1 + 2 + 3


def test_the_rest_of_triton_s_module_surface(server: KilnProcess) -> None:
    import json

    text = httpclient.InferInput("TEXT", [3], "BYTES")
    text.set_data_from_numpy(np.array([b"ab", "h\u00e9".encode(), b""], dtype=np.object_))
    client = httpclient.InferenceServerClient(server.http_url)
    for _ in range(12):  # on worker threads first, then (in-process) on the event loop
        note = json.loads(client.infer("surface_py", [text]).as_numpy("NOTE")[0])
        assert note["back"] == ["ab", "h\u00e9", ""] and note["packed"] == 3 * 4 + 2 + 3 and note["empty"]
        assert (note["fp32"], note["int32"], note["bytes"]) == ("float32", 8, 13)
        assert note["dlpack"] == [0.0, 1.0, 2.0]
        assert note["first"] == 0 and note["after_cancel"] == 0 and note["iterator"]
        assert "rescheduling" in note["reschedule"] and "not implemented" in note["reschedule"]


def test_is_ready_answers_the_readiness_checks(server: KilnProcess) -> None:
    """Triton's optional ``is_ready()``: False, an exception, a non-bool or no answer within 5 s make the model
    not ready on both protocols; inference itself is not refused (as in Triton)."""
    folder = Path(server.args[server.args.index("--model-repository") + 1]) / "ready_py"
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def ready() -> tuple[bool, bool]:
        return http.is_model_ready("ready_py"), grpc.is_model_ready("ready_py")

    assert ready() == (True, True)
    assert http.is_model_ready("ready_async_py") and grpc.is_model_ready("ready_async_py")
    x = httpclient.InferInput("IN", [4], "FP32")
    x.set_data_from_numpy(np.ones(4, np.float32))
    for flag in ("NOT_READY", "RAISE", "WEIRD"):
        (folder / flag).touch()
        assert ready() == (False, False), flag
        assert http.infer("ready_py", [x]).as_numpy("IN").tolist() == [1.0] * 4
        (folder / flag).unlink()
        assert ready() == (True, True), flag
    (folder / "SLOW").touch()
    assert http.is_model_ready("ready_py") is False  # after the 5 s limit
    (folder / "SLOW").unlink()
    assert ready() == (True, True)  # the slow check still running is waited for, then a new one answers
    assert "is_ready() raised RuntimeError: the cache is cold" in server.log()


def test_async_decoupled_bls_returns_at_the_first_response(server: KilnProcess) -> None:
    x = httpclient.InferInput("IN", [4], "FP32")
    x.set_data_from_numpy(np.ones(4, np.float32))
    words = (
        httpclient.InferenceServerClient(server.http_url).infer("handshake_caller_py", [x]).as_numpy("WORDS")
    )
    assert [w.decode() for w in words] == ["first", "second"]
