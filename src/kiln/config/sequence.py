"""``sequence_batching`` read as Triton reads it: the strategy, the control tensors Kiln fills in for every
request of a sequence, and the implicit state it keeps between a sequence's requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.config.complete import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError
from kiln.types import datatypes
from kiln.types.datatypes import DataType

_SB = model_config_pb2.ModelSequenceBatching
START, END, READY, CORRID = "START", "END", "READY", "CORRID"
_KINDS = {
    _SB.Control.CONTROL_SEQUENCE_START: START,
    _SB.Control.CONTROL_SEQUENCE_END: END,
    _SB.Control.CONTROL_SEQUENCE_READY: READY,
    _SB.Control.CONTROL_SEQUENCE_CORRID: CORRID,
}
_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")
DEFAULT_IDLE_US = 1_000_000


@dataclass(frozen=True)
class Control:
    """One control tensor: its input name, what it signals, its datatype and (for flags) the false/true values."""

    name: str
    kind: str  # START, END, READY or CORRID
    datatype: DataType
    values: tuple[object, object] = (0, 1)  # false, true


@dataclass(frozen=True)
class State:
    """One implicit state: fed to ``input_name``, read back from ``output_name`` after each request."""

    input_name: str
    output_name: str
    datatype: DataType
    dims: tuple[int, ...]
    initial: np.ndarray  # the state a sequence starts with (zeros unless the config gives data)


@dataclass(frozen=True)
class SequenceOptions:
    strategy: str  # "direct" or "oldest"
    idle_us: int
    controls: tuple[Control, ...] = ()
    states: tuple[State, ...] = ()
    max_queue_delay_us: int = 0
    minimum_slot_utilization: float = 0.0  # direct
    max_candidate_sequences: int = 0  # oldest
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)  # oldest
    preserve_ordering: bool = False  # oldest

    @property
    def provided_inputs(self) -> frozenset[str]:
        """Inputs Kiln fills in (controls and state): not in the config's ``input`` list, never sent."""
        return frozenset([c.name for c in self.controls] + [s.input_name for s in self.states])

    @property
    def state_outputs(self) -> frozenset[str]:
        return frozenset(s.output_name for s in self.states)


def _datatype(value: int, where: str) -> DataType:
    name = model_config_pb2.DataType.Name(value)
    dtype = datatypes.BY_CONFIG_NAME.get(name)
    if dtype is None:
        raise ModelConfigError(f"{where}: data_type {name} is not supported")
    return dtype


def _control(model: str, name: str, control: model_config_pb2.ModelSequenceBatching.Control) -> Control:
    kind = _KINDS.get(control.kind)
    where = f"model '{model}' sequence_batching control '{name}'"
    if kind is None:
        raise ModelConfigError(f"{where}: unknown control kind {control.kind}")
    if kind == CORRID:
        type_name = model_config_pb2.DataType.Name(control.data_type)
        if type_name not in _CORRID_TYPES:
            raise ModelConfigError(
                f"{where}: CONTROL_SEQUENCE_CORRID needs data_type one of {', '.join(_CORRID_TYPES)}, "
                f"got {type_name}"
            )
        return Control(name, kind, _datatype(control.data_type, where))
    given = [
        (values, dtype)
        for values, dtype in (
            (list(control.int32_false_true), "INT32"),
            (list(control.fp32_false_true), "FP32"),
            (list(control.bool_false_true), "BOOL"),
        )
        if values
    ]
    if len(given) != 1 or len(given[0][0]) != 2:
        raise ModelConfigError(
            f"{where}: a {kind} control needs exactly one of int32_false_true, fp32_false_true or "
            f"bool_false_true, with two values (false, true)"
        )
    values, dtype = given[0]
    return Control(name, kind, datatypes.BY_NAME[dtype], (values[0], values[1]))


def _state(model: str, state: model_config_pb2.ModelSequenceBatching.State, model_dir: Path) -> State:
    where = f"model '{model}' sequence_batching state '{state.input_name}'"
    if not state.input_name or not state.output_name:
        raise ModelConfigError(f"{where}: a state needs input_name and output_name")
    if state.use_same_buffer_for_input_output or state.use_growable_memory:
        # GPU-buffer options in Triton; on the CPU a state that changes shape is simply kept as it comes back
        raise ModelConfigError(
            f"{where}: use_same_buffer_for_input_output / use_growable_memory are GPU-memory options Kiln does "
            f"not have; leave them out (a state whose shape changes is kept as the model returns it)"
        )
    dtype = _datatype(state.data_type, where)
    dims = tuple(state.dims)
    if not dims or any(d < -1 or d == 0 for d in dims):
        raise ModelConfigError(f"{where}: dims must be positive (or -1), got {list(dims)}")
    if len(state.initial_state) > 1:
        raise ModelConfigError(f"{where}: at most one initial_state")
    shape = tuple(1 if d == -1 else d for d in dims)
    if not state.initial_state:
        return State(state.input_name, state.output_name, dtype, dims, _zeros(dtype, shape))
    initial = state.initial_state[0]
    if initial.data_type != state.data_type:
        raise ModelConfigError(f"{where}: initial_state data_type differs from the state's")
    shape = tuple(initial.dims)
    if len(shape) != len(dims) or any(d < 1 for d in shape):
        raise ModelConfigError(
            f"{where}: initial_state dims {list(shape)} must be positive and of the state's rank {len(dims)}"
        )
    if any(d != -1 and d != s for d, s in zip(dims, shape, strict=True)):
        raise ModelConfigError(
            f"{where}: initial_state dims {list(shape)} do not fit the state's {list(dims)}"
        )
    which = initial.WhichOneof("state_data")
    if which == "zero_data":
        return State(state.input_name, state.output_name, dtype, dims, _zeros(dtype, shape))
    if which != "data_file":
        raise ModelConfigError(f"{where}: initial_state needs zero_data or data_file")
    return State(state.input_name, state.output_name, dtype, dims, _from_file(where, model_dir, initial.data_file,
                                                                             dtype, shape))  # fmt: skip


