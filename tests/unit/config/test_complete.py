"""Auto-complete of a config from the model's signature, and validation of a config against it."""

from __future__ import annotations

import re

import pytest

from kiln.config import ModelIO, autocomplete, config_to_dict, parse_config, validate
from kiln.errors import ModelConfigError
from kiln.types.datatypes import BY_NAME


def io(name: str, *shape: int, dtype: str = "FP32") -> ModelIO:
    return ModelIO(name, BY_NAME[dtype], tuple(shape))


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


RESHAPED = (
    'name: "m" max_batch_size: 2 input [ { name: "x" data_type: TYPE_FP32 dims: [6] '
    "reshape: { shape: [2, 3] } } ] "
    'output [ { name: "y" data_type: TYPE_FP32 dims: [2, 3] } ]'
)


def test_reshape_rank_is_checked_against_the_model() -> None:
    """The model sees the reshaped tensor: a model of rank 3 fits, one of the config dims' rank 2 does not."""
    validate(parse_config(RESHAPED), [io("x", -1, 2, 3)], [io("y", -1, 2, 3)])
    message = (
        "model 'm' input 'x': config gives rank 3 [-1, 2, 3] (max_batch_size > 0 adds a batch dimension) "
        "but the model expects rank 2 [-1, 6]"
    )
    with pytest.raises(ModelConfigError, match=f"^{re.escape(message)}$"):
        validate(parse_config(RESHAPED), [io("x", -1, 6)], [io("y", -1, 2, 3)])
