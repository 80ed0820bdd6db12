"""config.pbtxt parsing, JSON rendering, auto-complete and validation against the model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import ModelIO, autocomplete, config_to_dict, parse_config, validate
from kiln.errors import ModelConfigError
from kiln.examples import models, write_model
from kiln.model import Model
from kiln.repository import ModelRepository
from kiln.types.datatypes import BY_NAME

FP32 = BY_NAME["FP32"]


def io(name: str, *shape: int, dtype: str = "FP32") -> ModelIO:
    return ModelIO(name, BY_NAME[dtype], tuple(shape))


def test_every_triton_field_parses() -> None:
    text = """
    name: "m" platform: "onnxruntime_onnx" max_batch_size: 8
    version_policy: { specific: { versions: [1, 3] } }
    input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, -1, -1] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [1000] label_filename: "labels.txt" } ]
    instance_group [ { count: 2 kind: KIND_CPU } ]
    dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
    parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
    model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [3, 8, 8]
      zero_data: true } } } ]
    optimization { graph { level: 1 } }
    """
    config = parse_config(text)
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.parameters["intra_op_thread_count"].string_value == "1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_batch_size: [\n", "1:17"),
        ('name: "m"\nno_such_field: 1\n', "2:1"),
        ('input [ { name: "x" data_type: TYPE_NOPE } ]', "TYPE_NOPE"),
    ],
)
def test_parse_errors_name_file_line_and_field(text: str, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        parse_config(text, "repo/m/config.pbtxt")
    assert "repo/m/config.pbtxt:" in err.value.message
    assert fragment in err.value.message


def test_json_rendering_uses_numbers_for_int64_and_includes_defaults() -> None:
    config = parse_config('name: "m" input [ { name: "x" data_type: TYPE_INT64 dims: [ 2, -1 ] } ]')
    doc = config_to_dict(config)
    assert doc["input"][0]["dims"] == [2, -1]
    assert doc["input"][0]["data_type"] == "TYPE_INT64"
    assert doc["max_batch_size"] == 0
    assert doc["output"] == []
    assert "dynamic_batching" not in doc


def test_autocomplete_fills_io_and_batching_from_dynamic_first_dim() -> None:
    config = parse_config('name: "m"')
    autocomplete(config, [io("x", -1, 3)], [io("y", -1, 5)], default_max_batch_size=4)
    assert config.max_batch_size == 4
    assert [(e.name, list(e.dims)) for e in config.input] == [("x", [3])]
    assert [(e.name, list(e.dims)) for e in config.output] == [("y", [5])]
    validate(config, [io("x", -1, 3)], [io("y", -1, 5)])


def test_autocomplete_keeps_max_batch_size_zero_for_fixed_first_dim() -> None:
    config = parse_config('name: "m"')
    autocomplete(config, [io("x", 2, 3)], [io("y", 2, 3)])
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 3]


def test_autocomplete_respects_full_rank_dims_written_by_the_user() -> None:
    config = parse_config('name: "m" input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]')
    autocomplete(config, [io("x", -1, 3)], [io("y", -1, 3)])
    assert config.max_batch_size == 0  # the user's dims include the batch dimension
    assert list(config.output[0].dims) == [-1, 3]


def test_autocomplete_fills_only_missing_data_type() -> None:
    config = parse_config('name: "m" max_batch_size: 2 input [ { name: "x" dims: [ 3 ] } ]')
    autocomplete(config, [io("x", -1, 3)], [io("y", -1, 3)])
    assert config_to_dict(config)["input"][0]["data_type"] == "TYPE_FP32"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('input [ { name: "nope" data_type: TYPE_FP32 dims: [3] } ]', "no such input"),
        ('input [ { name: "x" data_type: TYPE_INT32 dims: [3] } ]', "does not match the model's TYPE_FP32"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [3, 1] } ]', "rank"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [4] } ]', "do not match"),
        (
            'max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [3] } ]',
            "first dimension is fixed",
        ),
    ],
)
def test_validate_refuses_configs_that_do_not_fit_the_model(text: str, reason: str) -> None:
    config = parse_config(
        'name: "m" ' + text + ' output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]'
    )
    with pytest.raises(ModelConfigError) as err:
        validate(config, [io("x", 2, 3) if "max_batch" in text else io("x", 3)], [io("y", 2, 3)])
    assert reason in err.value.message


def test_validate_requires_every_model_input() -> None:
    config = parse_config(
        'name: "m" input [ { name: "a" data_type: TYPE_FP32 dims: [1] } ] '
        'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]'
    )
    with pytest.raises(ModelConfigError, match=r"input\(s\) \['b'\]"):
        validate(config, [io("a", 1), io("b", 1)], [io("y", 1)])


def test_reshape_rank_is_checked_against_the_model() -> None:
    config = parse_config(
        'name: "m" max_batch_size: 2 input [ { name: "x" data_type: TYPE_FP32 dims: [6] '
        "reshape: { shape: [2, 3] } } ] "
        'output [ { name: "y" data_type: TYPE_FP32 dims: [2, 3] } ]'
    )
    validate(config, [io("x", -1, 2, 3)], [io("y", -1, 2, 3)])


def test_version_policies(tmp_path: Path) -> None:
    for v in (1, 2, 5):
        write_model(tmp_path, "m", models.add_sub([2]), None, version=v)
    (tmp_path / "m" / "not_a_version").mkdir()
    d = tmp_path / "m"
    assert ModelRepository.versions(d, parse_config("")) == [5]
    assert ModelRepository.versions(d, parse_config("version_policy: { latest: { num_versions: 2 } }")) == [
        2,
        5,
    ]
    assert ModelRepository.versions(d, parse_config("version_policy: { all: {} }")) == [1, 2, 5]
    assert ModelRepository.versions(
        d, parse_config("version_policy: { specific: { versions: [1, 9] } }")
    ) == [1]


def test_config_name_must_match_directory(tmp_path: Path) -> None:
    write_model(tmp_path, "m", models.add_sub([2]), 'name: "other"\n')
    with pytest.raises(ModelConfigError, match="does not match the model directory name"):
        ModelRepository.read_config("m", tmp_path / "m")


def test_model_load_autocompletes_a_model_without_config(tmp_path: Path) -> None:
    write_model(tmp_path, "m", models.add_sub(["batch", 4]), None)
    config = ModelRepository.read_config("m", tmp_path / "m")
    model = Model.load(config, tmp_path / "m", 1, "onnxruntime")
    assert model.config.max_batch_size == 4
    assert model.config.platform == "onnxruntime_onnx"
    assert {e.name for e in model.config.input} == {"INPUT0", "INPUT1"}
    assert len(model.config.instance_group) == 1


def test_disabled_autocomplete_refuses_a_config_without_outputs(tmp_path: Path) -> None:
    write_model(tmp_path, "m", models.add_sub([4]), None)
    config = ModelRepository.read_config("m", tmp_path / "m")
    with pytest.raises(ModelConfigError):
        Model.load(config, tmp_path / "m", 1, "onnxruntime", auto_complete=False)


def test_tensorrt_accelerator_section_becomes_provider_options(tmp_path: Path) -> None:
    from kiln.backends.onnxruntime import tensorrt_options

    config = parse_config(
        'name: "m" optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } parameters { key: "trt_engine_cache_path" '
        'value: "trt_cache" } parameters { key: "trt_profile_min_shapes" value: "x:1x3" } } ] } }'
    )
    options = tensorrt_options(config, tmp_path)
    assert options == {
        "trt_fp16_enable": "1",
        "trt_int8_enable": "0",
        "trt_engine_cache_path": str(tmp_path / "trt_cache"),
        "trt_profile_min_shapes": "x:1x3",
    }
    assert tensorrt_options(parse_config('name: "m"'), tmp_path) is None
    bad = parse_config(
        'name: "m" optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
        'parameters { key: "precision_mode" value: "FP8" } } ] } }'
    )
    with pytest.raises(ModelConfigError, match="precision_mode"):
        tensorrt_options(bad, tmp_path)
