"""Bad requests at both transports: each gets a clear error (HTTP status + {"error": ...}, gRPC status code +
details) and the server keeps serving. Requests are built by hand: tritonclient refuses to build most of them."""

from __future__ import annotations

import gzip
import http.client
import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from servers import KilnProcess

Code = grpc.StatusCode
Stub = service_pb2_grpc.GRPCInferenceServiceStub
InferPb = service_pb2.ModelInferRequest
GRPC_CODE = {400: Code.INVALID_ARGUMENT, 404: Code.NOT_FOUND, 501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE}
N = 16  # add_sub: INPUT0/INPUT1 -> OUTPUT0/OUTPUT1, all FP32 [batch, 16], max_batch_size 8
TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT32": "int_contents",
         "UINT8": "uint_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}  # fmt: skip


# -- request building ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None  # flat (or nested) values; None: no data at all
    parameters: dict[str, Any] = field(default_factory=dict)


def fp32(name: str, shape: list[int], count: int | None = None) -> Tensor:
    n = count if count is not None else int(np.prod(shape))
    return Tensor(name, "FP32", shape, [float(i) for i in range(n)])


def pair(batch: int = 1) -> list[Tensor]:
    return [fp32("INPUT0", [batch, N]), fp32("INPUT1", [batch, N])]


@dataclass(frozen=True)
class Case:
    """A bad inference request, sent as JSON over HTTP and (unless ``json_only``) with typed gRPC contents."""

    id: str
    inputs: list[Tensor]
    status: int  # HTTP status; the gRPC code follows from GRPC_CODE
    message: str  # must appear in the error message
    model: str = "add_sub"
    version: str = ""
    outputs: list[tuple[str, dict[str, Any]]] | None = None
    json_only: bool = False  # protobuf's typed fields cannot express it
    grpc_message: str | None = None  # when gRPC words it differently


def infer_path(model: str, version: str = "") -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def json_body(case: Case) -> bytes:
    inputs = []
    for t in case.inputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.data is not None:
            entry["data"] = t.data
        if t.parameters:
            entry["parameters"] = t.parameters
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if case.outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": p} for n, p in case.outputs]
    return json.dumps(doc).encode()


def set_params(target: Any, params: dict[str, Any]) -> None:
    for key, value in params.items():
        kind = "bool_param" if isinstance(value, bool) else "int64_param" if isinstance(value, int) else None
        setattr(target[key], kind or "string_param", value)


def infer_pb(case: Case) -> InferPb:
    pb = InferPb(model_name=case.model, model_version=case.version)
    for t in case.inputs:
        tensor = pb.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        set_params(tensor.parameters, t.parameters)
        if t.data is not None and t.datatype in TYPED:
            data = [x.encode() if isinstance(x, str) else x for x in t.data]
            getattr(tensor.contents, TYPED[t.datatype]).extend(data)
    for name, params in case.outputs or []:
        set_params(pb.outputs.add(name=name).parameters, params)
    return pb


def raw_pb(model: str, inputs: list[tuple[str, str, list[int]]], raw: list[bytes]) -> InferPb:
    pb = InferPb(model_name=model)
    for name, datatype, shape in inputs:
        pb.inputs.add(name=name, datatype=datatype, shape=shape)
    pb.raw_input_contents.extend(raw)
    return pb


