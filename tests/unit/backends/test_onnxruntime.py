"""The ONNX Runtime backend's config handling, as units."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.backends.onnxruntime import tensorrt_options
from kiln.config import parse_config
from kiln.errors import ModelConfigError


def test_tensorrt_accelerator_section_becomes_provider_options(tmp_path: Path) -> None:
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