def _zeros(dtype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.name == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype.numpy)


def _from_file(where: str, model_dir: Path, name: str, dtype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    """Triton's ``data_file``: raw little-endian values in ``<model dir>/initial_state/<name>``."""
    folder = (model_dir / "initial_state").resolve()
    path = (folder / name).resolve()
    if folder not in path.parents:
        raise ModelConfigError(
            f"{where}: initial_state data_file must stay inside the model's initial_state/"
        )
    if dtype.name == "BYTES":
        raise ModelConfigError(f"{where}: a BYTES state cannot start from a data_file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelConfigError(f"{where}: cannot read initial_state/{name}: {e.strerror}") from None
    need = int(np.prod(shape)) * dtype.numpy.itemsize
    if len(data) < need:
        raise ModelConfigError(
            f"{where}: initial_state/{name} has {len(data)} bytes; the state {list(shape)} needs {need}"
        )
    return np.frombuffer(data[:need], dtype.numpy).reshape(shape).copy()


def sequence_options(config: model_config_pb2.ModelConfig, model_dir: Path) -> SequenceOptions | None:
    """The config's sequence batching, checked; None when the model has none."""
    if not config.HasField("sequence_batching"):
        return None
    sb = config.sequence_batching
    name = config.name
    if sb.iterative_sequence:
        raise ModelConfigError(
            f"model '{name}': sequence_batching iterative_sequence is not implemented in Kiln yet"
        )
    controls: list[Control] = []
    for control_input in sb.control_input:
        if not control_input.name or len(control_input.control) != 1:
            raise ModelConfigError(
                f"model '{name}': each sequence_batching control_input needs a name and exactly one control"
            )
        controls.append(_control(name, control_input.name, control_input.control[0]))
    kinds = [c.kind for c in controls]
    duplicate = next((k for k in set(kinds) if kinds.count(k) > 1), None)
    if duplicate is not None:
        raise ModelConfigError(f"model '{name}': sequence_batching has more than one {duplicate} control")
    states = tuple(_state(name, s, model_dir) for s in sb.state)
    _check_names(name, config, controls, states)
    idle = sb.max_sequence_idle_microseconds or DEFAULT_IDLE_US
    if sb.HasField("oldest"):
        oldest = sb.oldest
        if oldest.max_candidate_sequences < 0:
            raise ModelConfigError(f"model '{name}': oldest max_candidate_sequences must be >= 0")
        sizes = tuple(oldest.preferred_batch_size)
        if any(s < 1 or (config.max_batch_size and s > config.max_batch_size) for s in sizes):
            raise ModelConfigError(
                f"model '{name}': preferred_batch_size {list(sizes)} must be between 1 and max_batch_size"
            )
        return SequenceOptions(
            "oldest", idle, tuple(controls), states, oldest.max_queue_delay_microseconds,
            max_candidate_sequences=oldest.max_candidate_sequences, preferred_batch_sizes=sizes,
            preserve_ordering=oldest.preserve_ordering,
        )  # fmt: skip
    direct = sb.direct
    if not 0.0 <= direct.minimum_slot_utilization <= 1.0:
        raise ModelConfigError(f"model '{name}': direct minimum_slot_utilization must be between 0 and 1")
    return SequenceOptions(
        "direct", idle, tuple(controls), states, direct.max_queue_delay_microseconds,
        minimum_slot_utilization=direct.minimum_slot_utilization,
    )  # fmt: skip


def _check_names(
    model: str, config: model_config_pb2.ModelConfig, controls: Sequence[Control], states: Sequence[State]
) -> None:
    listed = {e.name for e in config.input}
    taken: set[str] = set()
    for name in [c.name for c in controls] + [s.input_name for s in states]:
        if name in listed:
            raise ModelConfigError(
                f"model '{model}': '{name}' is a sequence control or state input: Kiln fills it in, so it must "
                f"not be listed under input"
            )
        if name in taken:
            raise ModelConfigError(f"model '{model}': '{name}' is used by more than one control or state")
        taken.add(name)


def without_sequence_tensors(
    config: model_config_pb2.ModelConfig,
    sequence: SequenceOptions,
    inputs: list[ModelIO],
    outputs: list[ModelIO],
) -> tuple[list[ModelIO], list[ModelIO]]:
    """The model file's inputs/outputs less the control and state tensors the sequence batcher provides (they
    are not in the config's input list), after checking that each exists in the model with its datatype."""
    by_input = {io.name: io for io in inputs}
    by_output = {io.name: io for io in outputs}
    expected = [(c.name, c.datatype, "control", by_input) for c in sequence.controls]
    expected += [(s.input_name, s.datatype, "state input", by_input) for s in sequence.states]
    expected += [(s.output_name, s.datatype, "state output", by_output) for s in sequence.states]
    for name, datatype, what, ios in expected:
        io = ios.get(name)
        if io is None:
            raise ModelConfigError(
                f"model '{config.name}': sequence {what} '{name}' is not in the model file"
            )
        if io.datatype != datatype:
            raise ModelConfigError(
                f"model '{config.name}': sequence {what} '{name}' is {datatype.name} in the config but "
                f"{io.datatype.name} in the model file"
            )
    listed = {e.name for e in config.output}
    provided = sequence.provided_inputs
    return (
        [io for io in inputs if io.name not in provided],
        [io for io in outputs if io.name not in sequence.state_outputs or io.name in listed],
    )
