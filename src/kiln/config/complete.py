"""Auto-complete a ModelConfig from the model file's own signature, and validate the two against each other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError
from kiln.types.datatypes import BY_CONFIG_NAME, DataType


@dataclass(frozen=True)
class ModelIO:
    """One input or output as the model file declares it; -1 marks a dynamic dimension."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]


def _config_dtype(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def _batchable(ios: Sequence[ModelIO]) -> bool:
    return bool(ios) and all(len(io.shape) >= 1 and io.shape[0] == -1 for io in ios)


def autocomplete(
    config: model_config_pb2.ModelConfig,
    inputs: Sequence[ModelIO],
    outputs: Sequence[ModelIO],
    default_max_batch_size: int = 4,
) -> None:
    """Fill what the config leaves out (inputs, outputs, data types, dims, max_batch_size), as Triton does."""
    if config.max_batch_size == 0 and default_max_batch_size > 0 and _batchable([*inputs, *outputs]):
        # Batch only when every entry the user wrote leaves the batch dimension out of its dims.
        listed = {io.name: len(io.shape) for io in [*inputs, *outputs]}
        user_entries = [*config.input, *config.output]
        if all(
            len(e.dims) == listed.get(e.name, 0) - 1 or (not e.dims and not e.HasField("reshape"))
            for e in user_entries
        ):
            config.max_batch_size = default_max_batch_size
    skip = 1 if config.max_batch_size > 0 else 0
    _complete(config.input, inputs, skip)
    _complete(config.output, outputs, skip)


def _complete(entries, ios: Sequence[ModelIO], skip: int) -> None:  # type: ignore[no-untyped-def]
    by_name = {io.name: io for io in ios}
    if len(entries) == 0:
        for io in ios:
            entry = entries.add()
            entry.name = io.name
    for entry in entries:
        io = by_name.get(entry.name)
        if io is None:
            continue  # reported by validate()
        if entry.data_type == model_config_pb2.TYPE_INVALID:
            entry.data_type = model_config_pb2.DataType.Value(io.datatype.config_name)
        if not entry.dims and not entry.HasField("reshape"):
            entry.dims.extend(io.shape[skip:])


def validate(
    config: model_config_pb2.ModelConfig, inputs: Sequence[ModelIO], outputs: Sequence[ModelIO]
) -> None:
    """Refuse a config that does not fit its model: names, data types, ranks, fixed dims, batching."""
    if config.max_batch_size < 0:
        raise ModelConfigError(f"model '{config.name}': max_batch_size must be >= 0")
    model_inputs = {io.name: io for io in inputs}
    model_outputs = {io.name: io for io in outputs}
    seen = set()
    for entry in config.input:
        _check_entry(config, "input", entry, model_inputs)
        if entry.name in seen:
            raise ModelConfigError(f"model '{config.name}': input '{entry.name}' is listed twice")
        seen.add(entry.name)
    missing = [name for name in model_inputs if name not in seen]
    if missing:
        raise ModelConfigError(
            f"model '{config.name}': the model file has input(s) {missing} that config.pbtxt does not list"
        )
    if not config.output:
        raise ModelConfigError(f"model '{config.name}': config lists no outputs")
    for entry in config.output:
        _check_entry(config, "output", entry, model_outputs)


def _check_entry(config, kind: str, entry, ios: dict[str, ModelIO]) -> None:  # type: ignore[no-untyped-def]
    where = f"model '{config.name}' {kind} '{entry.name}'"
    io = ios.get(entry.name)
    if io is None:
        raise ModelConfigError(
            f"{where}: no such {kind} in the model file; the model's {kind}s are {sorted(ios)}"
        )
    config_dtype = _config_dtype(entry.data_type)
    if BY_CONFIG_NAME.get(config_dtype) != io.datatype:
        raise ModelConfigError(
            f"{where}: config data_type {config_dtype} does not match the model's {io.datatype.config_name}"
        )
    dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
    if any(d < -1 for d in entry.dims):
        raise ModelConfigError(f"{where}: dims must be >= -1, got {list(entry.dims)}")
    full = ([-1] if config.max_batch_size > 0 else []) + dims
    if len(full) != len(io.shape):
        batch_note = " (max_batch_size > 0 adds a batch dimension)" if config.max_batch_size > 0 else ""
        raise ModelConfigError(
            f"{where}: config gives rank {len(full)} {full}{batch_note} but the model expects rank "
            f"{len(io.shape)} {list(io.shape)}"
        )
    if config.max_batch_size > 0 and io.shape[0] != -1:
        raise ModelConfigError(
            f"{where}: max_batch_size is {config.max_batch_size} but the model's first dimension is fixed "
            f"at {io.shape[0]}; set max_batch_size: 0"
        )
    for c, m in zip(full, io.shape, strict=True):
        if c != -1 and m != -1 and c != m:
            raise ModelConfigError(f"{where}: config dims {full} do not match the model's {list(io.shape)}")


def validate_declared(config: model_config_pb2.ModelConfig) -> None:
    """For a model whose runtime has no readable signature (TorchScript, Python): the config alone must say
    every input and output's name, data type and dims."""
    if config.max_batch_size < 0:
        raise ModelConfigError(f"model '{config.name}': max_batch_size must be >= 0")
    if not config.output:
        raise ModelConfigError(
            f"model '{config.name}': config lists no outputs, and this backend cannot read them from the model"
        )
    for kind, entries in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for entry in entries:
            where = f"model '{config.name}' {kind} '{entry.name}'"
            if not entry.name:
                raise ModelConfigError(f"model '{config.name}': every {kind} needs a name")
            if entry.name in seen:
                raise ModelConfigError(f"{where} is listed twice")
            seen.add(entry.name)
            if entry.data_type == model_config_pb2.TYPE_INVALID:
                raise ModelConfigError(
                    f"{where}: data_type is required (this backend cannot read it from the model)"
                )
            if not entry.dims and not entry.HasField("reshape"):
                raise ModelConfigError(
                    f"{where}: dims are required (this backend cannot read them from the model)"
                )
            if any(d < -1 for d in entry.dims):
                raise ModelConfigError(f"{where}: dims must be >= -1, got {list(entry.dims)}")
