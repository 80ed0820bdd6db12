"""The system shared memory extension on a real server, through tritonclient's own shared-memory helpers: register
/ status / unregister over HTTP and gRPC, inputs read from and outputs written into the client's regions (numbers
and strings), every bound checked, unregistering during a request, and CUDA shared memory refused without a GPU."""

from __future__ import annotations

import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto
from tritonclient import utils
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess, wait_until

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: {t} dims: [ 16 ] }}, {{ name: "INPUT1" data_type: {t} dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {t} dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: {t} dims: [ 16 ] }} ]
"""

SLOW = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.5)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0")
                .as_numpy())]) for r in requests]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("shm")
    write_model(
        repo,
        "simple",
        models.add_sub(["batch", 16], TensorProto.INT32),
        CONFIG.format(name="simple", t="TYPE_INT32"),
    )
    write_model(
        repo,
        "simple_string",
        models.string_add_sub(["batch", 16]),
        CONFIG.format(name="simple_string", t="TYPE_STRING"),
    )
    slow = repo / "slow_identity"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(SLOW)
    (slow / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]\n'
    )
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs")).start()
    yield proc
    assert proc.stop() == 0, proc.log()


class Regions:
    """Client-side regions made with tritonclient's helpers (POSIX shm_open), destroyed afterwards."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def create(self, size: int) -> tuple[str, Any]:
        key = f"/kiln-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, size)
        self.handles.append(handle)
        return key, handle

    def destroy(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions() -> Iterator[Regions]:
    r = Regions()
    yield r
    r.destroy()


def _client(server: KilnProcess, module: Any) -> Any:
    return module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_numbers_in_and_out_through_shared_memory(server: KilnProcess, module: Any, regions: Regions) -> None:
    client = _client(server, module)
    client.unregister_system_shared_memory()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), np.int32)
    in_key, inputs = regions.create(128)
    out_key, outputs = regions.create(128)
    shm.set_shared_memory_region(inputs, [a, b])
    client.register_system_shared_memory("in", in_key, 128)
    client.register_system_shared_memory("out", out_key, 128)
    tensors = [module.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    tensors[0].set_shared_memory("in", 64)
    tensors[1].set_shared_memory("in", 64, offset=64)
    requested = [module.InferRequestedOutput(f"OUTPUT{i}") for i in (0, 1)]
    requested[0].set_shared_memory("out", 64)
    requested[1].set_shared_memory("out", 64, offset=64)
    result = client.infer("simple", tensors, outputs=requested)
    assert result.get_output("OUTPUT0") is not None
    total = shm.get_contents_as_numpy(outputs, np.int32, [1, 16])
    diff = shm.get_contents_as_numpy(outputs, np.int32, [1, 16], offset=64)
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)
    status = client.get_system_shared_memory_status()
    names = {r["name"] for r in status} if module is httpclient else set(status.regions)
    assert names == {"in", "out"}
    client.unregister_system_shared_memory("in")
    client.unregister_system_shared_memory()
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'in'"):
        client.infer("simple", tensors, outputs=requested)


