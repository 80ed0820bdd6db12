"""An ensemble's ``ensemble_scheduling`` read as Triton reads it, checked against its step models' configs, and
turned into the dataflow graph the ensemble scheduler runs.

Shapes are compared as the tensors travel: a model that batches (``max_batch_size > 0``) sees ``[batch] + dims``,
one that does not sees ``dims`` alone. So in a batching ensemble a non-batching step's first dimension *is* the
batch dimension, and in a non-batching ensemble a batching step's batch dimension is the ensemble tensor's first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError

ENSEMBLE_PLATFORM = "ensemble"

#: sections an ensemble cannot have, as in Triton (dynamic and sequence batching are refused by the schema
#: itself: they are the other members of the ``scheduling_choice`` oneof)
_REFUSED_SECTIONS = {
    "instance_group": "each step model has its own instance groups",
    "optimization": "set optimization on the step models",
    "model_warmup": "warm up the step models instead",
}


def is_ensemble(config: model_config_pb2.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")


def step_models(config: model_config_pb2.ModelConfig) -> list[str]:
    """The model names an ensemble's steps call, in step order, each once."""
    seen: dict[str, None] = {}
    for step in config.ensemble_scheduling.step:
        seen.setdefault(step.model_name, None)
    return list(seen)


@dataclass(frozen=True)
class TensorType:
    """A tensor as one model (or the ensemble) declares it: data type, config dims, and the full shape (with
    the batch dimension when that model batches)."""

    data_type: int
    dims: tuple[int, ...]
    shape: tuple[int, ...]
    source: str  # which model (or the ensemble) says so, for messages


@dataclass(frozen=True)
class Step:
    index: int
    model_name: str
    model_version: str  # "" = the latest ready version (-1 in the config)
    inputs: Mapping[str, str]  # step input -> ensemble tensor
    outputs: Mapping[str, str]  # step output -> ensemble tensor
    decoupled: bool
    batches: bool  # the step model has max_batch_size > 0
    input_dims: Mapping[str, tuple[int, ...]]  # step input -> its config dims (for batch-dimension adapting)

    def describe(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True)
class EnsemblePlan:
    name: str
    inputs: frozenset[str]  # the ensemble's own inputs
    outputs: tuple[str, ...]  # the ensemble's own outputs
    steps: tuple[Step, ...]
    #: ensemble tensor -> the steps that read it
    consumers: Mapping[str, tuple[int, ...]]
    batches: bool  # the ensemble has max_batch_size > 0
    output_dims: Mapping[str, tuple[int, ...]]

    @property
    def decoupled(self) -> bool:
        return any(s.decoupled for s in self.steps)

    def unneeded_steps(self, outputs: frozenset[str]) -> frozenset[int]:
        """The steps that no requested output depends on: not run, as in Triton."""
        writer = {t: s.index for s in self.steps for t in s.outputs.values()}
        needed: set[int] = set()
        frontier = [writer[t] for t in outputs if t in writer]
        while frontier:
            index = frontier.pop()
            if index in needed:
                continue
            needed.add(index)
            frontier.extend(writer[t] for t in self.steps[index].inputs.values() if t in writer)
        return frozenset(s.index for s in self.steps if s.index not in needed)

    def ready_steps(self, available: set[str] | frozenset[str], started: set[int]) -> list[int]:
        """Steps not started yet whose every input is available."""
        return [
            s.index
            for s in self.steps
            if s.index not in started and all(t in available for t in s.inputs.values())
        ]


ConfigLookup = Callable[[str, str], model_config_pb2.ModelConfig]


