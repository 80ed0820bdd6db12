"""How a PyTorch model's call lines up with its config (the rules in :mod:`kiln.backends.pytorch`'s docstring):
datatypes, forward's arguments and results, the config tensors' slots, and torch.export programs' signatures.
Nothing here imports torch: it reads the loaded module's schema and the program's graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError, ModelLoadError
from kiln.types.datatypes import BY_CONFIG_NAME, BY_NAME, DataType

log = logging.getLogger("kiln.backends.pytorch")

#: Kiln datatype name -> torch dtype attribute (what Triton's PyTorch backend serves as tensors)
TORCH_TYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_DELIMITER = "__"


@dataclass(frozen=True)
class Slot:
    """Where a config tensor goes in (or comes from) the model's call: a position, or a dict key."""

    index: int | None = None
    key: str | None = None


def check_datatypes(config: model_config_pb2.ModelConfig) -> None:
    """The config's data types: what Triton's PyTorch backend serves; TYPE_STRING as a 1-D List[str]."""
    batched = config.max_batch_size > 0
    for kind, entries in (("input", config.input), ("output", config.output)):
        for entry in entries:
            dtype = BY_CONFIG_NAME.get(model_config_pb2.DataType.Name(entry.data_type))
            where = f"model '{config.name}' {kind} '{entry.name}'"
            if dtype is None or (dtype.name not in TORCH_TYPES and dtype.name != "BYTES"):
                name = model_config_pb2.DataType.Name(entry.data_type)
                raise ModelConfigError(
                    f"{where}: data_type {name} is not supported by the PyTorch backend (it serves "
                    f"TYPE_BOOL, TYPE_UINT8, TYPE_INT8/16/32/64, TYPE_FP16/32/64 and TYPE_STRING)"
                )
            if dtype.name == "BYTES":
                dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
                if len(dims) + (1 if batched else 0) > 1:
                    raise ModelConfigError(
                        f"{where}: the PyTorch backend passes TYPE_STRING as a List[str], so only one "
                        f"dimension in all is allowed (with batching: dims: [1] and reshape "
                        f"{{ shape: [] }}), got {dims}"
                    )


def torchscript_arguments(module: Any, filename: str) -> tuple[list[str], list[str], bool]:
    """forward's argument names and types, and whether it takes one Dict[str, Tensor]."""
    try:
        schema = module.forward.schema
    except (AttributeError, RuntimeError):
        raise ModelLoadError(f"{filename} has no forward method") from None
    args = list(schema.arguments)
    if args and args[0].type.kind() == "ClassType":
        args = args[1:]  # self
    if len(args) == 1 and args[0].type.kind() == "DictType":
        if str(args[0].type) != "Dict[str, Tensor]":
            raise ModelLoadError(f"{filename}: a dict input must be Dict[str, Tensor], not {args[0].type}")
        return [], [], True
    names, kinds = [], []
    for arg in args:
        text = str(arg.type)
        if arg.type.kind() == "DictType":
            raise ModelLoadError(
                f"{filename}: forward has several arguments and '{arg.name}' is a dict; only a "
                f"single input of type Dict[str, Tensor] is supported"
            )
        if text not in ("Tensor", "List[str]"):
            raise ModelLoadError(
                f"{filename}: forward argument '{arg.name}' has type '{text}'; the PyTorch "
                f"backend passes Tensors, a List[str] (TYPE_STRING) or one Dict[str, Tensor]"
            )
        names.append(arg.name)
        kinds.append(text)
    return names, kinds, False


def torchscript_returns(module: Any, filename: str) -> dict[str, Any]:
    """How forward's result is laid out: a tuple of ``count`` (None: a list), or a dict."""
    returns = module.forward.schema.returns
    if len(returns) != 1:
        raise ModelLoadError(f"{filename}: forward returns {len(returns)} values")
    kind_of = returns[0].type

    def leaf(t: Any) -> str:
        return "tensor" if str(t) == "Tensor" else "strings" if str(t) == "List[str]" else ""

    if leaf(kind_of):
        return {"kind": "tuple", "count": 1, "single": True}
    if kind_of.kind() == "TupleType":
        bad = [str(t) for t in kind_of.elements() if not leaf(t)]
        if bad:
            raise ModelLoadError(
                f"{filename}: forward returns {kind_of}; each element must be a Tensor or a List[str]"
            )
        return {"kind": "tuple", "count": len(kind_of.elements()), "single": False}
    if str(kind_of) == "List[Tensor]":
        return {"kind": "tuple", "count": None, "single": False}
    if str(kind_of) == "Dict[str, Tensor]":
        return {"kind": "dict", "keys": None}
    raise ModelLoadError(
        f"{filename}: forward returns {kind_of}; serve models that return a Tensor, a List[str], "
        f"a tuple of those, a List[Tensor] or a Dict[str, Tensor]"
    )


