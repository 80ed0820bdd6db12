"""A built artifact is a model repository entry: kiln serve loads it and answers through tritonclient."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from build_models import conv_net, save, write_samples
from kiln.builder import BuildOptions, CalibrationOptions, Precision, Target, build
from servers import KilnProcess

HAS_OPENVINO = (
    importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnProcess, Path]]:
    work = tmp_path_factory.mktemp("serve_build")
    source = save(conv_net(), work, "conv.onnx")
    write_samples(work / "cal", "x", (3, 16, 16), 40)
    repo = work / "repo"
    cal = CalibrationOptions(data=work / "cal")
    common = {"calibration": cal, "benchmark": False, "progress": False, "min_validation_samples": 8}
    build(BuildOptions(source=source, output=repo / "conv_int8", precision=Precision.INT8, **common))  # type: ignore[arg-type]
    build(BuildOptions(source=source, output=repo / "conv_fp16", precision=Precision.FP16, **common))  # type: ignore[arg-type]
    if HAS_OPENVINO:
        build(BuildOptions(source=source, output=repo / "conv_ov", target=Target.OPENVINO, **common))  # type: ignore[arg-type]
    server = KilnProcess([repo], "--exit-on-error", log_dir=work).start()
    yield server, source
    assert server.stop() == 0, server.log()


def _reference(source: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


MODELS = [
    "conv_int8",
    "conv_fp16",
    pytest.param("conv_ov", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="no openvino")),
]


@pytest.mark.parametrize("model", MODELS)
def test_built_model_answers_over_http_and_grpc(built: tuple[KilnProcess, Path], model: str) -> None:
    server, source = built
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    expected = _reference(source, x)
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_model_ready(model)
    config = http.get_model_config(model)
    assert config["max_batch_size"] == 8
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = http.infer(model, [inp]).as_numpy("logits")
    assert got.shape == (4, 10)
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() > 0.99
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    ginp = grpcclient.InferInput("x", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_allclose(grpc.infer(model, [ginp]).as_numpy("logits"), got, rtol=1e-5, atol=1e-5)