def build_plan(config: model_config_pb2.ModelConfig, lookup: ConfigLookup) -> EnsemblePlan:
    """Check an ensemble config against its steps' (completed) configs — ``lookup(name, version)`` returns a
    ready step model's config or raises — and build its graph. Every problem is a ModelConfigError naming the
    ensemble, the step and the tensor."""
    name = config.name
    where = f"ensemble '{name}'"
    for section, why in _REFUSED_SECTIONS.items():
        present = config.HasField(section) if section == "optimization" else len(getattr(config, section))
        if present:
            raise ModelConfigError(f"{where}: '{section}' is not allowed in an ensemble ({why})")
    if config.max_batch_size < 0:
        raise ModelConfigError(f"{where}: max_batch_size must be >= 0")
    if not config.ensemble_scheduling.step:
        raise ModelConfigError(f"{where}: ensemble_scheduling must list one or more steps")
    for kind, entries in (("input", config.input), ("output", config.output)):
        for entry in entries:
            if entry.HasField("reshape"):
                raise ModelConfigError(
                    f"{where}: {kind} '{entry.name}' has a reshape, which an ensemble cannot apply (reshape "
                    f"in the step model's config instead)"
                )
    if not config.output:
        raise ModelConfigError(f"{where}: the config lists no outputs")
    ensemble_batches = config.max_batch_size > 0
    types: dict[str, TensorType] = {}  # ensemble tensor -> its type, as first seen
    for entry in config.input:
        types[entry.name] = _io_type(entry, ensemble_batches, "the ensemble")
    produced: dict[str, str] = {t: "an ensemble input" for t in types}
    steps: list[Step] = []
    for index, spec in enumerate(config.ensemble_scheduling.step):
        steps.append(_check_step(config, index, spec, lookup, types, produced))
    _check_io(config, steps, types, produced)
    consumers: dict[str, list[int]] = {}
    for step in steps:
        for tensor in step.inputs.values():
            consumers.setdefault(tensor, []).append(step.index)
    plan = EnsemblePlan(
        name,
        frozenset(e.name for e in config.input),
        tuple(e.name for e in config.output),
        tuple(steps),
        {t: tuple(s) for t, s in consumers.items()},
        ensemble_batches,
        {e.name: tuple(e.dims) for e in config.output},
    )
    _check_acyclic(plan, produced)
    _check_decoupled_order(plan)
    return plan


def _check_step(
    config: model_config_pb2.ModelConfig,
    index: int,
    spec: model_config_pb2.ModelEnsembling.Step,
    lookup: ConfigLookup,
    types: dict[str, TensorType],
    produced: dict[str, str],
) -> Step:
    where = f"ensemble '{config.name}' step {index}"
    if not spec.model_name:
        raise ModelConfigError(f"{where}: model_name is required")
    if spec.model_name == config.name:
        raise ModelConfigError(f"{where}: an ensemble cannot call itself")
    where = f"ensemble '{config.name}' step {index} (model '{spec.model_name}')"
    if spec.model_namespace:
        raise ModelConfigError(f"{where}: model_namespace is not supported by Kiln (it has no namespaces)")
    if spec.model_version < -1 or spec.model_version == 0:
        raise ModelConfigError(f"{where}: model_version must be -1 (latest) or a version number")
    version = "" if spec.model_version == -1 else str(spec.model_version)
    step_config = lookup(spec.model_name, version)
    if not spec.input_map:
        raise ModelConfigError(f"{where}: input_map is empty")
    if not spec.output_map:
        raise ModelConfigError(f"{where}: output_map is empty")
    step_batches = step_config.max_batch_size > 0
    if config.max_batch_size > 0 and step_batches and config.max_batch_size > step_config.max_batch_size:
        raise ModelConfigError(
            f"{where}: the ensemble allows a batch of {config.max_batch_size}, but model "
            f"'{spec.model_name}' only {step_config.max_batch_size}"
        )
    model_inputs = {e.name: e for e in step_config.input}
    model_outputs = {e.name: e for e in step_config.output}
    for step_input, tensor in spec.input_map.items():
        entry = model_inputs.get(step_input)
        if entry is None:
            raise ModelConfigError(
                f"{where}: input_map names '{step_input}', which is not an input of model "
                f"'{spec.model_name}' (its inputs are {sorted(model_inputs)})"
            )
        _agree(config.name, tensor, types, _io_type(entry, step_batches, f"model '{spec.model_name}'"))
    missing = [n for n, e in model_inputs.items() if n not in spec.input_map and not e.optional]
    if missing:
        raise ModelConfigError(f"{where}: the model's required inputs {missing} are not in input_map")
    for step_output, tensor in spec.output_map.items():
        entry = model_outputs.get(step_output)
        if entry is None:
            raise ModelConfigError(
                f"{where}: output_map names '{step_output}', which is not an output of model "
                f"'{spec.model_name}' (its outputs are {sorted(model_outputs)})"
            )
        if tensor in produced:
            raise ModelConfigError(
                f"ensemble '{config.name}': tensor '{tensor}' is written by {produced[tensor]} and again by "
                f"step {index} (model '{spec.model_name}'); each ensemble tensor is written once"
            )
        produced[tensor] = f"step {index} (model '{spec.model_name}')"
        _agree(config.name, tensor, types, _io_type(entry, step_batches, f"model '{spec.model_name}'"))
    return Step(
        index,
        spec.model_name,
        version,
        dict(spec.input_map),
        dict(spec.output_map),
        step_config.model_transaction_policy.decoupled,
        step_batches,
        {e.name: tuple(e.dims) for e in step_config.input},
    )


