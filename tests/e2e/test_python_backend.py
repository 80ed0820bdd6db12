"""The Python backend (in-process): Triton-style model.py files of our own, served by a real server and called
through tritonclient — sync and async execute, BLS into an ONNX model, decoupled streaming, errors."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
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

IO = 'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]'
CONFIGS = {
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
    "broken_py": (
        BROKEN,
        f"""backend: "python" max_batch_size: 0
{IO.replace("[4]", "[1, 4]")}
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [1, 4] }}]""",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("python_repo")
    for name, (code, config) in CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
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
