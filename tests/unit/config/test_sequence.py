"""sequence_batching read and checked: strategies, control tensors, implicit state and its initial values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.config import parse_config
from kiln.config.sequence import sequence_options
from kiln.errors import ModelConfigError

BASE = 'name: "m" max_batch_size: 8 input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ] '


def options(text: str, folder: Path = Path(".")):  # type: ignore[no-untyped-def]
    return sequence_options(parse_config(BASE + text, "m"), folder)


def test_no_sequence_batching_is_none() -> None:
    assert options("") is None


def test_direct_is_the_default_strategy_with_a_one_second_idle_time() -> None:
    o = options(
        'sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START '
        'fp32_false_true: [ 0, 1 ] } ] }, { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID '
        "data_type: TYPE_STRING } ] } ] }"
    )
    assert o.strategy == "direct" and o.idle_us == 1_000_000
    assert [(c.name, c.kind, c.datatype.name) for c in o.controls] == [
        ("S", "START", "FP32"),
        ("C", "CORRID", "BYTES"),
    ]
    assert o.provided_inputs == {"S", "C"}


def test_oldest_options_are_read() -> None:
    o = options(
        "sequence_batching { max_sequence_idle_microseconds: 5000 oldest { max_candidate_sequences: 4 "
        "preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100 preserve_ordering: true } }"
    )
    assert (o.strategy, o.idle_us, o.max_candidate_sequences, o.preferred_batch_sizes) == (
        "oldest",
        5000,
        4,
        (2, 4),
    )
    assert o.max_queue_delay_us == 100 and o.preserve_ordering


def test_initial_state_from_zeros_or_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "start").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    o = options(
        'sequence_batching { state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2, 3 ] '
        'initial_state { data_type: TYPE_FP32 dims: [ 2, 3 ] data_file: "start" name: "s" } }, '
        '{ input_name: "C" output_name: "D" data_type: TYPE_INT32 dims: [ -1 ] } ] }',
        tmp_path,
    )
    np.testing.assert_array_equal(o.states[0].initial, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(o.states[1].initial, np.zeros(1, np.int32))  # -1 starts at size 1
    assert o.state_outputs == {"B", "D"} and o.provided_inputs == {"A", "C"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
            "needs exactly one of int32_false_true",
        ),
        (
            'sequence_batching { control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID '
            "data_type: TYPE_FP32 } ] } ] }",
            "CONTROL_SEQUENCE_CORRID needs data_type one of",
        ),
        (
            'sequence_batching { control_input [ { name: "INPUT" control [ { kind: CONTROL_SEQUENCE_READY '
            "int32_false_true: [ 0, 1 ] } ] } ] }",
            "must not be listed under input",
        ),
        (
            'sequence_batching { control_input [ { name: "A" control [ { kind: CONTROL_SEQUENCE_READY '
            'int32_false_true: [ 0, 1 ] } ] }, { name: "B" control [ { kind: CONTROL_SEQUENCE_READY '
            "int32_false_true: [ 0, 1 ] } ] } ] }",
            "more than one READY control",
        ),
        (
            'sequence_batching { state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] '
            'initial_state { data_type: TYPE_FP32 dims: [ 2 ] data_file: "missing" name: "s" } } ] }',
            "cannot read initial_state/missing",
        ),
        (
            'sequence_batching { state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] '
            'initial_state { data_type: TYPE_FP32 dims: [ 2 ] data_file: "../../etc/passwd" name: "s" } } ] }',
            "must stay inside",
        ),
        (
            'sequence_batching { state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] '
            "use_growable_memory: true } ] }",
            "GPU-memory options",
        ),
        ("sequence_batching { iterative_sequence: true }", "iterative_sequence is not implemented"),
        (
            "sequence_batching { oldest { preferred_batch_size: [ 16 ] } }",
            "preferred_batch_size .* must be between 1 and max_batch_size",
        ),
    ],
)
def test_mistakes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        options(text)
