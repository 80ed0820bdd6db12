"""Every ErrorCode end to end: the echo test backend (tests/contract_backends.py) raises the KilnError that a
request's ``raise`` parameter names from its execute; a real server answers with the mapped HTTP status and
``{"error": message}``, or the mapped gRPC status code and message, and keeps serving."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from kiln.errors import ErrorCode
from kiln.grpc.servicer import STATUS as GRPC_STATUS
from kiln.http.errors import STATUS as HTTP_STATUS
from servers import KilnProcess

ECHO = """backend: "echo" max_batch_size: 8
input [{ name: "IN" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [2] }, { name: "IDENTITY" data_type: TYPE_STRING dims: [1] }]
"""
CODES = [pytest.param(code, id=code.value) for code in ErrorCode]
UNKNOWN = "NOT_AN_ERROR_CODE"  # the echo backend fails on it with a plain KeyError: not a KilnError
# Known leak: kiln/scheduling/base.py (_execute_requests) wraps a non-Kiln exception from a per-request backend as
# InternalError(str(e)), so the client gets the exception's text and nothing is logged. Strict: passes once mended.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("errors")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.echo").write_text("")
    (repo / "echo" / "config.pbtxt").write_text(ECHO)
    backend = "--backend=echo=contract_backends:EchoBackend"
    proc = KilnProcess([repo], backend, log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def stub(server: KilnProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def http_infer(server: KilnProcess, parameters: dict[str, str]) -> tuple[int, object]:
    doc = {
        "inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}],
        "outputs": [{"name": "OUT"}],
        "parameters": parameters,
    }
    conn = http.client.HTTPConnection(server.http_url, timeout=10)
    try:
        conn.request("POST", "/v2/models/echo/infer", body=json.dumps(doc))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def grpc_request(parameters: dict[str, str]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="IN", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    request.outputs.add(name="OUT")
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request


def grpc_error(stub: service_pb2_grpc.GRPCInferenceServiceStub, raise_: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(grpc_request({"raise": raise_}), timeout=10)
    err: grpc.Call = info.value  # type: ignore[assignment]
    return err.code(), err.details()


@pytest.fixture(autouse=True)
def still_serving(server: KilnProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> Iterator[None]:
    """After every test: the process is up and both transports answer a good request."""
    yield
    assert server.proc is not None and server.proc.poll() is None, server.log()[-4000:]
    assert http_infer(server, {})[0] == 200
    response = stub.ModelInfer(grpc_request({}), timeout=10)
    assert [o.name for o in response.outputs] == ["OUT"]


@pytest.mark.parametrize("code", CODES)
def test_http_returns_the_status_of_each_code(server: KilnProcess, code: ErrorCode) -> None:
    assert http_infer(server, {"raise": code.value}) == (
        HTTP_STATUS[code],
        {"error": f"raised {code.value} on purpose"},
    )


@pytest.mark.parametrize("code", CODES)
def test_grpc_returns_the_status_code_of_each_code(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, code: ErrorCode
) -> None:
    assert grpc_error(stub, code.value) == (GRPC_STATUS[code], f"raised {code.value} on purpose")


def test_http_hides_an_unknown_exception_behind_a_generic_500(server: KilnProcess) -> None:
    assert http_infer(server, {"raise": UNKNOWN}) == (500, {"error": "internal server error"})


def test_grpc_hides_an_unknown_exception_behind_a_generic_internal(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    assert grpc_error(stub, UNKNOWN) == (grpc.StatusCode.INTERNAL, "internal server error")