def binary_body(doc: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    """A Triton binary-extension body: the JSON header, then raw tensor bytes."""
    header = json.dumps(doc).encode()
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def binary_inputs(*inputs: tuple[str, str, list[int], int]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": size}}
                       for n, d, s, size in inputs]}  # fmt: skip


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# -- transports ------------------------------------------------------------------------------------------------
def http_call(
    server: KilnProcess, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.http_url, timeout=10)
    try:
        conn.request("GET" if body is None else "POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_error(
    server: KilnProcess, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send a request that must fail; return its status and the message of its ``{"error": ...}`` body."""
    status, payload = http_call(server, path, body, headers)
    doc = json.loads(payload)
    assert isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str), doc
    return status, doc["error"]


def grpc_error(stub: Stub, method: str, request: Any) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=10)
    err: Any = info.value
    assert err.details(), f"{method} failed with {err.code()} and no message"
    return err.code(), err.details()


@pytest.fixture(scope="module")
def stub(server: KilnProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield Stub(channel)


@pytest.fixture(autouse=True)
def still_serving(server: KilnProcess) -> Iterator[None]:
    """After every test: the process is up and answers liveness."""
    yield
    assert server.proc is not None and server.proc.poll() is None, server.log()[-4000:]
    assert http_call(server, "/v2/health/live")[0] == 200


# -- bad inference requests at both transports -----------------------------------------------------------------
SHM = {"shared_memory_region": "region0", "shared_memory_byte_size": 4 * N}
# Triton's texts (its clients and tests match on them; docs/decisions.md)
JSON_ERROR = "failed to parse the request JSON buffer: malformed JSON in request"
SHAPE_ERROR = "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got "
MISSING_INPUT = (
    "expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], but missing "
    "required input(s) ['INPUT1']"
)
NOT_READY = "Request for unknown model: 'garbage_file' has no available versions"

# fmt: off
CASES = [
    Case("unknown-model", pair(), 404, "'no_such_model' is not found", model="no_such_model"),
    Case("unknown-version", pair(), 404, "'add_sub' version 9 is not found", version="9"),
    Case("non-integer-version", pair(), 400, "model version must be an integer, got 'one'", version="one"),
    Case("failed-model", pair(), 503, NOT_READY, model="garbage_file"),
    Case("missing-input", pair()[:1], 400, MISSING_INPUT),
    Case("unknown-input", [*pair(), fp32("INPUT9", [1, N])], 400, "unexpected inference input 'INPUT9'"),
    Case("duplicate-input", [*pair(), fp32("INPUT0", [1, N])], 400, "'INPUT0' is given more than once"),
    Case("unknown-output", pair(), 400, "unexpected inference output 'OUTPUT9'", outputs=[("OUTPUT9", {})]),
    Case("duplicate-output", pair(), 400, "'OUTPUT0' is requested more than once",
         outputs=[("OUTPUT0", {}), ("OUTPUT0", {})]),
    Case("wrong-datatype", [Tensor("INPUT0", "FP64", [1, N], [0.5] * N), pair()[1]], 400,
         "inference input 'INPUT0' data-type is 'FP64', but model 'add_sub' expects 'FP32'"),
    Case("unsupported-datatype", [Tensor("INPUT0", "FP8", [1, N], [0.5] * N), pair()[1]], 400,
         "unsupported datatype 'FP8'"),
    Case("wrong-shape", [fp32("INPUT0", [1, 15]), pair()[1]], 400, SHAPE_ERROR + "[1,15]"),
    Case("wrong-rank", [fp32("INPUT0", [N]), pair()[1]], 400, SHAPE_ERROR + "[16]"),
    Case("batch-above-max", pair(9), 400, "inference request batch-size must be <= 8 for 'add_sub' (got 9)"),
    Case("batch-zero", pair(0), 400, "inference request batch-size must be >= 1 for 'add_sub' (got 0)"),
    Case("batch-mismatch", [fp32("INPUT0", [1, N]), fp32("INPUT1", [2, N])], 400,
         "input 'INPUT1' batch size does not match other inputs for 'add_sub' (2 vs 1)"),
    Case("negative-dim", [fp32("INPUT0", [-1, N], N), pair()[1]], 400, "'INPUT0': invalid shape [-1, 16]"),
    Case("too-few-values", [fp32("INPUT0", [1, N], N - 1), pair()[1]], 400, "'INPUT0': got 15 values"),
    Case("too-many-values", [fp32("INPUT0", [1, N], N + 1), pair()[1]], 400, "'INPUT0': got 17 values"),
    Case("no-data", [Tensor("INPUT0", "FP32", [1, N], None), pair()[1]], 400,
         "'INPUT0' has neither 'data' nor binary_data_size", grpc_message="'INPUT0': got 0 values"),
    Case("shm-input", [Tensor(t.name, "FP32", [1, N], None, SHM) for t in pair()], 404,
         "Unable to find shared memory region: 'region0'"),
    Case("shm-output", pair(), 404, "Unable to find shared memory region: 'region0'", outputs=[("OUTPUT0", SHM)]),
    Case("classify-bytes", [Tensor("INPUT0", "BYTES", [1, 1], ["a"])], 400,
         "'OUTPUT0': classification needs a numeric output, not BYTES", model="identity_bytes",
         outputs=[("OUTPUT0", {"classification": 1})]),
    Case("classify-negative", pair(), 400, "'OUTPUT0': classification count must be > 0",
         outputs=[("OUTPUT0", {"classification": -1})]),
    Case("int8-out-of-range", [Tensor("INPUT0", "INT8", [1, 2], [1, 1000])], 400, "does not fit INT8",
         model="identity_int8", grpc_message="INT8"),
    Case("uint8-out-of-range", [Tensor("INPUT0", "UINT8", [1, 2], [1, 300])], 400, "does not fit UINT8",
         model="identity_uint8", grpc_message="UINT8"),
    Case("non-numeric-fp32", [Tensor("INPUT0", "FP32", [1, N], ["x"] * N), pair()[1]], 400,
         "'INPUT0': value 'x' is not valid FP32 data", json_only=True),
    Case("null-in-fp32", [Tensor("INPUT0", "FP32", [1, N], [None] * N), pair()[1]], 400,
         "'INPUT0': value None is not valid FP32 data", json_only=True),
    Case("float-in-int32", [Tensor("INPUT0", "INT32", [1, 2], [1, 2.5])], 400,
         "'INPUT0': INT32 data must be integers", model="identity_int32", json_only=True),
    Case("non-bool-in-bool", [Tensor("INPUT0", "BOOL", [1, 2], [True, 1])], 400,
         "'INPUT0': BOOL data must be true/false", model="identity_bool", json_only=True),
    Case("nested-deeper-than-rank", [Tensor("INPUT0", "INT32", [1, 1], [[[[1]]]])], 400,
         "'INPUT0': data is nested deeper than the tensor's rank", model="identity_int32", json_only=True),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_http_refuses(server: KilnProcess, case: Case) -> None:
    status, message = http_error(server, infer_path(case.model, case.version), json_body(case))
    assert (status, case.message in message) == (case.status, True), message


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES if not c.json_only],
)
def test_grpc_refuses(stub: Stub, case: Case) -> None:
    code, message = grpc_error(stub, "ModelInfer", infer_pb(case))
    assert (code, (case.grpc_message or case.message) in message) == (GRPC_CODE[case.status], True), message


# -- HTTP only: malformed bodies, the binary extension, compression, routing -----------------------------------
ADD_SUB = infer_path("add_sub")
IDENTITY_BYTES = infer_path("identity_bytes")
GOOD = json_body(Case("good", pair(), 200, ""))
WITH_OUTPUT = GOOD[:-1] + b', "outputs": [{"name": "OUTPUT0", "parameters": %s}]}'
NESTED = b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": %s}]}'
RAW = np.zeros(N, np.float32).tobytes()  # one FP32 [1, 16] tensor


def add_sub_binary(size0: int, size1: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    doc = binary_inputs(("INPUT0", "FP32", [1, N], size0), ("INPUT1", "FP32", [1, N], size1))
    return binary_body(doc, payload)


def header_length(value: str) -> dict[str, str]:
    return {"Inference-Header-Content-Length": value}


TRUNCATED_BYTES = struct.pack("<I", 100) + b"abc"  # one BYTES element declaring 100 bytes, 3 present
# fmt: off
HTTP_CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("malformed-json", ADD_SUB, b'{"inputs": [', {}, 400, JSON_ERROR),
    ("not-utf8", ADD_SUB, b"\xff\xfe\x00garbage", {}, 400, JSON_ERROR),
    ("not-an-object", ADD_SUB, b"[1, 2, 3]", {}, 400, "inference request must be a JSON object"),
    ("missing-inputs", ADD_SUB, b"{}", {}, 400, "needs a non-empty 'inputs' list"),
    ("empty-inputs", ADD_SUB, b'{"inputs": []}', {}, 400, "needs a non-empty 'inputs' list"),
    ("input-not-object", ADD_SUB, b'{"inputs": [1]}', {}, 400, "each input must be a JSON object"),
    ("input-without-name", ADD_SUB, b'{"inputs": [{"datatype": "FP32", "shape": [1, 16]}]}', {}, 400,
     "every input needs a 'name' string"),
    ("input-without-datatype", ADD_SUB, b'{"inputs": [{"name": "INPUT0", "shape": [1, 16]}]}', {}, 400,
     "input 'INPUT0' needs a 'datatype' string"),
    ("input-without-shape", ADD_SUB, b'{"inputs": [{"name": "INPUT0", "datatype": "FP32"}]}', {}, 400,
     "input 'INPUT0' needs a 'shape' list"),
    ("float-dim", ADD_SUB, NESTED.replace(b"16]", b"16.0]") % b"[]", {}, 400, "dims must be ints >= 0"),
    ("id-not-string", ADD_SUB, b'{"id": 7, "inputs": []}', {}, 400, "request 'id' must be a string"),
    ("parameters-not-object", ADD_SUB, b'{"parameters": [], "inputs": []}', {}, 400,
     "request 'parameters' must be a JSON object"),
    ("outputs-not-list", ADD_SUB, GOOD[:-1] + b', "outputs": {}}', {}, 400, "'outputs' must be a list"),
    ("classification-not-int", ADD_SUB, WITH_OUTPUT % b'{"classification": "2"}', {}, 400,
     "'OUTPUT0': classification must be an integer"),
    ("binary-data-not-bool", ADD_SUB, WITH_OUTPUT % b'{"binary_data": 1}', {}, 400,
     "'OUTPUT0': binary_data must be true or false"),
    ("bytes-data-object", IDENTITY_BYTES,
     b'{"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": [{"a": 1}]}]}', {}, 400,
     "BYTES data must be strings, got dict"),
    ("deeply-nested", ADD_SUB, NESTED % (b"[" * 100_000 + b"]" * 100_000), {}, 400, "malformed JSON"),
    ("binary-sizes-too-small", ADD_SUB, *add_sub_binary(4 * N, 4 * N, RAW * 2 + bytes(4)), 400,
     "binary data is 132 bytes but the inputs' binary_data_size values add up to 128"),
    ("binary-sizes-too-large", ADD_SUB, *add_sub_binary(4 * N, 4 * N + 4, RAW * 2), 400,
     "input 'INPUT1': binary_data_size 68 runs past the end of the binary data"),
    ("binary-size-negative", ADD_SUB, *add_sub_binary(-1, 4 * N, RAW * 2), 400,
     "input 'INPUT0': binary_data_size must be an integer >= 0"),
    ("binary-size-off-shape", ADD_SUB, *add_sub_binary(4 * N - 4, 4 * N + 4, RAW * 2), 400,
     "input byte size mismatch for input 'INPUT0' for model 'add_sub'. Expected 64, got 60"),
    ("header-length-past-body", ADD_SUB, GOOD, header_length("99999"), 400, "99999 does not fit a body"),
    ("header-length-negative", ADD_SUB, GOOD, header_length("-1"), 400, "-1 does not fit a body"),
    ("header-length-not-int", ADD_SUB, GOOD, header_length("12abc"), 400, "'12abc' is not an integer"),
    ("truncated-bytes-element", IDENTITY_BYTES,
     *binary_body(binary_inputs(("INPUT0", "BYTES", [1, 1], 7)), TRUNCATED_BYTES), 400,
     "input 'INPUT0': BYTES element 0 declares 100 bytes but only 3 remain"),
    ("content-encoding-br", ADD_SUB, GOOD, {"Content-Encoding": "br"}, 400, "unsupported Content-Encoding 'br'"),
    ("corrupt-gzip", ADD_SUB, b"not gzip data at all", {"Content-Encoding": "gzip"}, 400,
     "request body is not valid gzip data"),
    ("truncated-gzip", ADD_SUB, gzip.compress(GOOD)[:-12], {"Content-Encoding": "gzip"}, 400,
     "request body is truncated gzip data"),
    ("content-length-over-limit", ADD_SUB, GOOD, {"Content-Length": str(2**40)}, 400, "exceeds the limit"),
]
# fmt: on


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), [c[1:] for c in HTTP_CASES],
                         ids=[c[0] for c in HTTP_CASES])  # fmt: skip
def test_http_refuses_body(
    server: KilnProcess, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got, text = http_error(server, path, body, headers)
    assert (got, message in text) == (status, True), text


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_http_refuses_decompression_bomb(server: KilnProcess, encoding: str) -> None:
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    bomb = packer.compress(bytes(65 * 2**20)) + packer.flush()  # ~64 KiB that inflate past the 64 MiB limit
    status, message = http_error(server, ADD_SUB, bomb, {"Content-Encoding": encoding})
    assert (status, "decompressed request exceeds the limit" in message) == (400, True), message


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/no/such/endpoint", 404, "no such endpoint: GET /v2/no/such/endpoint"),
        ("/v2/models/no_such_model", 404, "'no_such_model' is not found"),
        ("/v2/models/no_such_model/ready", 404, "'no_such_model' is not found"),
        ("/v2/models/add_sub/versions/9", 404, "'add_sub' version 9 is not found"),
        ("/v2/models/add_sub/versions/x/config", 400, "model version must be an integer, got 'x'"),
        (
            "/v2/models/garbage_file/config",
            503,
            NOT_READY,
        ),
        ("/v2/models/add_sub/infer", 405, "method GET is not allowed"),
    ],
)
def test_http_refuses_get(server: KilnProcess, path: str, status: int, message: str) -> None:
    got, text = http_error(server, path)
    assert (got, message in text) == (status, True), text


def test_failed_model_is_known_but_not_ready(server: KilnProcess, stub: Stub) -> None:
    # a model that failed to load answers "not ready" (HTTP 400, ready=False), an unknown one "not found"
    assert http_call(server, "/v2/models/garbage_file/ready")[0] == 400
    assert http_call(server, "/v2/models/garbage_file/versions/1/ready")[0] == 400
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="garbage_file"), timeout=10).ready is False
    assert (
        stub.ModelReady(service_pb2.ModelReadyRequest(name="garbage_file", version="1"), timeout=10).ready
        is False
    )
    code, message = grpc_error(stub, "ModelReady", service_pb2.ModelReadyRequest(name="no_such_model"))
    assert (code, "'no_such_model' is not found" in message) == (Code.NOT_FOUND, True), message


# -- gRPC only: raw_input_contents, typed-contents rules, streaming, unimplemented methods -------------------------
ADD_SUB_IN = [("INPUT0", "FP32", [1, N]), ("INPUT1", "FP32", [1, N])]
BYTES_IN = [("INPUT0", "BYTES", [1, 1])]
TYPED_AND_RAW = raw_pb("add_sub", ADD_SUB_IN, [RAW, RAW])
TYPED_AND_RAW.inputs[0].contents.fp32_contents.extend([0.0] * N)
# fmt: off
GRPC_CASES: list[tuple[str, InferPb, str]] = [
    ("no-inputs", InferPb(model_name="add_sub"), "inference request has no inputs"),
    ("raw-count-mismatch", raw_pb("add_sub", ADD_SUB_IN, [RAW]), "raw_input_contents has 1 entries for 2 inputs"),
    ("raw-wrong-byte-count", raw_pb("add_sub", ADD_SUB_IN, [RAW[:-4], RAW]),
     "input byte size mismatch for input 'INPUT0' for model 'add_sub'. Expected 64, got 60"),
    ("typed-and-raw", TYPED_AND_RAW, "'INPUT0' has both typed contents and raw_input_contents"),
    ("truncated-bytes-element", raw_pb("identity_bytes", BYTES_IN, [TRUNCATED_BYTES]),
     "input 'INPUT0': BYTES element 0 declares 100 bytes but only 3 remain"),
    ("trailing-bytes", raw_pb("identity_bytes", BYTES_IN, [bytes_elements(b"a", b"b")]),
     "input 'INPUT0': 5 unexpected bytes after the 1 BYTES elements"),
    ("fp16-typed", raw_pb("identity_fp16", [("INPUT0", "FP16", [1, 1])], []),
     "'INPUT0': FP16 data must be sent in raw_input_contents"),
    ("empty-datatype", raw_pb("add_sub", [("INPUT0", "", [1, N])], [RAW]), "unsupported datatype ''"),
]
# fmt: on


@pytest.mark.parametrize(
    ("request_pb", "message"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES]
)
def test_grpc_refuses_raw(stub: Stub, request_pb: InferPb, message: str) -> None:
    code, text = grpc_error(stub, "ModelInfer", request_pb)
    assert (code, message in text) == (Code.INVALID_ARGUMENT, True), text


def test_grpc_stream_reports_errors_and_goes_on(stub: Stub) -> None:
    bad, good = (
        infer_pb(Case("", pair(), 404, "", model="no_such_model")),
        infer_pb(Case("", pair(), 200, "")),
    )
    bad.id, good.id = "bad", "good"
    replies = {r.infer_response.id: r for r in stub.ModelStreamInfer(iter([bad, good]), timeout=10)}
    assert set(replies) == {"bad", "good"}
    assert "'no_such_model' is not found" in replies["bad"].error_message
    assert replies["good"].error_message == "" and len(replies["good"].infer_response.outputs) == 2


def test_grpc_trace_setting_refuses_an_unknown_setting(stub: Stub) -> None:
    request_pb = service_pb2.TraceSettingRequest()
    request_pb.settings["colour"].value.append("blue")
    code, message = grpc_error(stub, "TraceSetting", request_pb)
    assert (code, "unknown trace setting 'colour'" in message) == (Code.INVALID_ARGUMENT, True), message


@pytest.mark.parametrize(
    ("method", "request_pb"),
    [
        ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="add_sub")),
        ("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name="add_sub")),
    ],
)
def test_grpc_repository_control_refused_in_mode_none(stub: Stub, method: str, request_pb: Any) -> None:
    code, message = grpc_error(stub, method, request_pb)
    assert code == Code.FAILED_PRECONDITION and "--model-control-mode none" in message


# -- absurd shapes: refused by size checks, before any allocation ----------------------------------------------
HUGE = [1, 2**40]
IDENTITY_FP32 = infer_path("identity_fp32")
# HTTP requests as (path, body, headers); gRPC requests as ModelInferRequest
ABSURD: dict[str, tuple[str, bytes, dict[str, str]] | InferPb] = {
    "http-json": (IDENTITY_FP32, json_body(Case("", [fp32("INPUT0", HUGE, 4)], 400, "")), {}),
    "http-binary": (IDENTITY_FP32, *binary_body(binary_inputs(("INPUT0", "FP32", HUGE, 16)), bytes(16))),
    "http-binary-bytes": (
        IDENTITY_BYTES,
        *binary_body(binary_inputs(("INPUT0", "BYTES", HUGE, 5)), bytes_elements(b"x")),
    ),
    "grpc-typed": infer_pb(Case("", [fp32("INPUT0", HUGE, 4)], 400, "", model="identity_fp32")),
    "grpc-raw": raw_pb("identity_fp32", [("INPUT0", "FP32", HUGE)], [bytes(16)]),
    "grpc-raw-bytes": raw_pb("identity_bytes", [("INPUT0", "BYTES", HUGE)], [bytes(8)]),
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


@pytest.mark.parametrize("variant", list(ABSURD))
def test_absurd_shape_refused_fast(server: KilnProcess, stub: Stub, variant: str) -> None:
    assert server.proc is not None
    request = ABSURD[variant]
    before, start = rss_kib(server.proc.pid), time.monotonic()
    if isinstance(request, tuple):
        code, message = http_error(server, *request)
        assert code == 400, message
    else:
        code, message = grpc_error(stub, "ModelInfer", request)
        assert code == Code.INVALID_ARGUMENT, message
    elapsed = time.monotonic() - start
    assert str(2**40) in message and "'INPUT0'" in message, message
    assert elapsed < 0.5, f"refusing took {elapsed:.2f}s"
    assert rss_kib(server.proc.pid) - before < 50 * 1024, "server RSS grew by more than 50 MiB"


# -- after all of the above, the server still serves real requests ----------------------------------------------
@pytest.mark.parametrize("client_module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_still_serves_after_bad_requests(server: KilnProcess, client_module: Any) -> None:
    a, b = np.arange(N, dtype=np.float32).reshape(1, N), np.ones((1, N), np.float32)
    client = client_module.InferenceServerClient(
        server.http_url if client_module is httpclient else server.grpc_url
    )
    try:
        assert client.is_server_live() and client.is_model_ready("add_sub")
        inputs = [client_module.InferInput(name, [1, N], "FP32") for name in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()
