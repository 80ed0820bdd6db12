"""The ncnn backend on a hand-written net (ncnn's format is a text .param plus raw weights: no converter needed)
and on a small CNN converted from ONNX by pnnx (``kiln.builder.ncnn``), compared with ONNX Runtime: blob names as
tensor names, auto-complete from the Input layers' shapes, one ncnn run per sample of a batch, num_threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("ncnn")

from kiln.backends import backend_name
from kiln.config import parse_config
from kiln.errors import InvalidArgumentError, ModelConfigError, ModelLoadError
from kiln.examples import models
from kiln.model import Model

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((3, 4)).astype(np.float32)
BIAS = RNG.standard_normal(3).astype(np.float32)


def write_dense(folder: Path, shape_hint: bool = True) -> Path:
    """``y = relu(W x + b)`` for x of 4 values: an Input, an InnerProduct and a ReLU layer."""
    folder.mkdir(parents=True, exist_ok=True)
    hint = " 0=4" if shape_hint else ""
    (folder / "model.param").write_text(
        "7767517\n3 3\n"
        f"Input input 0 1 x{hint}\n"
        "InnerProduct fc 1 1 x fc_out 0=3 1=1 2=12\n"
        "ReLU relu 1 1 fc_out y\n"
    )
    # weight data: a 4-byte tag (0: raw FP32) then out x in floats; the bias: raw floats, no tag
    (folder / "model.bin").write_bytes(np.uint32(0).tobytes() + WEIGHT.tobytes() + BIAS.tobytes())
    return folder / "model.param"


def dense_reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ WEIGHT.T + BIAS, 0)


def load(model_dir: Path, config: str = "", **kwargs: object) -> Model:
    parsed = parse_config(f'name: "{model_dir.name}"\n' + config)
    return Model.load(parsed, model_dir, 1, backend_name(parsed, model_dir), **kwargs)  # type: ignore[arg-type]


def test_a_hand_written_net_autocompletes_and_runs_each_sample(tmp_path: Path) -> None:
    write_dense(tmp_path / "m" / "1")
    model = load(tmp_path / "m", 'parameters { key: "num_threads" value { string_value: "2" } }')
    config = model.config
    assert config.backend == "ncnn" and config.max_batch_size == 4
    assert [(e.name, e.data_type, list(e.dims)) for e in config.input] == [("x", 11, [4])]  # TYPE_FP32
    assert [(e.name, list(e.dims)) for e in config.output] == [("y", [3])]
    for batch in (1, 3, 4):
        x = RNG.standard_normal((batch, 4)).astype(np.float32)
        y = model.execute({"x": x}, ["y"])["y"]
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, dense_reference(x), rtol=1e-5, atol=1e-6)
    # any blob can be extracted, not only the graph's outputs
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(
        model.backend.execute({"x": x}, ["fc_out"])["fc_out"], x @ WEIGHT.T + BIAS, rtol=1e-5, atol=1e-6
    )
    settings = model.backend.settings()
    assert settings["num_threads"] == 2 and str(settings["runtime"]).startswith("ncnn ")
    with pytest.raises(InvalidArgumentError, match="takes \\[-1, 4\\]"):
        model.backend.execute({"x": np.zeros((2, 5), np.float32)}, ["y"])


def test_without_input_shapes_the_config_declares_the_model(tmp_path: Path) -> None:
    write_dense(tmp_path / "m" / "1", shape_hint=False)
    with pytest.raises(ModelConfigError, match="lists no outputs"):
        load(tmp_path / "m")
    declared = (
        'max_batch_size: 0 input [ { name: "x" data_type: TYPE_FP32 dims: [-1, 4] } ] '
        'output [ { name: "y" data_type: TYPE_FP32 dims: [-1, 3] } ]'
    )
    model = load(tmp_path / "m", declared)
    assert model.backend.signature() is None and model.config.max_batch_size == 0
    x = RNG.standard_normal((2, 4)).astype(np.float32)  # max_batch_size 0: the first of dims is the sample
    np.testing.assert_allclose(model.execute({"x": x}, ["y"])["y"], dense_reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ('input [ { name: "z" data_type: TYPE_FP32 dims: [4] } ]', ModelConfigError, "no such input blob"),
        ('input [ { name: "x" data_type: TYPE_INT32 dims: [4] } ]', ModelConfigError, "TYPE_FP32 only"),
        ('output [ { name: "nope" data_type: TYPE_FP32 dims: [3] } ]', ModelConfigError, "no such blob"),
        ('parameters { key: "num_threads" value { string_value: "0" } }', ModelConfigError, "must be >= 1"),
        ("instance_group [ { kind: KIND_GPU } ]", ModelLoadError, "KIND_GPU but no GPU"),
    ],
)
def test_configs_that_do_not_fit_are_refused(
    tmp_path: Path, config: str, error: type[Exception], message: str
) -> None:
    write_dense(tmp_path / "m" / "1")
    with pytest.raises(error, match=message):
        load(tmp_path / "m", 'backend: "ncnn" ' + config)


def test_a_missing_weights_file_is_named(tmp_path: Path) -> None:
    write_dense(tmp_path / "m" / "1")
    (tmp_path / "m" / "1" / "model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights file model\.bin"):
        load(tmp_path / "m")


def test_without_ncnn_the_load_names_the_extra(tmp_path: Path) -> None:
    write_dense(tmp_path / "m" / "1")
    code = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ncnn":
            raise ModuleNotFoundError(name)
from pathlib import Path
sys.meta_path.insert(0, NotInstalled())
from kiln.config import parse_config
from kiln.model import Model
try:
    Model.load(parse_config('name: "m" backend: "ncnn"'), Path({str(tmp_path / "m")!r}), 1, "ncnn")
except Exception as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "install it with: pip install 'kiln[ncnn]'" in out.stdout, out.stdout + out.stderr


def test_renaming_keeps_source_names_and_moves_clashing_blobs() -> None:
    from kiln.builder.data import InputSpec
    from kiln.builder.ncnn import _rename

    text = "7767517\n3 3\nInput in0 0 1 in0\nReLU r 1 1 in0 1\nSigmoid s 1 1 1 out0\n"
    f32 = np.dtype(np.float32)
    out, layers = _rename(text, [InputSpec("img", f32, (-1, 3, 8, 8))], [InputSpec("1", f32, (-1, 3, 8, 8))])
    assert layers == 3
    assert out.splitlines()[2:] == [
        "Input in0 0 1 img 2=3 1=8 0=8",
        "ReLU r 1 1 img 1_kiln",
        "Sigmoid s 1 1 1_kiln 1",
    ]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """image_classifier (ONNX) -> ncnn by pnnx, through the builder's conversion step."""
    pytest.importorskip("pnnx")
    from kiln.builder.ncnn import build_ncnn
    from kiln.builder.options import Precision, ShapeProfile
    from kiln.builder.profiles import ResolvedProfile
    from kiln.builder.report import StageRecord

    root = tmp_path_factory.mktemp("ncnn")
    source = models.image_classifier(num_classes=10, size=32)
    onnx.save(source, str(root / "source.onnx"))
    profile = ResolvedProfile(ShapeProfile(), 8, {"input": (1, 3, 32, 32)})
    record = StageRecord("precision fp32")
    param = build_ncnn(source, Precision.FP32, profile, root / "cnn" / "1", record)
    assert param.name == "model.param" and (param.parent / "model.bin").is_file()
    assert sorted(p.name for p in param.parent.iterdir()) == ["model.bin", "model.param"]
    assert record.details["ncnn_layers"] >= 5
    return root / "source.onnx", root / "cnn"


def test_a_pnnx_conversion_matches_onnxruntime(converted: tuple[Path, Path]) -> None:
    source, model_dir = converted
    model = load(model_dir)
    assert [(e.name, list(e.dims)) for e in model.config.input] == [("input", [3, 32, 32])]  # ONNX names
    assert [(e.name, list(e.dims)) for e in model.config.output] == [("probabilities", [10])]
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = session.run(None, {"input": x})[0]
    got = model.execute({"input": x}, ["probabilities"])["probabilities"]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
