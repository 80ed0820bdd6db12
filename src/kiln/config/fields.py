"""What Kiln does with every field of Triton's ``ModelConfig``: each is implemented, refused at load with the
reason, or (only where harmless, e.g. GPU-only tuning) accepted with a logged warning. A config that sets a
field Kiln does not know (a newer schema) is refused too: nothing loads silently half-understood.

The table lists every leaf of the schema by its dotted path (``tests/unit/config/test_fields.py`` walks the
schema and fails on any path missing here), and ``docs/config-fields.md`` is generated from it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError


class Treatment(enum.Enum):
    IMPLEMENTED = "implemented"
    REFUSED = "refused"
    WARNED = "accepted with a warning"


@dataclass(frozen=True)
class Rule:
    treatment: Treatment
    note: str = ""
    backends: frozenset[str] | None = None  # implemented only for these backends (refused for the others)


YES, NO, WARN = Treatment.IMPLEMENTED, Treatment.REFUSED, Treatment.WARNED
_ORT = frozenset({"onnxruntime"})
_GPU = "GPU-only tuning: no effect here (Kiln does not use it)"


def _rules(
    treatment: Treatment, note: str, *paths: str, backends: frozenset[str] | None = None
) -> dict[str, Rule]:
    return {p: Rule(treatment, note, backends) for p in paths}


FIELDS: dict[str, Rule] = {
    **_rules(YES, "", "name", "platform", "backend", "max_batch_size", "default_model_filename", "parameters"),
    **_rules(NO, "Kiln picks the runtime from backend / platform", "runtime"),
    **_rules(YES, "version policies", "version_policy.latest.num_versions", "version_policy.all",
             "version_policy.specific.versions"),
    **_rules(YES, "", "input.name", "input.data_type", "input.dims", "input.reshape.shape", "input.optional",
             "output.name", "output.data_type", "output.dims", "output.reshape.shape", "output.label_filename"),
    **_rules(YES, "reported in the config and metadata", "input.format"),
    **_rules(NO, "shape tensors are a TensorRT feature Kiln does not have", "input.is_shape_tensor",
             "output.is_shape_tensor"),
    **_rules(NO, "non-linear I/O formats are a TensorRT feature", "input.is_non_linear_format_io",
             "output.is_non_linear_format_io"),
    **_rules(NO, "ragged batching is not implemented", "input.allow_ragged_batch", "batch_input.kind",
             "batch_input.target_name", "batch_input.data_type", "batch_input.source_input",
             "batch_output.target_name", "batch_output.kind", "batch_output.source_input"),
    **_rules(YES, "the runtime's graph optimisation level (ONNX Runtime's levels; TensorFlow's JIT level)",
             "optimization.graph.level", backends=frozenset({"onnxruntime", "tensorflow"})),
    **_rules(WARN, "a GPU stream priority: no effect on the CPU", "optimization.priority"),
    **_rules(WARN, _GPU, "optimization.cuda.graphs", "optimization.cuda.busy_wait_events",
             "optimization.cuda.graph_spec.batch_size", "optimization.cuda.graph_spec.input",
             "optimization.cuda.graph_spec.graph_lower_bound.batch_size",
             "optimization.cuda.graph_spec.graph_lower_bound.input", "optimization.cuda.output_copy_stream",
             "optimization.input_pinned_memory.enable", "optimization.output_pinned_memory.enable",
             "optimization.gather_kernel_buffer_threshold"),
    **_rules(YES, "TensorRT / CUDA execution providers of ONNX Runtime",
             "optimization.execution_accelerators.gpu_execution_accelerator.name",
             "optimization.execution_accelerators.gpu_execution_accelerator.parameters", backends=_ORT),
    **_rules(NO, "CPU execution accelerators (OpenVINO EP) are not wired: serve an OpenVINO model instead "
             "(kiln build --target openvino)", "optimization.execution_accelerators.cpu_execution_accelerator.name",
             "optimization.execution_accelerators.cpu_execution_accelerator.parameters"),
    **_rules(NO, "eager batching is not implemented", "optimization.eager_batching"),
    **_rules(YES, "the dynamic batcher", "dynamic_batching.preferred_batch_size",
             "dynamic_batching.max_queue_delay_microseconds", "dynamic_batching.preserve_ordering",
             "dynamic_batching.priority_levels", "dynamic_batching.default_priority_level",
             "dynamic_batching.default_queue_policy.timeout_action",
             "dynamic_batching.default_queue_policy.default_timeout_microseconds",
             "dynamic_batching.default_queue_policy.allow_timeout_override",
             "dynamic_batching.default_queue_policy.max_queue_size", "dynamic_batching.priority_queue_policy"),
    **_rules(YES, "the sequence batcher", "sequence_batching.direct.max_queue_delay_microseconds",
             "sequence_batching.direct.minimum_slot_utilization", "sequence_batching.oldest.max_candidate_sequences",
             "sequence_batching.oldest.preferred_batch_size", "sequence_batching.oldest.max_queue_delay_microseconds",
             "sequence_batching.oldest.preserve_ordering", "sequence_batching.max_sequence_idle_microseconds",
             "sequence_batching.control_input.name", "sequence_batching.control_input.control.kind",
             "sequence_batching.control_input.control.int32_false_true",
             "sequence_batching.control_input.control.fp32_false_true",
             "sequence_batching.control_input.control.bool_false_true",
             "sequence_batching.control_input.control.data_type", "sequence_batching.state.input_name",
             "sequence_batching.state.output_name", "sequence_batching.state.data_type", "sequence_batching.state.dims",
             "sequence_batching.state.initial_state.data_type", "sequence_batching.state.initial_state.dims",
             "sequence_batching.state.initial_state.zero_data", "sequence_batching.state.initial_state.data_file",
             "sequence_batching.state.initial_state.name"),
    **_rules(NO, "GPU-memory options for implicit state", "sequence_batching.state.use_same_buffer_for_input_output",
             "sequence_batching.state.use_growable_memory"),
    **_rules(NO, "iterative sequences are not implemented", "sequence_batching.iterative_sequence"),
    **_rules(YES, "ensembles", "ensemble_scheduling.step.model_name", "ensemble_scheduling.step.model_version",
             "ensemble_scheduling.step.input_map", "ensemble_scheduling.step.output_map"),
    **_rules(NO, "Kiln has no model namespaces", "ensemble_scheduling.step.model_namespace"),
    **_rules(YES, "model instances", "instance_group.name", "instance_group.kind", "instance_group.count",
             "instance_group.gpus"),
    **_rules(NO, "the rate limiter is not implemented", "instance_group.rate_limiter.resources.name",
             "instance_group.rate_limiter.resources.global", "instance_group.rate_limiter.resources.count",
             "instance_group.rate_limiter.priority"),
    **_rules(NO, "secondary devices are not implemented", "instance_group.secondary_devices.kind",
             "instance_group.secondary_devices.device_id"),
    **_rules(NO, "TensorRT optimisation profiles per instance are not implemented", "instance_group.profile"),
    **_rules(NO, "passive instances are not implemented", "instance_group.passive"),
    **_rules(NO, "host policies are not implemented", "instance_group.host_policy"),
    **_rules(WARN, "per-GPU-compute-capability files: this server runs default_model_filename", "cc_model_filenames"),
    **_rules(NO, "custom metric labels per model are not implemented", "metric_tags"),
    **_rules(YES, "warm-up at load", "model_warmup.name", "model_warmup.batch_size", "model_warmup.inputs",
             "model_warmup.count"),
    **_rules(NO, "custom operation libraries are not loaded by Kiln", "model_operations.op_library_filename"),
    **_rules(YES, "decoupled models", "model_transaction_policy.decoupled"),
    **_rules(NO, "repository agents (e.g. checksum) are not implemented", "model_repository_agents.agents.name",
             "model_repository_agents.agents.parameters"),
    **_rules(YES, "the response cache (the server needs --cache-config)", "response_cache.enable"),
}  # fmt: skip


def schema_paths(descriptor=model_config_pb2.ModelConfig.DESCRIPTOR) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Every leaf of the schema by dotted path (maps and messages without fields are leaves)."""

    def walk(desc, prefix: str, stack: frozenset[str]) -> Iterator[str]:  # type: ignore[no-untyped-def]
        for f in desc.fields:
            path = prefix + f.name
            message = f.message_type if f.type == FieldDescriptor.TYPE_MESSAGE else None
            if message is not None and not message.GetOptions().map_entry and message.fields:
                if message.full_name in stack:
                    yield path
                    continue
                yield from walk(message, path + ".", stack | {message.full_name})
            else:
                yield path

    yield from walk(descriptor, "", frozenset({descriptor.full_name}))


