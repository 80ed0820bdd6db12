"""The PyTorch backend on real TorchScript / torch.export models built here: Triton's naming rules, datatypes,
parameters, and what it refuses."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from kiln.backends import backend_name
from kiln.config import parse_config
from kiln.errors import InternalError, InvalidArgumentError, KilnError, ModelConfigError, ModelLoadError
from kiln.model.version import Model
from kiln.repository import ModelRepository
from torch_models import build_repository, mlp_reference, write_torchscript

# torch 2.13 marks the TorchScript API deprecated; these tests build and serve TorchScript on purpose
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("torch_repo"))


def load(repo: Path, name: str, config: str | None = None) -> Model:
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config + "\n")
    cfg = ModelRepository.read_config(name, repo / name)
    return Model.load(cfg, repo / name, 1, backend_name(cfg, repo / name))


def f32(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_the_registry_picks_pytorch_by_platform_backend_and_file(repo: Path) -> None:
    for name in ("add_sub", "named"):
        cfg = ModelRepository.read_config(name, repo / name)
        assert backend_name(cfg, repo / name) == "pytorch"
    assert backend_name(parse_config('name: "x"'), repo / "add_sub") == "pytorch"  # model.pt in 1/


def test_positional_names_index_inputs_and_the_returned_tuple(repo: Path) -> None:
    model = load(repo, "add_sub")
    assert model.config.platform == "pytorch_libtorch" and model.config.backend == "pytorch"
    out = model.backend.execute(
        {"INPUT__1": f32([1, 1, 1, 1]), "INPUT__0": f32([5, 6, 7, 8])}, ["OUTPUT__1", "OUTPUT__0"]
    )
    np.testing.assert_array_equal(out["OUTPUT__0"], f32([6, 7, 8, 9]))
    np.testing.assert_array_equal(out["OUTPUT__1"], f32([4, 5, 6, 7]))


def test_forward_argument_names_map_inputs_whatever_the_config_order(repo: Path) -> None:
    model = load(repo, "named")  # config lists scale before x; forward(x, scale)
    out = model.backend.execute({"x": f32([1, 2, 3], [4, 5, 6]), "scale": f32([2], [10])}, ["y"])
    np.testing.assert_array_equal(out["y"], f32([2, 4, 6], [40, 50, 60]))


def test_dict_outputs_by_key_with_bool_and_a_dict_input_by_name(repo: Path) -> None:
    model = load(repo, "dict_out")
    out = model.backend.execute({"INPUT__0": f32([1, -1])}, ["mask", "logits"])
    assert out["mask"].dtype == np.bool_ and out["mask"].tolist() == [[True, False]]
    np.testing.assert_array_equal(out["logits"], f32([2, -2]))
    summed = load(repo, "dict_in").backend.execute(
        {"a": np.array([[1, 2]], np.int32), "b": np.array([[3, 4]], np.int32)}, ["OUTPUT__0"]
    )
    assert summed["OUTPUT__0"].dtype == np.int32 and summed["OUTPUT__0"].tolist() == [[13, 24]]


def test_bool_tensors_in_and_out(repo: Path) -> None:
    model = load(repo, "flags")
    flags = np.array([[True, False, True], [False, False, True]])
    out = model.backend.execute(
        {"flags": flags, "values": np.array([[1, 2, 3], [4, 5, 6]])}, ["NOT__0", "KEPT__1"]
    )
    assert out["NOT__0"].tolist() == (~flags).tolist()
    assert out["KEPT__1"].dtype == np.int64 and out["KEPT__1"].tolist() == [[1, 0, 3], [0, 0, 6]]


def test_bytes_go_in_and_out_as_lists_of_strings(repo: Path) -> None:
    model = load(repo, "strings")
    out = model.backend.execute({"text": np.array([b"abc", "é".encode()], dtype=np.object_)}, ["OUTPUT__0"])
    assert out["OUTPUT__0"].tolist() == [b"ABC", "é".encode()]  # TorchScript's upper() is ASCII-only


def test_inference_mode_by_default_and_no_grad_when_it_is_turned_off(repo: Path) -> None:
    on = load(repo, "grad").backend.execute({"INPUT__0": f32([1])}, ["OUTPUT__1"])["OUTPUT__1"]
    assert on.tolist() == [[0.0, 1.0]]  # grad off, inference mode on
    model = load(repo, "threads")  # INFERENCE_MODE false, INTRA_OP_THREAD_COUNT 1
    off = model.backend.execute({"INPUT__0": f32([1])}, ["OUTPUT__1"])["OUTPUT__1"]
    assert off.tolist() == [[0.0, 0.0]]  # still torch.no_grad, no inference mode
    settings = model.backend.settings()
    assert settings["inference_mode"] is False and settings["intra_op_threads"] == 1
    model.unload()


def test_thread_parameters_set_torch_pools_and_settings_report_them(tmp_path: Path) -> None:
    # a fresh interpreter: torch's pools are process-wide and the inter-op one is sized only before first use
    config = """backend: "pytorch" max_batch_size: 4
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "3" } }
parameters { key: "INTER_OP_THREAD_COUNT" value: { string_value: "2" } }
parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }
parameters { key: "ENABLE_JIT_PROFILING" value: { string_value: "false" } }
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT__1" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]"""
    write_torchscript(tmp_path, "m", config, model="add_sub")
    code = f"""
import json
from pathlib import Path
import numpy as np
import torch
from kiln.model.version import Model
from kiln.repository import ModelRepository
repo = Path({str(tmp_path)!r})
model = Model.load(ModelRepository.read_config("m", repo / "m"), repo / "m", 1, "pytorch")
ones = np.ones((1, 4), np.float32)
out = model.backend.execute({{"INPUT__0": ones, "INPUT__1": ones}}, ["OUTPUT__0"])
print(json.dumps({{**model.backend.settings(), "sum": out["OUTPUT__0"].tolist(),
                  "optimize_after": torch._C._get_graph_executor_optimize()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout.splitlines()[-1])
    assert settings["intra_op_threads"] == 3 and settings["inter_op_threads"] == 2
    assert settings["optimized_execution"] is False and settings["jit_profiling"] is False
    assert settings["sum"] == [[2.0, 2.0, 2.0, 2.0]]
    assert settings["optimize_after"] is True  # optimized execution is switched off only around each run


@pytest.mark.parametrize(
    ("parameter", "value", "message"),
    [
        ("INFERENCE_MODE", "maybe", "'INFERENCE_MODE' must be true or false"),
        ("INTRA_OP_THREAD_COUNT", "two", "'INTRA_OP_THREAD_COUNT' must be an integer"),
        ("ENABLE_NVFUSER", "true", "PyTorch 2 removed NvFuser"),
    ],
)
def test_a_bad_parameter_is_refused(repo: Path, parameter: str, value: str, message: str) -> None:
    config = (
        f'backend: "pytorch" max_batch_size: 4 parameters {{ key: "{parameter}" value: {{ string_value: "{value}" }} }}'
        ' input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }]'
    )
    write_torchscript(repo, "bad_param", config, model="grad")
    with pytest.raises(ModelConfigError, match=message):
        load(repo, "bad_param")


def test_an_unknown_parameter_is_logged_not_silently_dropped(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = (
        'backend: "pytorch" max_batch_size: 4 parameters { key: "NUM_BEAMS" value: { string_value: "4" } }'
        ' input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }]'
    )
    write_torchscript(repo, "odd_param", config, model="grad")
    with caplog.at_level(logging.WARNING, logger="kiln.backends.pytorch"):
        load(repo, "odd_param")
    assert "['NUM_BEAMS'] are not PyTorch backend settings" in caplog.text


@pytest.mark.parametrize(
    ("io", "message"),
    [
        (
            'input [{ name: "INPUT__0" data_type: TYPE_UINT32 dims: [4] }, { name: "INPUT__1" data_type: TYPE_FP32 '
            'dims: [4] }] output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]',
            "data_type TYPE_UINT32 is not supported by the PyTorch backend",
        ),
        (
            'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }] output [{ name: "OUTPUT__0" data_type: '
            "TYPE_FP32 dims: [4] }]",
            "configuration expects 1 inputs, the model's forward takes 2",
        ),
        (
            'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT__1" data_type: TYPE_FP32 '
            'dims: [4] }] output [{ name: "OUTPUT__5" data_type: TYPE_FP32 dims: [4] }]',
            "refer to result positions the model does not have; it returns 2",
        ),
        (
            'input [{ name: "INPUT__0" data_type: TYPE_STRING dims: [4] }, { name: "INPUT__1" data_type: TYPE_FP32 '
            'dims: [4] }] output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]',
            "only one dimension in all is allowed",
        ),
    ],
)
def test_configs_that_do_not_fit_the_model_are_refused_at_load(repo: Path, io: str, message: str) -> None:
    write_torchscript(repo, "misfit", f'backend: "pytorch" max_batch_size: 4 {io}', model="add_sub")
    with pytest.raises(KilnError, match=message):
        load(repo, "misfit")


def test_an_output_of_another_dtype_fails_the_request_as_triton_does(repo: Path) -> None:
    config = (
        'backend: "pytorch" max_batch_size: 4 input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]'
        ' output [{ name: "mask" data_type: TYPE_INT32 dims: [2] }, { name: "logits" data_type: TYPE_FP32 dims: [2] }]'
    )
    write_torchscript(repo, "wrong_dtype", config, model="dict_out")
    model = load(repo, "wrong_dtype")
    with pytest.raises(
        InvalidArgumentError, match="expects datatype TYPE_INT32 for output 'mask', model provides TYPE_BOOL"
    ):
        model.backend.execute({"INPUT__0": f32([1, 2])}, ["mask"])


def test_a_failing_forward_is_a_pytorch_execute_failure(repo: Path) -> None:
    model = load(repo, "add_sub")
    with pytest.raises(InternalError, match="PyTorch execute failure"):
        model.backend.execute({"INPUT__0": f32([1, 2, 3, 4]), "INPUT__1": f32([1, 2])}, ["OUTPUT__0"])


def test_weight_sharing_instances_share_one_module(repo: Path) -> None:
    model = load(repo, "mlp_traced")  # two instances, ENABLE_WEIGHT_SHARING
    assert len(model.backends) == 2 and model.backends[0]._module is model.backends[1]._module
    x = np.random.default_rng(0).random((5, 16), dtype=np.float32)
    np.testing.assert_allclose(
        model.backends[1].execute({"INPUT__0": x}, ["OUTPUT__0"])["OUTPUT__0"], mlp_reference(x), rtol=1e-5
    )
    assert model.backend.settings()["weight_sharing"] is True


def test_a_torch_export_program_has_a_signature_and_auto_completes(repo: Path) -> None:
    model = load(repo, "mlp_export")
    assert [(e.name, list(e.dims)) for e in model.config.input] == [("x", [16])]
    assert [(e.name, list(e.dims)) for e in model.config.output] == [("OUTPUT__0", [4])]
    assert model.max_batch_size == 16 and model.backend.settings()["format"] == "export"
    x = np.random.default_rng(1).random((3, 16), dtype=np.float32)
    np.testing.assert_allclose(
        model.backend.execute({"x": x}, ["OUTPUT__0"])["OUTPUT__0"], mlp_reference(x), rtol=1e-5
    )


def test_kind_gpu_is_refused_without_cuda(repo: Path) -> None:
    config = (Path(repo / "add_sub" / "config.pbtxt").read_text()) + "instance_group [{ kind: KIND_GPU }]\n"
    write_torchscript(repo, "on_gpu", config, model="add_sub")
    with pytest.raises(ModelLoadError, match="KIND_GPU"):
        load(repo, "on_gpu")


def test_a_file_that_is_not_torchscript_fails_its_load_clearly(tmp_path: Path) -> None:
    (tmp_path / "junk" / "1").mkdir(parents=True)
    (tmp_path / "junk" / "1" / "model.pt").write_bytes(b"not a model")
    (tmp_path / "junk" / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch" input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    with pytest.raises(ModelLoadError, match=r"PyTorch could not load model\.pt as a TorchScript model"):
        load(tmp_path, "junk")


def test_without_torch_the_load_names_the_extra(repo: Path) -> None:
    code = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NotInstalled())
from pathlib import Path
from kiln.backends.pytorch import PyTorchBackend
from kiln.errors import ModelLoadError
from kiln.model.version import Model
from kiln.repository import ModelRepository
repo = Path({str(repo)!r})
assert PyTorchBackend.gpu_available() is False
try:
    Model.load(ModelRepository.read_config("add_sub", repo / "add_sub"), repo / "add_sub", 1, "pytorch")
except ModelLoadError as e:
    print(e.message)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "PyTorch is not installed; install it with: pip install 'kiln[torch]'" in done.stdout
