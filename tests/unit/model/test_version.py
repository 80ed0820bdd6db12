"""Loading one model version: auto-complete from the model file, or a config that must say everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ModelConfigError
from kiln.examples import models, write_model
from kiln.model import Model
from kiln.repository import ModelRepository


def test_model_load_autocompletes_a_model_without_config(tmp_path: Path) -> None:
    write_model(tmp_path, "m", models.add_sub(["batch", 4]), None)
    config = ModelRepository.read_config("m", tmp_path / "m")
    model = Model.load(config, tmp_path / "m", 1, "onnxruntime")
    assert model.config.max_batch_size == 4
    assert model.config.platform == "onnxruntime_onnx"
    assert {e.name for e in model.config.input} == {"INPUT0", "INPUT1"}
    assert len(model.config.instance_group) == 1


INPUTS_ONLY = (
    'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [4] }, '
    '{ name: "INPUT1" data_type: TYPE_FP32 dims: [4] } ]'
)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, r"the model file has input\(s\) \['INPUT0', 'INPUT1'\] that config.pbtxt does not list"),
        (INPUTS_ONLY, "config lists no outputs"),
    ],
    ids=["no-config", "no-outputs"],
)
def test_disabled_autocomplete_refuses_an_incomplete_config(
    tmp_path: Path, config: str | None, message: str
) -> None:
    write_model(tmp_path, "m", models.add_sub([4]), config)
    config_pb = ModelRepository.read_config("m", tmp_path / "m")
    with pytest.raises(ModelConfigError, match=message):
        Model.load(config_pb, tmp_path / "m", 1, "onnxruntime", auto_complete=False)
