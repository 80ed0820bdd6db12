"""The TFLite backend (LiteRT Interpreter) on models converted here by TF's TFLiteConverter: auto-complete from the
input/output details, a dynamic batch by resize, num_threads, and an INT8 model with its scale/zero point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")  # the converter that makes the test models

import tf_models
from kiln.backends import backend_name
from kiln.config import parse_config
from kiln.errors import InvalidArgumentError, ModelConfigError
from kiln.model import Model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite")
    return {
        "float": tf_models.write_tflite(root / "float.tflite"),
        "int8": tf_models.write_tflite(root / "int8.tflite", int8=True),
    }


def load(tmp_path: Path, source: Path, config: str = "", **kwargs: object) -> Model:
    (tmp_path / "m" / "1").mkdir(parents=True, exist_ok=True)
    target = tmp_path / "m" / "1" / "model.tflite"
    target.unlink(missing_ok=True)
    target.symlink_to(source)
    parsed = parse_config('name: "m"\n' + config)
    return Model.load(parsed, tmp_path / "m", 1, backend_name(parsed, tmp_path / "m"), **kwargs)  # type: ignore[arg-type]


def test_float_model_autocompletes_and_batches_by_resizing(files: dict[str, Path], tmp_path: Path) -> None:
    model = load(tmp_path, files["float"])
    config = model.config
    assert config.backend == "tflite" and model.backend.platform == "tflite"
    assert config.max_batch_size == 4
    assert [(e.name, list(e.dims)) for e in config.input] == [("x", [4])]  # the signature's names
    assert [(e.name, list(e.dims)) for e in config.output] == [("y", [3])]
    for batch in (1, 3, 4, 2):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, 4)).astype(np.float32)
        y = model.execute({"x": x}, ["y"])["y"]
        np.testing.assert_allclose(y, tf_models.dense_reference(x), rtol=1e-5, atol=1e-6)
    assert model.backend.settings()["intra_op_threads"] >= 1
    assert "quantization" not in model.backend.settings()


def test_tensor_names_and_num_threads_parameters(files: dict[str, Path], tmp_path: Path) -> None:
    params = (
        'parameters { key: "num_threads" value { string_value: "2" } }\n'
        'parameters { key: "tensor_names" value { string_value: "tensor" } }\n'
    )
    model = load(tmp_path, files["float"], params)
    assert [e.name for e in model.config.input] == ["serving_default_x:0"]
    assert model.backend.settings()["intra_op_threads"] == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("num_threads", "0", "must be >= 1"), ("tensor_names", "nice", "'signature' or 'tensor'")],
)
def test_bad_parameters_are_refused(
    files: dict[str, Path], tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ModelConfigError, match=message):
        load(tmp_path, files["float"], f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')


def test_int8_model_reports_scale_and_zero_point(files: dict[str, Path], tmp_path: Path) -> None:
    model = load(tmp_path, files["int8"])
    assert [e.data_type for e in model.config.input] == [6]  # TYPE_INT8
    quant = model.backend.settings()["quantization"]
    assert set(quant) == {"x", "y"}  # type: ignore[arg-type]
    x_q, y_q = quant["x"], quant["y"]  # type: ignore[index]
    assert x_q["scale"] > 0 and -128 <= x_q["zero_point"] <= 127
    # in the completed config too, for clients (GET /v2/models/m/config)
    assert json.loads(model.config.parameters["quantization:x"].string_value) == x_q
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    x_int = np.clip(np.round(x / x_q["scale"]) + x_q["zero_point"], -128, 127).astype(np.int8)
    y_int = model.execute({"x": x_int}, ["y"])["y"]
    assert y_int.dtype == np.int8 and y_int.shape == (3, 3)
    y = (y_int.astype(np.float32) - y_q["zero_point"]) * y_q["scale"]
    np.testing.assert_allclose(y, tf_models.dense_reference(x), atol=0.05)


def test_quantization_stays_out_of_the_config_without_autocomplete(
    files: dict[str, Path], tmp_path: Path
) -> None:
    config = (
        'max_batch_size: 2 input [ { name: "x" data_type: TYPE_INT8 dims: [4] } ] '
        'output [ { name: "y" data_type: TYPE_INT8 dims: [3] } ]'
    )
    model = load(tmp_path, files["int8"], config, auto_complete=False)
    assert not [k for k in model.config.parameters if k.startswith("quantization:")]
    assert "x" in model.backend.settings()["quantization"]  # type: ignore[operator]


def test_a_fixed_dim_cannot_be_resized(files: dict[str, Path], tmp_path: Path) -> None:
    model = load(tmp_path, files["float"])
    with pytest.raises(InvalidArgumentError, match="model rejected the request"):
        model.backend.execute({"x": np.zeros((2, 5), np.float32)}, ["y"])


def test_without_litert_the_load_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.tflite").write_bytes(b"")
    code = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ai_edge_litert":
            raise ModuleNotFoundError(name)
from pathlib import Path
sys.meta_path.insert(0, NotInstalled())
from kiln.config import parse_config
from kiln.model import Model
try:
    Model.load(parse_config('name: "m" backend: "tflite"'), Path({str(tmp_path / "m")!r}), 1, "tflite")
except Exception as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "install it with: pip install 'kiln[tflite]'" in out.stdout, out.stdout + out.stderr
