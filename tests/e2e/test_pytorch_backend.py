"""TorchScript and torch.export models served by a real ``kiln serve``, called with tritonclient over HTTP and gRPC;
``kiln bench`` on a torch.export model folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.cli.main import main
from servers import KilnProcess
from torch_models import build_repository, mlp_reference

# torch 2.13 marks the TorchScript API deprecated; these tests build and serve TorchScript on purpose
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("torch_serve"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _input(module: Any, name: str, data: np.ndarray, datatype: str) -> Any:
    tensor = module.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def test_every_model_is_ready_with_the_platform_triton_reports(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    not_ready = {n: m.get("reason") for n, m in index.items() if m["state"] != "READY"}
    assert not not_ready, not_ready
    config = client.get_model_config("add_sub")
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"
    assert client.get_model_metadata("add_sub")["platform"] == "pytorch_libtorch"


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_add_sub_over_both_protocols_with_dynamic_batching(server: KilnProcess, module: Any) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url, **({"concurrency": 8} if module is httpclient else {}))
    rng = np.random.default_rng(0)
    pairs = [(rng.random((1, 4), dtype=np.float32), rng.random((1, 4), dtype=np.float32)) for _ in range(8)]
    if module is httpclient:
        pending = [
            client.async_infer(
                "add_sub", [_input(module, "INPUT__0", a, "FP32"), _input(module, "INPUT__1", b, "FP32")]
            )
            for a, b in pairs
        ]
        results = [p.get_result() for p in pending]
    else:
        results = [
            client.infer(
                "add_sub", [_input(module, "INPUT__0", a, "FP32"), _input(module, "INPUT__1", b, "FP32")]
            )
            for a, b in pairs
        ]
    for (a, b), result in zip(pairs, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), a - b, rtol=1e-6)


def test_dict_outputs_and_bool_over_grpc(server: KilnProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.array([[1.5, -2.0], [0.0, 3.0]], np.float32)
    result = client.infer(
        "dict_out",
        [_input(grpcclient, "INPUT__0", x, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("mask")],
    )
    assert result.as_numpy("mask").tolist() == (x > 0).tolist() and result.as_numpy("logits") is None
    flags = np.array([[True, False, True]])
    out = client.infer(
        "flags",
        [
            _input(grpcclient, "flags", flags, "BOOL"),
            _input(grpcclient, "values", np.array([[7, 8, 9]]), "INT64"),
        ],
    )
    assert out.as_numpy("NOT__0").tolist() == [[False, True, False]]
    assert out.as_numpy("KEPT__1").tolist() == [[7, 0, 9]]


def test_strings_over_http(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    text = np.array([[b"kiln"], [b"triton"]], dtype=np.object_)
    result = client.infer("strings", [_input(httpclient, "text", text, "BYTES")])
    assert result.as_numpy("OUTPUT__0").tolist() == [[b"KILN"], [b"TRITON"]]


def test_the_traced_and_exported_mlps_match_torch_in_process(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.random.default_rng(3).random((5, 16), dtype=np.float32)
    traced = client.infer("mlp_traced", [_input(httpclient, "INPUT__0", x, "FP32")]).as_numpy("OUTPUT__0")
    exported = client.infer("mlp_export", [_input(httpclient, "x", x, "FP32")]).as_numpy("OUTPUT__0")
    np.testing.assert_allclose(traced, mlp_reference(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported, mlp_reference(x), rtol=1e-5, atol=1e-6)
    # the torch.export program's config was auto-completed from its signature
    config = client.get_model_config("mlp_export")
    assert [(i["name"], i["dims"]) for i in config["input"]] == [("x", [16])]


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_a_wrong_dtype_or_shape_is_refused_clearly(server: KilnProcess, module: Any) -> None:
    client = module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)
    ok = np.ones((1, 4), np.float32)
    with pytest.raises(
        InferenceServerException, match="data-type is 'FP64', but model 'add_sub' expects 'FP32'"
    ):
        client.infer("add_sub", [_input(module, "INPUT__0", ok.astype(np.float64), "FP64"),
                                 _input(module, "INPUT__1", ok, "FP32")])  # fmt: skip
    with pytest.raises(InferenceServerException, match=r"Expected \[-1,4\], got \[1,3\]"):
        client.infer("add_sub", [_input(module, "INPUT__0", np.ones((1, 3), np.float32), "FP32"),
                                 _input(module, "INPUT__1", ok, "FP32")])  # fmt: skip


def test_kiln_bench_runs_a_torch_export_model_folder(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", str(repo / "mlp_export"), "--iterations", "5", "--warmup", "0", "--batch", "2",
                 "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    (result,) = report["results"] if "results" in report else report
    assert result["backend"] == "pytorch"
    assert result["settings"]["format"] == "export" and "intra_op_threads" in result["settings"]