def test_strings_in_and_out_through_shared_memory(server: KilnProcess, regions: Regions) -> None:
    client = _client(server, httpclient)
    a = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    b = np.array([[b"1"] * 16], dtype=np.object_)
    size_a = utils.serialized_byte_size(utils.serialize_byte_tensor(a))
    size_b = utils.serialized_byte_size(utils.serialize_byte_tensor(b))
    key_a, region_a = regions.create(size_a)
    key_b, region_b = regions.create(size_b)
    key_o, region_o = regions.create(256)
    shm.set_shared_memory_region(region_a, [utils.serialize_byte_tensor(a)])
    shm.set_shared_memory_region(region_b, [utils.serialize_byte_tensor(b)])
    client.register_system_shared_memory("a", key_a, size_a)
    client.register_system_shared_memory("b", key_b, size_b)
    client.register_system_shared_memory("o", key_o, 256)
    try:
        tensors = [httpclient.InferInput(f"INPUT{i}", [1, 16], "BYTES") for i in (0, 1)]
        tensors[0].set_shared_memory("a", size_a)
        tensors[1].set_shared_memory("b", size_b)
        out = httpclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("o", 256)
        client.infer("simple_string", tensors, outputs=[out])
        got = shm.get_contents_as_numpy(region_o, np.object_, [1, 16])
        assert [int(x) for x in got.reshape(-1)] == [i + 1 for i in range(16)]
        small = httpclient.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("o", 8)
        with pytest.raises(
            InferenceServerException, match=r"should be at least \d+ bytes to hold the results"
        ):
            client.infer("simple_string", tensors, outputs=[small])
    finally:
        client.unregister_system_shared_memory()


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_every_bound_and_name_is_checked(server: KilnProcess, module: Any, regions: Regions) -> None:
    client = _client(server, module)
    key, _ = regions.create(64)
    with pytest.raises(InferenceServerException, match="invalid args"):
        client.register_system_shared_memory("r", key, 64, offset=8)  # the window runs past the object
    with pytest.raises(InferenceServerException, match="is not a POSIX shared memory name"):
        client.register_system_shared_memory("r", "/../etc/passwd", 16)
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region"):
        client.register_system_shared_memory("r", "/kiln-no-such-region", 16)
    client.register_system_shared_memory("r", key, 32, offset=16)
    try:
        with pytest.raises(InferenceServerException, match="already in manager"):
            client.register_system_shared_memory("r", key, 16)
        tensors = [module.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
        tensors[0].set_shared_memory("r", 64)  # more than the 32-byte window
        tensors[1].set_shared_memory("r", 64)
        with pytest.raises(
            InferenceServerException, match="Invalid offset \\+ byte size for shared memory region"
        ):
            client.infer("simple", tensors)
        tensors[0].set_shared_memory("r", 64, offset=1 << 40)
        with pytest.raises(InferenceServerException, match="Invalid offset for shared memory region"):
            client.infer("simple", tensors)
        tensors[0].set_shared_memory("r", 16)
        with pytest.raises(
            InferenceServerException, match=r"input byte size mismatch for input .*Expected 64"
        ):
            client.infer("simple", tensors)
        with pytest.raises(
            InferenceServerException, match="Unable to find system shared memory region: 'nope'"
        ):
            client.get_system_shared_memory_status("nope")
        client.unregister_system_shared_memory("nope")  # unknown: no error, as in Triton
    finally:
        client.unregister_system_shared_memory()
    assert client.is_server_live()


def test_unregistering_during_a_request_is_safe(server: KilnProcess, regions: Regions) -> None:
    client = _client(server, httpclient)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    in_key, inputs = regions.create(64)
    out_key, outputs = regions.create(64)
    shm.set_shared_memory_region(inputs, [a])
    client.register_system_shared_memory("slow_in", in_key, 64)
    client.register_system_shared_memory("slow_out", out_key, 64)
    tensor = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_shared_memory("slow_in", 64)
    out = httpclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("slow_out", 64)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpclient.InferenceServerClient(server.http_url).infer("slow_identity", [tensor], outputs=[out])
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=call)
    thread.start()

    def in_flight() -> bool:  # the model sleeps 0.5 s: while it does, the request holds both regions
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            return (
                'nv_inference_pending_request_count{model="slow_identity",version="1"} 1' in r.read().decode()
            )

    wait_until(in_flight, 5, "the request reaching the model")
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []
    thread.join(10)
    assert errors == []
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs, np.int32, [1, 16]), a)


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_cuda_shared_memory_is_refused_without_a_gpu(server: KilnProcess, module: Any) -> None:
    client = _client(server, module)
    client.unregister_cuda_shared_memory()  # Triton's examples call this first: it succeeds
    status = client.get_cuda_shared_memory_status()
    assert (status == []) if module is httpclient else (len(status.regions) == 0)
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        client.register_cuda_shared_memory("c", b"\0" * 64, 0, 64)
    metadata = client.get_server_metadata()
    extensions = metadata["extensions"] if module is httpclient else list(metadata.extensions)
    assert "system_shared_memory" in extensions


def test_a_stray_shared_memory_parameter_is_refused(server: KilnProcess) -> None:
    client = _client(server, httpclient)
    tensors = [httpclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    for t in tensors:
        t.set_data_from_numpy(np.zeros((1, 16), np.int32))
    tensors[0]._parameters["shared_memory_byte_size"] = 64
    with pytest.raises(InferenceServerException, match="given without 'shared_memory_region'"):
        client.infer("simple", tensors)
