"""Candidates of kiln tune rendered over the user's config: tuned fields change, every other field stays."""

from __future__ import annotations

from google.protobuf import text_format

from kiln.config.schema import model_config_pb2
from kiln.perf.tune.space import Candidate, SearchSpace, instance_kind, render

GROUP = model_config_pb2.ModelInstanceGroup
USER = """
name: "m"
backend: "onnxruntime"
max_batch_size: 4
version_policy { latest { num_versions: 2 } }
instance_group [ { name: "mine" count: 3 kind: KIND_GPU gpus: [ 0 ] }, { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 priority_levels: 2 default_priority_level: 1 }
parameters { key: "custom" value: { string_value: "keep" } }
parameters { key: "intra_op_thread_count" value: { string_value: "7" } }
model_warmup [
  { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }
]
"""


def user() -> model_config_pb2.ModelConfig:
    return text_format.Parse(USER, model_config_pb2.ModelConfig())


def test_preferred_sizes() -> None:
    assert Candidate(1, None, 16, "max/4", 0).preferred_sizes() == (4, 8, 16)
    assert Candidate(1, None, 16, "max/2", 0).preferred_sizes() == (8, 16)
    assert Candidate(1, None, 16, "max", 0).preferred_sizes() == (16,)
    assert Candidate(1, None, 16, "none", 0).preferred_sizes() == ()
    assert Candidate(1, None, 16, "max", None).preferred_sizes() == ()  # no batcher, no preferred sizes


def test_render_changes_the_tuned_fields_and_keeps_the_rest() -> None:
    config = render(user(), Candidate(2, 1, 16, "max/2", 500))
    assert config.max_batch_size == 16
    assert len(config.instance_group) == 1
    group = config.instance_group[0]
    assert (group.name, group.count, group.kind, list(group.gpus)) == ("mine", 2, GROUP.KIND_CPU, [])
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert (
        config.dynamic_batching.priority_levels == 2 and config.dynamic_batching.default_priority_level == 1
    )
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.parameters["custom"].string_value == "keep"
    assert config.version_policy.latest.num_versions == 2
    assert config.model_warmup[0].name == "w"
    auto = render(user(), Candidate(1, None, 8, "none", None))
    assert "intra_op_thread_count" not in auto.parameters  # Kiln's default threads
    assert not auto.HasField("dynamic_batching")


def test_a_cpu_host_is_never_tuned_into_gpu_instances() -> None:
    assert instance_kind(user(), gpu_available=False) == GROUP.KIND_CPU
    assert instance_kind(user(), gpu_available=True) == GROUP.KIND_GPU
    cpu_only = text_format.Parse(
        'name: "m" instance_group [ { kind: KIND_CPU } ]', model_config_pb2.ModelConfig()
    )
    assert instance_kind(cpu_only, gpu_available=True) == GROUP.KIND_CPU
    text = text_format.MessageToString(render(user(), Candidate(1, None, 8), instance_kind(user(), False)))
    assert "KIND_GPU" not in text


def test_candidates_that_serve_the_same_config_share_a_key() -> None:
    assert Candidate(1, None, 8, "max", None).key(2) == Candidate(1, None, 8, "none", None).key(2)
    assert Candidate(1, None, 8).key(2) == Candidate(1, 2, 8).key(2)  # auto threads on 2 cores = 2
    assert Candidate(2, None, 8).key(2) == Candidate(2, 1, 8).key(2)
    assert Candidate(1, None, 8, "max", 0).key(2) != Candidate(1, None, 8, "max", 500).key(2)


def test_space_steps_and_start() -> None:
    space = SearchSpace(max_batch_sizes=(4, 8, 16), delays_us=(None, 0, 500))
    start = space.start(16)
    assert start == Candidate(1, None, 8, "max/2", 500)
    assert space.step(start, "max_batch_size", +1) == Candidate(1, None, 16, "max/2", 500)
    assert space.step(start, "delay_us", +1) is None
    assert space.step(start, "delay_us", -1) == Candidate(1, None, 8, "max/2", 0)
    assert space.step(Candidate(1, None, 12), "max_batch_size", +1) == Candidate(1, None, 16)  # snapped
    assert space.dimensions(batching=False) == ("instances", "threads")
    assert SearchSpace.default(2).instances == (1, 2) and SearchSpace.default(2).threads == (None, 1, 2)


def test_a_batcher_with_more_than_the_tuned_fields_is_kept() -> None:
    from kiln.perf.tune.tuner import _space

    space = SearchSpace(delays_us=(None, 0, 500))
    assert _space(space, user()).delays_us == (0, 500)  # priority levels: "no batcher" is not tried
    plain = text_format.Parse('name: "m" dynamic_batching { max_queue_delay_microseconds: 100 }',
                              model_config_pb2.ModelConfig())  # fmt: skip
    assert _space(space, plain).delays_us == (None, 0, 500)
    assert _space(space, model_config_pb2.ModelConfig()).delays_us == (None, 0, 500)
