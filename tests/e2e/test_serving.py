"""End to end through Triton's own clients (tritonclient http/grpc, sync and aio) against a real server."""

from __future__ import annotations

import asyncio
import json
import queue
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from google.protobuf.json_format import MessageToDict

import kiln
from repos import DTYPES
from servers import KilnProcess

TRANSPORTS = ["http", "grpc"]


def client(server: KilnProcess, transport: str) -> Any:
    if transport == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def module(transport: str) -> Any:
    return httpclient if transport == "http" else grpcclient


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype == "BYTES":
        return np.array([f"s{i}\x00é".encode() for i in range(n)], dtype=object).reshape(shape)
    if dtype == "BOOL":
        return (np.arange(n) % 3 == 0).reshape(shape)
    np_type = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(dtype) or np.dtype(
        dtype.lower()
    )
    return (np.arange(n) * 3 % 127).astype(np_type).reshape(shape)


def add_sub_inputs(mod: Any, a: np.ndarray, b: np.ndarray, binary: bool = True) -> list[Any]:
    inputs = [
        mod.InferInput("INPUT0", list(a.shape), "FP32"),
        mod.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    for tensor, data in zip(inputs, (a, b), strict=True):
        if mod is httpclient:
            tensor.set_data_from_numpy(data, binary_data=binary)
        else:
            tensor.set_data_from_numpy(data)
    return inputs


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_and_server_metadata(server: KilnProcess, transport: str) -> None:
    c = client(server, transport)
    assert c.is_server_live() and c.is_server_ready()
    md = c.get_server_metadata()
    extensions = md["extensions"] if transport == "http" else list(md.extensions)
    assert {"classification", "binary_tensor_data", "model_configuration", "statistics"} <= set(extensions)
    # Triton's clients check the name; the version is Kiln's own
    name, version = (md["name"], md["version"]) if transport == "http" else (md.name, md.version)
    assert name == "triton" and version == kiln.__version__


def test_server_name_flag(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    with KilnProcess([tmp_path / "repo"], "--server-name", "kiln", log_dir=tmp_path) as proc:
        assert httpclient.InferenceServerClient(proc.http_url).get_server_metadata()["name"] == "kiln"


@pytest.mark.parametrize(("transport", "binary"), [("http", True), ("http", False), ("grpc", True)])
def test_add_sub(server: KilnProcess, transport: str, binary: bool) -> None:
    mod = module(transport)
    a = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    b = np.ones((3, 16), np.float32)
    kwargs = {
        "outputs": [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    }
    result = client(server, transport).infer(
        "add_sub",
        add_sub_inputs(mod, a, b, binary),
        request_id="req-7",
        **(kwargs if transport == "http" else {}),
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    response = result.get_response()
    assert (response["id"] if transport == "http" else response.id) == "req-7"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requested_output_subset(server: KilnProcess, transport: str) -> None:
    mod = module(transport)
    a = np.full((1, 16), 2, np.float32)
    result = client(server, transport).infer(
        "add_sub", add_sub_inputs(mod, a, a), outputs=[mod.InferRequestedOutput("OUTPUT1")]
    )
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_datatype_round_trips(server: KilnProcess, transport: str, dtype: str) -> None:
    mod = module(transport)
    data = sample(dtype, (2, 5))
    model = f"identity_{dtype.lower()}"
    for binary in (True, False) if transport == "http" else (True,):
        if transport == "http" and dtype == "FP16" and not binary:
            continue  # tritonclient refuses FP16 as JSON; covered by the raw JSON test below
        tensor = mod.InferInput("INPUT0", [2, 5], dtype)
        if transport == "http":
            tensor.set_data_from_numpy(data, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
        else:
            tensor.set_data_from_numpy(data)
            outputs = None
        out = client(server, transport).infer(model, [tensor], outputs=outputs).as_numpy("OUTPUT0")
        assert out.shape == (2, 5)
        if dtype == "BYTES":
            assert [x if isinstance(x, bytes) else x.encode() for x in out.reshape(-1)] == list(
                data.reshape(-1)
            )
        else:
            np.testing.assert_array_equal(out, data)


def post(server: KilnProcess, path: str, doc: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://{server.http_url}{path}", data=json.dumps(doc).encode(), headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_json_fp16_and_nested_data(server: KilnProcess) -> None:
    status, doc = post(server, "/v2/models/identity_fp16/infer", {
        "inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [2, 2], "data": [[0.5, 1.5], [2.0, -3.0]]}],
    })  # fmt: skip
    assert status == 200, doc
    assert doc["outputs"][0]["data"] == [0.5, 1.5, 2.0, -3.0]
    assert doc["outputs"][0]["datatype"] == "FP16"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_classification_uses_labels(server: KilnProcess, transport: str, test_repo: Any) -> None:
    mod = module(transport)
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    tensor = mod.InferInput("input", [3, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images)
    c = client(server, transport)
    probs = c.infer("image_classifier", [tensor]).as_numpy("probabilities")
    top = c.infer(
        "image_classifier", [tensor], outputs=[mod.InferRequestedOutput("probabilities", class_count=3)]
    ).as_numpy("probabilities")
    labels = (test_repo / "image_classifier" / "labels.txt").read_text().split()
    assert top.shape == (3, 3)
    for row, entries in zip(probs, top, strict=True):
        expected = np.argsort(-row)[:3]
        parsed = [e.decode().split(":") for e in entries]
        assert [int(p[1]) for p in parsed] == list(expected)
        assert [p[2] for p in parsed] == [labels[i] for i in expected]
        np.testing.assert_allclose([float(p[0]) for p in parsed], row[expected], rtol=1e-4)


@pytest.mark.parametrize(("request_alg", "response_alg"), [("gzip", "deflate"), ("deflate", "gzip")])
def test_http_compression(server: KilnProcess, request_alg: str, response_alg: str) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    result = httpclient.InferenceServerClient(server.http_url).infer(
        "add_sub", add_sub_inputs(httpclient, a, a),
        request_compression_algorithm=request_alg, response_compression_algorithm=response_alg,
    )  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


def test_grpc_stream_answers_each_request_and_reports_errors_in_stream(server: KilnProcess) -> None:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for k in range(5):
            a = np.full((1, 16), k, np.float32)
            c.async_stream_infer("add_sub", add_sub_inputs(grpcclient, a, a), request_id=f"r{k}")
        c.async_stream_infer("no_such_model", add_sub_inputs(grpcclient, a, a), request_id="bad")
        got = [answers.get(timeout=10) for _ in range(6)]
    finally:
        c.stop_stream()
    results = {r.get_response().id: r.as_numpy("OUTPUT0")[0, 0] for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert results == {f"r{k}": 2 * k for k in range(5)}
    assert len(errors) == 1 and "no_such_model" in errors[0]


def test_aio_clients(server: KilnProcess) -> None:
    async def run() -> None:
        a = np.ones((1, 16), np.float32)
        async with httpaio.InferenceServerClient(server.http_url) as hc:
            assert await hc.is_server_ready()
            r = await hc.infer("add_sub", add_sub_inputs(httpclient, a, a))
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)
        gc = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            assert await gc.is_model_ready("add_sub")
            results = await asyncio.gather(
                *[gc.infer("add_sub", add_sub_inputs(grpcclient, a * k, a)) for k in range(8)]
            )
            assert [r.as_numpy("OUTPUT0")[0, 0] for r in results] == [k + 1 for k in range(8)]
        finally:
            await gc.close()

    asyncio.run(run())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_autocompleted_config_and_metadata(server: KilnProcess, transport: str) -> None:
    c = client(server, transport)
    if transport == "http":
        config = c.get_model_config("identity_int32")
        md = c.get_model_metadata("identity_int32")
        inputs = md["inputs"]
    else:
        config = MessageToDict(c.get_model_config("identity_int32").config,
                                          preserving_proto_field_name=True)  # fmt: skip
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                  for t in c.get_model_metadata("identity_int32").inputs]  # fmt: skip
    assert int(config["max_batch_size"]) == 4
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert [int(d) for d in config["input"][0]["dims"]] == [-1]
    assert config["backend"] == "onnxruntime"
    assert inputs == [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, -1]}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_versions(server: KilnProcess, transport: str) -> None:
    c, mod = client(server, transport), module(transport)
    md = c.get_model_metadata("versioned")
    assert (md["versions"] if transport == "http" else list(md.versions)) == ["1", "2", "3"]
    latest = c.get_model_metadata("latest_only")
    assert (latest["versions"] if transport == "http" else list(latest.versions)) == ["7"]
    assert c.is_model_ready("versioned", "2")
    a = np.ones((1, 4), np.float32)
    for version, expected in (("2", "2"), ("", "3")):
        result = c.infer("versioned", add_sub_inputs(mod, a, a), model_version=version)
        response = result.get_response()
        assert (response["model_version"] if transport == "http" else response.model_version) == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reshape_and_non_batching_models(server: KilnProcess, transport: str) -> None:
    c, mod = client(server, transport), module(transport)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    tensor = mod.InferInput("INPUT0", [2, 6], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(c.infer("reshaped", [tensor]).as_numpy("OUTPUT0"), x)
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(c.infer("nobatch", add_sub_inputs(mod, a, a)).as_numpy("OUTPUT0"), a * 2)


def test_big_grpc_message(server: KilnProcess) -> None:
    images = np.random.default_rng(2).random(
        (4, 3, 448, 448), dtype=np.float32
    )  # 9.6 MB > gRPC's 4 MB default
    flat = images.reshape(4, -1)
    tensor = grpcclient.InferInput("INPUT0", list(flat.shape), "FP32")
    tensor.set_data_from_numpy(flat)
    out = (
        grpcclient.InferenceServerClient(server.grpc_url).infer("identity_fp32", [tensor]).as_numpy("OUTPUT0")
    )
    np.testing.assert_array_equal(out, flat)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failed_models_are_reported_with_their_reason(server: KilnProcess, transport: str) -> None:
    c = client(server, transport)
    assert not c.is_model_ready("garbage_file")
    index = c.get_model_repository_index()
    rows = index if transport == "http" else [MessageToDict(m) for m in index.models]
    by_name = {r["name"]: r for r in rows}
    assert by_name["garbage_file"]["state"] == "UNAVAILABLE"
    assert "INVALID_PROTOBUF" in by_name["garbage_file"]["reason"]
    assert "Couldn't parse integer" in by_name["bad_config_syntax"]["reason"]
    assert "config.pbtxt:2" in by_name["bad_config_syntax"]["reason"]
    assert "not implemented" in by_name["unsupported_backend"]["reason"]
    assert by_name["add_sub"]["state"] == "READY"
    assert "failed to load model 'dtype_mismatch'" in server.log()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_statistics_and_metrics_move(server: KilnProcess, transport: str) -> None:
    c, mod = client(server, transport), module(transport)

    def success_count() -> int:
        stats = c.get_inference_statistics("nobatch")
        if transport == "http":
            entry = stats["model_stats"][0]
        else:
            entry = MessageToDict(
                stats.model_stats[0], including_default_value_fields=True, preserving_proto_field_name=True
            )
        return int(entry["inference_stats"]["success"].get("count", 0))

    before = success_count()
    a = np.ones((2, 3), np.float32)
    for _ in range(3):
        c.infer("nobatch", add_sub_inputs(mod, a, a))
    assert success_count() == before + 3
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('nv_inference_request_success{model="nobatch"'))
    assert float(line.split()[-1]) >= before + 3
    assert "process_resident_memory_bytes" in text


def test_the_startup_line_counts_ready_and_failed_models(server: KilnProcess) -> None:
    """The session server serves the test repository and a repository of models that fail to load."""
    import re

    found = re.search(r"Kiln is serving (\d+) model\(s\): (\d+) ready, (\d+) failed to load", server.log())
    assert found is not None, server.log()
    total, ready, failed = map(int, found.groups())
    assert total == ready + failed and ready > 10 and failed >= 1
