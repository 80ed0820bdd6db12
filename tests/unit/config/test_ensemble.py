"""Ensemble configs checked against their step models' configs: each rule of the load-time validation."""

from __future__ import annotations

import pytest

from kiln.config import parse_config
from kiln.config.ensemble import build_plan
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError

STEPS = {
    "add": """name: "add" max_batch_size: 8
      input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 4 ] } ]
      output [ { name: "S" data_type: TYPE_FP32 dims: [ 4 ] } ]""",
    "small": """name: "small" max_batch_size: 2
      input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
      output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]""",
    "nobatch": """name: "nobatch" max_batch_size: 0
      input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
      output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]""",
    "ints": """name: "ints" max_batch_size: 8
      input [ { name: "X" data_type: TYPE_INT32 dims: [ 4 ] } ]
      output [ { name: "Y" data_type: TYPE_INT32 dims: [ 4 ] } ]""",
    "opt": """name: "opt" max_batch_size: 8
      input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] },
              { name: "MASK" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]
      output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]""",
    "stream": """name: "stream" max_batch_size: 8
      input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
      output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
      model_transaction_policy { decoupled: true }""",
}


def lookup(name: str, version: str) -> model_config_pb2.ModelConfig:
    if name not in STEPS:
        raise ModelConfigError(f"no model '{name}'")
    return parse_config(STEPS[name], name)


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


def ensemble(steps: list[str], inputs: str = "", outputs: str = "", mbs: int = 8, extra: str = "") -> str:
    inputs = inputs or '{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }'
    outputs = outputs or '{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }'
    return (
        f'name: "ens" platform: "ensemble" max_batch_size: {mbs} input [ {inputs} ] output [ {outputs} ] '
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }} {extra}"
    )


def plan(text: str):  # type: ignore[no-untyped-def]
    return build_plan(parse_config(text, "ens"), lookup)


def test_a_valid_dag_is_built_with_its_consumers() -> None:
    p = plan(
        ensemble(
            [
                step("add", {"A": "t", "B": "IN"}, {"S": "OUT"}),
                step("small", {"X": "IN"}, {"Y": "t"}),
            ],
            mbs=2,
        )
    )
    assert [s.model_name for s in p.steps] == ["add", "small"]
    assert p.ready_steps(set(p.inputs), set()) == [1]
    assert p.consumers["IN"] == (0, 1)
    assert not p.decoupled
    assert p.unneeded_steps(frozenset({"OUT"})) == frozenset()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ensemble([]), "must list one or more steps"),
        (ensemble([step("small", {"X": "IN"}, {"Y": "OUT"})]), "allows a batch of 8, but model 'small' only 2"),
        (ensemble([step("missing", {"X": "IN"}, {"Y": "OUT"})]), "no model 'missing'"),
        (ensemble([step("small", {"NOPE": "IN"}, {"Y": "OUT"})], mbs=2), "'NOPE', which is not an input"),
        (ensemble([step("small", {"X": "IN"}, {"NOPE": "OUT"})], mbs=2), "'NOPE', which is not an output"),
        (ensemble([step("add", {"A": "IN"}, {"S": "OUT"})]), r"required inputs \['B'\] are not in input_map"),
        (ensemble([step("small", {"X": "IN"}, {})], mbs=2), "output_map is empty"),
        (ensemble([step("ints", {"X": "IN"}, {"Y": "OUT"})]), "inconsistent data types: TYPE_FP32"),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"})], outputs='{ name: "OUT" data_type: TYPE_FP32 '
                     "dims: [ 5 ] }", mbs=2),
            r"inconsistent shapes: \[-1, 4\] from model 'small', \[-1, 5\] from the ensemble",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "t"})], mbs=2),
            "output 'OUT' is not written by any step",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"}), step("small", {"X": "IN"}, {"Y": "OUT"})], mbs=2),
            "tensor 'OUT' is written by step 0 .* and again by step 1",
        ),
        (
            ensemble(
                [step("small", {"X": "IN"}, {"Y": "OUT"})], mbs=2,
                inputs='{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }, '
                '{ name: "UNUSED" data_type: TYPE_FP32 dims: [ 4 ] }',
            ),
            "input 'UNUSED' is not read by any step",
        ),
        (
            ensemble([step("small", {"X": "ghost"}, {"Y": "OUT"}), step("small", {"X": "IN"}, {"Y": "z"})], mbs=2),
            "reads tensor 'ghost'.*neither an ensemble input nor written by any step",
        ),
        (
            ensemble(
                [step("add", {"A": "IN", "B": "b"}, {"S": "a"}), step("add", {"A": "a", "B": "IN"}, {"S": "b"}),
                 step("small", {"X": "a"}, {"Y": "OUT"})], mbs=2,
            ),
            "the steps form a cycle and can never run: step 0 .*, step 1 .*, step 2",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"})], mbs=2, extra="instance_group [ { count: 2 } ]"),
            "'instance_group' is not allowed in an ensemble",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"})], mbs=2,
                     extra="optimization { priority: PRIORITY_MAX }"),
            "'optimization' is not allowed in an ensemble",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"}, version=0)], mbs=2),
            "model_version must be -1",
        ),
        (
            ensemble([step("small", {"X": "IN"}, {"Y": "OUT"}).replace("{", '{ model_namespace: "ns"', 1)], mbs=2),
            "model_namespace is not supported",
        ),
        (
            ensemble(
                [step("stream", {"X": "IN"}, {"Y": "p"}), step("stream", {"X": "IN"}, {"Y": "q"}),
                 step("add", {"A": "p", "B": "q"}, {"S": "OUT"})],
            ),
            "decoupled step 0 .* and step 1 .* run side by side",
        ),
    ],
)  # fmt: skip
def test_each_mistake_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        plan(text)


def test_batch_dimensions_are_compared_as_the_tensors_travel() -> None:
    # a non-batching step whose first dim is the batch, inside a batching ensemble; and the reverse
    plan(ensemble([step("nobatch", {"X": "IN"}, {"Y": "OUT"})], mbs=4))
    plan(
        ensemble(
            [step("small", {"X": "IN"}, {"Y": "OUT"})],
            inputs='{ name: "IN" data_type: TYPE_FP32 dims: [ -1, 4 ] }',
            outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [ -1, 4 ] }',
            mbs=0,
        )
    )
    # the ensemble batches to 8 and the non-batching step has no batch limit: allowed, as in Triton
    plan(ensemble([step("nobatch", {"X": "IN"}, {"Y": "OUT"})], mbs=8))


def test_optional_step_inputs_may_stay_unmapped_and_decoupled_steps_make_it_decoupled() -> None:
    plan(ensemble([step("opt", {"X": "IN"}, {"Y": "OUT"})]))
    p = plan(
        ensemble([step("stream", {"X": "IN"}, {"Y": "t"}), step("add", {"A": "t", "B": "IN"}, {"S": "OUT"})])
    )
    assert p.decoupled


def test_steps_no_requested_output_needs_are_pruned() -> None:
    p = plan(
        ensemble(
            [step("small", {"X": "IN"}, {"Y": "OUT"}), step("small", {"X": "IN"}, {"Y": "OTHER"})],
            outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }, '
            '{ name: "OTHER" data_type: TYPE_FP32 dims: [ 4 ] }',
            mbs=2,
        )
    )
    assert p.unneeded_steps(frozenset({"OUT"})) == frozenset({1})
    assert p.unneeded_steps(frozenset({"OUT", "OTHER"})) == frozenset()
