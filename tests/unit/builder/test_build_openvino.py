"""The OpenVINO target: IR files, FP16 compression, NNCF INT8 (FakeQuantize), the OpenVINO serving backend."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from build_models import conv_net, save, write_samples
from kiln.backends.base import BackendContext
from kiln.backends.openvino import OpenVinoBackend
from kiln.builder import BuildOptions, CalibrationMethod, CalibrationOptions, Precision, Target, build
from kiln.config import load_config
from kiln.errors import InvalidArgumentError
from kiln.perf import BenchOptions, bench


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ov")
    save(conv_net(), root, "conv.onnx")
    write_samples(root / "cal", "x", (3, 16, 16), 40)
    return root


def _build(work: Path, name: str, precision: Precision, method: CalibrationMethod | None = None) -> Path:
    result = build(
        BuildOptions(
            source=work / "conv.onnx",
            output=work / "repo" / name,
            precision=precision,
            target=Target.OPENVINO,
            calibration=CalibrationOptions(data=work / "cal", method=method),
            benchmark=False,
            progress=False,
            min_validation_samples=0,
        )
    )
    return result.version_dir


def _layer_types(xml: Path) -> list[str]:
    return [layer.get("type", "") for layer in ET.parse(xml).getroot().iter("layer")]


def _element_types(xml: Path) -> set[str]:
    return {d.get("element_type", "") for d in ET.parse(xml).getroot().iter("data") if d.get("element_type")}


def test_fp32_fp16_int8_irs(work: Path) -> None:
    fp32 = _build(work, "fp32", Precision.FP32)
    assert (fp32 / "model.xml").is_file() and (fp32 / "model.bin").is_file()
    config = load_config(fp32.parent / "config.pbtxt")
    assert config.backend == "openvino"
    assert config.parameters["inference_precision"].string_value == "f32"
    assert any((fp32.parent / "ov_cache").iterdir())  # compiled-model cache warmed by the build
    fp16 = _build(work, "fp16", Precision.FP16)
    assert "f16" in _element_types(fp16 / "model.xml")
    assert (fp16 / "model.bin").stat().st_size < (fp32 / "model.bin").stat().st_size
    (timed,) = bench(BenchOptions(artifacts=(fp32.parent,), iterations=10, warmup_s=0.01, batch=2))
    assert timed.backend == "openvino" and timed.latency.iterations == 10
    assert timed.settings["INFERENCE_PRECISION_HINT"] == "f32"  # the config's, as kiln serve compiles it
    assert timed.threads == timed.settings["INFERENCE_NUM_THREADS"]
    int8 = _build(work, "int8", Precision.INT8, CalibrationMethod.MINMAX)
    assert _layer_types(int8 / "model.xml").count("FakeQuantize") >= 2
    assert "FakeQuantize" not in _layer_types(fp32 / "model.xml")


def test_entropy_is_refused_for_openvino(work: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="entropy is not available"):
        _build(work, "entropy", Precision.INT8, CalibrationMethod.ENTROPY)
    assert not (work / "repo" / "entropy").exists()


def test_backend_serves_the_ir(work: Path) -> None:
    version = _build(work, "served", Precision.FP32)
    config = load_config(version.parent / "config.pbtxt")
    config.name = "served"
    backend = OpenVinoBackend(config, version / "model.xml", BackendContext(cpu_count=2))
    backend.load()
    inputs, outputs = backend.signature()
    assert [(i.name, i.datatype.name, i.shape) for i in inputs] == [("x", "FP32", (-1, 3, 16, 16))]
    assert [(o.name, o.shape) for o in outputs] == [("logits", (-1, 10))]
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = backend.execute({"x": x}, ["logits"])["logits"]
    import onnxruntime as ort

    ref = ort.InferenceSession(str(work / "conv.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    backend.unload()