def extra_inputs(config: model_config_pb2.ModelConfig) -> list[str]:
    """Sequence-batcher tensors Kiln feeds besides the config inputs (controls, state inputs)."""
    seq = config.sequence_batching
    if not config.HasField("sequence_batching"):
        return []
    return [c.name for c in seq.control_input] + [s.input_name for s in seq.state]


def map_inputs(
    config: model_config_pb2.ModelConfig,
    arg_names: list[str],
    arg_kinds: list[str],
    dict_input: bool,
    declared: list[ModelIO] | None,
) -> dict[str, Slot]:
    """Where each config input goes in forward's call (Triton's rules, module docstring of kiln.backends.pytorch);
    ``declared``: a torch.export program's own inputs, used when the config has none."""
    names = [e.name for e in config.input]
    if not names and declared is not None:  # a bare config (kiln bench): the program's own
        names = [io.name for io in declared]
    extra = extra_inputs(config)
    if dict_input:
        return {n: Slot(key=n) for n in [*names, *extra]}
    where = f"model '{config.name}'"
    if len(names) + len(extra) != len(arg_kinds):
        raise ModelConfigError(
            f"{where}: configuration expects {len(names) + len(extra)} inputs, the model's forward takes "
            f"{len(arg_kinds)}" + (f" ({', '.join(arg_names)})" if arg_names else "")
        )
    slots: dict[str, Slot] = {}
    if arg_names and all(n in arg_names for n in names):
        slots = {n: Slot(arg_names.index(n)) for n in names}
    elif all(named_index(n) is not None for n in names):
        slots = {n: Slot(named_index(n)) for n in names}
    else:
        log.warning(
            "model '%s': inputs %s are neither forward arguments %s nor <name>__<index> names: they go to "
            "forward in config order", config.name, names, arg_names,
        )  # fmt: skip
        slots = {n: Slot(i) for i, n in enumerate(names)}
    for n in extra:
        index = named_index(n)
        if index is None:
            raise ModelConfigError(
                f"{where}: sequence tensor '{n}' must follow the <name>__<index> naming convention for a "
                f"PyTorch model"
            )
        slots[n] = Slot(index)
    used = [s.index for s in slots.values()]
    if sorted(used) != list(range(len(arg_kinds))):  # type: ignore[type-var]
        raise ModelConfigError(
            f"{where}: input positions {dict((n, s.index) for n, s in slots.items())} do not cover the "
            f"forward's {len(arg_kinds)} arguments once each"
        )
    types = {e.name: BY_CONFIG_NAME[model_config_pb2.DataType.Name(e.data_type)] for e in config.input}
    for n, slot in slots.items():
        dtype = types.get(n)
        assert slot.index is not None
        wants_strings = arg_kinds[slot.index] == "List[str]"
        if dtype is not None and wants_strings != (dtype.name == "BYTES"):
            raise ModelConfigError(
                f"{where} input '{n}': the model takes a {arg_kinds[slot.index]} there, so its data_type "
                f"must be {'TYPE_STRING' if wants_strings else 'a tensor type, not TYPE_STRING'}"
            )
    return slots


