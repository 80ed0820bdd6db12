"""config.pbtxt parsing against Triton's schema, and JSON rendering."""

from __future__ import annotations

import pytest

from kiln.config import config_to_dict, parse_config
from kiln.errors import ModelConfigError


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