def _check_io(
    config: model_config_pb2.ModelConfig,
    steps: Sequence[Step],
    types: Mapping[str, TensorType],
    produced: Mapping[str, str],
) -> None:
    where = f"ensemble '{config.name}'"
    read = {t for s in steps for t in s.inputs.values()}
    for entry in config.input:
        if entry.name not in read:
            raise ModelConfigError(f"{where}: input '{entry.name}' is not read by any step")
    for step in steps:
        for step_input, tensor in step.inputs.items():
            if tensor not in produced:
                raise ModelConfigError(
                    f"{where}: {step.describe()} reads tensor '{tensor}' (for its input '{step_input}'), which is "
                    f"neither an ensemble input nor written by any step"
                )
    for entry in config.output:
        if entry.name in {e.name for e in config.input}:
            raise ModelConfigError(f"{where}: '{entry.name}' is both an input and an output")
        if entry.name not in produced:
            raise ModelConfigError(f"{where}: output '{entry.name}' is not written by any step")
        _agree(
            config.name, entry.name, dict(types), _io_type(entry, config.max_batch_size > 0, "the ensemble")
        )


def _io_type(entry, batches: bool, source: str) -> TensorType:  # type: ignore[no-untyped-def]
    dims = tuple(entry.dims)
    return TensorType(entry.data_type, dims, ((-1,) if batches else ()) + dims, source)


def _fits(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _agree(ensemble: str, tensor: str, types: dict[str, TensorType], seen: TensorType) -> None:
    """Record ``tensor``'s type, or check it against the one recorded: same data type, same rank, and each
    dimension equal unless one of them is -1."""
    known = types.get(tensor)
    if known is None:
        types[tensor] = seen
        return
    if known.data_type != seen.data_type:
        raise ModelConfigError(
            f"ensemble '{ensemble}': tensor '{tensor}' has inconsistent data types: "
            f"{model_config_pb2.DataType.Name(known.data_type)} from {known.source}, "
            f"{model_config_pb2.DataType.Name(seen.data_type)} from {seen.source}"
        )
    # as Triton: the config dims agree, or the full shapes (batch dimension included) do
    if not (_fits(known.dims, seen.dims) or _fits(known.shape, seen.shape)):
        raise ModelConfigError(
            f"ensemble '{ensemble}': tensor '{tensor}' has inconsistent shapes: {list(known.shape)} from "
            f"{known.source}, {list(seen.shape)} from {seen.source} (shapes include the batch dimension of "
            f"models with max_batch_size > 0)"
        )


def _check_acyclic(plan: EnsemblePlan, produced: Mapping[str, str]) -> None:
    """Every step must become runnable from the ensemble inputs; a step that never does sits on a cycle."""
    available = set(plan.inputs)
    started: set[int] = set()
    while ready := plan.ready_steps(available, started):
        for index in ready:
            started.add(index)
            available.update(plan.steps[index].outputs.values())
    stuck = [s for s in plan.steps if s.index not in started]
    if stuck:
        names = ", ".join(s.describe() for s in stuck)
        raise ModelConfigError(f"ensemble '{plan.name}': the steps form a cycle and can never run: {names}")


def _check_decoupled_order(plan: EnsemblePlan) -> None:
    """Decoupled steps fan each of their responses out to the steps after them; two decoupled steps that run
    side by side would need every pairing of their responses, which Kiln does not do."""
    decoupled = [s for s in plan.steps if s.decoupled]
    for i, a in enumerate(decoupled):
        for b in decoupled[i + 1 :]:
            if not (_downstream(plan, a.index, b.index) or _downstream(plan, b.index, a.index)):
                raise ModelConfigError(
                    f"ensemble '{plan.name}': decoupled {a.describe()} and {b.describe()} run side by side; "
                    f"Kiln needs one of them to read (directly or not) the other's outputs"
                )


def _downstream(plan: EnsemblePlan, start: int, target: int) -> bool:
    """Whether ``target`` reads, directly or through other steps, what ``start`` writes."""
    frontier, seen = [start], {start}
    while frontier:
        step = plan.steps[frontier.pop()]
        for tensor in step.outputs.values():
            for reader in plan.consumers.get(tensor, ()):
                if reader == target:
                    return True
                if reader not in seen:
                    seen.add(reader)
                    frontier.append(reader)
    return False


def downstream_steps(plan: EnsemblePlan, start: int) -> frozenset[int]:
    """The steps that read, directly or not, what step ``start`` writes."""
    return frozenset(s.index for s in plan.steps if s.index != start and _downstream(plan, start, s.index))