def map_outputs(
    config: model_config_pb2.ModelConfig, returns: dict[str, Any], declared: list[ModelIO] | None
) -> dict[str, Slot]:
    """Where each config output (and sequence state output) is read from the model's result."""
    names = [e.name for e in config.output]
    if not names and declared is not None:
        names = [io.name for io in declared]
    states = (
        [s.output_name for s in config.sequence_batching.state]
        if config.HasField("sequence_batching")
        else []
    )
    if returns["kind"] == "dict":
        keys = returns.get("keys")
        missing = [n for n in names if keys is not None and n not in keys]
        if missing:
            raise ModelConfigError(
                f"model '{config.name}': outputs {missing} are not keys of the dict the model returns "
                f"({list(keys or [])})"
            )
        return {n: Slot(key=n) for n in [*names, *states]}
    if all(named_index(n) is not None for n in names):
        slots = {n: Slot(named_index(n)) for n in names}
    else:
        if len(names) > 1:
            log.warning(
                "model '%s': outputs %s do not all follow the <name>__<index> convention: they are read "
                "from the model's results in config order", config.name, names,
            )  # fmt: skip
        slots = {n: Slot(i) for i, n in enumerate(names)}
    for n in states:
        index = named_index(n)
        if index is None:
            raise ModelConfigError(
                f"model '{config.name}': sequence state output '{n}' must follow the <name>__<index> "
                f"naming convention for a PyTorch model"
            )
        slots[n] = Slot(index)
    count = returns.get("count")
    if count is not None:
        bad = {n: s.index for n, s in slots.items() if s.index is not None and s.index >= count}
        if bad:
            raise ModelConfigError(
                f"model '{config.name}': outputs {bad} refer to result positions the model does not "
                f"have; it returns {count} value(s)"
            )
    return slots


def export_signature(
    program: Any, returns: dict[str, Any], filename: str
) -> tuple[list[ModelIO], list[ModelIO]]:
    """A torch.export program's inputs (forward's argument names) and outputs (dict keys or OUTPUT__<i>)."""
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    arg_names = list(program.module_call_graph[0].signature.forward_arg_names or [])
    if len(arg_names) != len(user_inputs):
        arg_names = user_inputs
    inputs = [
        fake_io(arg, placeholders[node].meta.get("val"), filename)
        for arg, node in zip(arg_names, user_inputs, strict=True)
    ]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [a.meta.get("val") if hasattr(a, "meta") else None for a in output_node.args[0]]
    user_outputs = [
        v for s, v in zip(program.graph_signature.output_specs, values, strict=False)
        if s.kind.name == "USER_OUTPUT"
    ]  # fmt: skip
    if returns["kind"] == "dict":
        names = list(returns["keys"])
    else:
        names = [f"OUTPUT__{i}" for i in range(len(user_outputs))]
    outputs = [fake_io(n, v, filename) for n, v in zip(names, user_outputs, strict=True)]
    return inputs, outputs


TORCH_NAMES = {v: k for k, v in TORCH_TYPES.items()}


def named_index(name: str) -> int | None:
    """The index of a ``<name>__<index>`` tensor name (Triton: after the first ``__``, digits only)."""
    _head, sep, tail = name.partition(_DELIMITER)
    return int(tail) if sep and tail.isdigit() else None


def spec_returns(spec: Any) -> dict[str, Any]:
    """How a torch.export / AOTInductor out_spec lays out the results: a dict (its keys), else positions."""
    if spec.type is dict:
        keys = list(spec.context)
        if not all(isinstance(k, str) for k in keys):
            raise ModelLoadError(f"the model returns a dict with non-string keys {keys}")
        return {"kind": "dict", "keys": keys}
    if spec.type is None:  # a single tensor
        return {"kind": "tuple", "count": 1, "single": True}
    return {"kind": "tuple", "count": spec.num_children, "single": False}


def fake_io(name: str, value: Any, filename: str) -> ModelIO:
    dtype_name = TORCH_NAMES.get(str(getattr(value, "dtype", "")).removeprefix("torch."))
    if dtype_name is None:
        raise ModelLoadError(
            f"{filename}: '{name}' is {getattr(value, 'dtype', type(value).__name__)}, which the PyTorch backend "
            f"does not serve"
        )
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return ModelIO(name, BY_NAME[dtype_name], shape)


def output_type(config: model_config_pb2.ModelConfig, name: str) -> DataType | None:
    """The config's data type of output (or sequence state output) ``name``."""
    for entry in config.output:
        if entry.name == name:
            return BY_CONFIG_NAME[model_config_pb2.DataType.Name(entry.data_type)]
    for state in config.sequence_batching.state:
        if state.output_name == name:
            return BY_CONFIG_NAME[model_config_pb2.DataType.Name(state.data_type)]
    return None


def is_strings(value: Any) -> bool:
    """A ``List[str]`` result (TYPE_STRING)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