def _set_paths(message: Message, prefix: str = "") -> Iterator[str]:
    """The dotted paths of the leaves a config sets (values other than the defaults)."""
    for field, value in message.ListFields():
        path = prefix + field.name
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and field.message_type.GetOptions().map_entry:
            yield path
        elif is_message and field.message_type.fields:
            items = value if field.label == FieldDescriptor.LABEL_REPEATED else [value]
            children = [p for item in items for p in _set_paths(item, path + ".")]
            yield from children if children else [path]  # a section set but empty: the section itself
        else:
            yield path


def check_fields(config: model_config_pb2.ModelConfig, backend: str) -> list[str]:
    """Refuse a config that sets a field Kiln does not honour (ModelConfigError naming the field and why);
    return the warnings for fields accepted without effect."""
    warnings: list[str] = []
    for path in dict.fromkeys(_set_paths(config)):
        rule = FIELDS.get(path)
        if rule is None:
            section = next((p for p in FIELDS if p.startswith(path + ".")), None)
            if section is not None:
                continue  # an empty section (e.g. `dynamic_batching { }`): its defaults are implemented
            raise ModelConfigError(f"model '{config.name}': config field '{path}' is unknown to Kiln")
        if rule.treatment is Treatment.REFUSED:
            raise ModelConfigError(
                f"model '{config.name}': config field '{path}' is not supported: {rule.note}"
            )
        if rule.backends is not None and backend not in rule.backends:
            raise ModelConfigError(
                f"model '{config.name}': config field '{path}' is only honoured by the "
                f"{'/'.join(sorted(rule.backends))} backend, not '{backend}'"
            )
        if rule.treatment is Treatment.WARNED:
            warnings.append(f"model '{config.name}': config field '{path}' has no effect here: {rule.note}")
    return warnings


def markdown_table() -> str:
    """docs/config-fields.md's table."""
    lines = ["| field | treatment | note |", "|---|---|---|"]
    for path in schema_paths():
        rule = FIELDS[path]
        note = rule.note + (f" ({'/'.join(sorted(rule.backends))} backend only)" if rule.backends else "")
        lines.append(f"| `{path}` | {rule.treatment.value} | {note} |")
    return "\n".join(lines) + "\n"
