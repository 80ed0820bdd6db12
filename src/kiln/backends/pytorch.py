"""PyTorch backend (``platform: "pytorch_libtorch"`` / ``backend: "pytorch"``): TorchScript ``model.pt`` with the
semantics of Triton's PyTorch (LibTorch) backend, plus ``.pt2`` packages as Kiln's own extension. torch is
imported inside :meth:`PyTorchBackend.load` (the ``torch`` extra).

Inputs (Triton's rules, in order): a forward taking one ``Dict[str, Tensor]`` gets the config inputs as that dict,
keyed by name; else, when every config input name is a forward argument name, inputs go to those arguments;
else, when every name is ``<name>__<index>`` (``INPUT__0``), the index is the position; else the config order
is the position (logged). Outputs: ``<name>__<index>`` names index the returned tuple, else the config order does;
a model may return a Tensor, a ``List[str]`` (BYTES, 1-D) or a tuple of those, and (Kiln's extensions) a list of
Tensors or a ``Dict[str, Tensor]``, whose keys are then the output names.

Datatypes: BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32, FP64 as tensors; BYTES as ``List[str]`` of one
dimension in all (with batching: ``dims: [1]`` and ``reshape { shape: [] }``). UINT16/32/64 are refused, as
Triton does. An output whose dtype differs from its config data_type fails the request (Triton's check).

Config ``parameters`` (string values; booleans ``true/false/on/off/1/0``):

- ``INTRA_OP_THREAD_COUNT`` / ``INTER_OP_THREAD_COUNT`` (also Kiln's lower-case ``intra_op_thread_count`` /
  ``inter_op_thread_count``, what ``kiln bench --threads`` writes): torch's thread pools are process-global, as
  in Triton: a value applies when no other loaded PyTorch model has fixed a different one (else a warning says
  which value stays); the inter-op pool can be sized only before torch first uses it (else a warning). Absent
  or <= 0: torch's defaults stay.
- ``DISABLE_OPTIMIZED_EXECUTION`` (default false), ``INFERENCE_MODE`` (default true, as Triton today; false runs
  under ``torch.no_grad`` only), ``ENABLE_JIT_EXECUTOR`` / ``ENABLE_JIT_PROFILING`` / ``ENABLE_TENSOR_FUSER``
  (set around each execution when given, else torch's defaults), ``ENABLE_WEIGHT_SHARING`` (instances on one
  device share one loaded module), ``ENABLE_CACHE_CLEANING`` and ``DISABLE_CUDNN`` (GPU instances only; no
  effect on CPU, as Triton documents).
- ``ENABLE_NVFUSER: true`` is refused: PyTorch 2 no longer has NvFuser for TorchScript. Any other key is
  logged as not understood by this backend.

``.pt2`` (``default_model_filename: "model.pt2"``): a ``torch.export.save`` archive loads with
``torch.export.load`` and has a readable signature (forward argument names, the output dict's keys or
``OUTPUT__<i>``, dtypes, dynamic dims as -1), so its config can be auto-completed; an AOTInductor package
(``torch._inductor.aoti_compile_and_package``) loads with ``torch._inductor.aoti_load_package`` and, like
TorchScript, is described by its config (positional inputs; outputs by dict key or position).
"""

from __future__ import annotations

import logging
import threading
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from kiln.backends.base import Backend
from kiln.backends.torch_options import ThreadPools, TorchOptions, _torch
from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import (
    InternalError,
    InvalidArgumentError,
    KilnError,
    MissingDependencyError,
    ModelConfigError,
    ModelLoadError,
)
from kiln.types.datatypes import BY_CONFIG_NAME, BY_NAME, DataType

log = logging.getLogger(__name__)
# torch 2.13 marks torch.jit.load / trace deprecated (in favour of torch.export); serving TorchScript is this
# backend's job, so that notice would only repeat on every load
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)

#: Kiln datatype name -> torch dtype attribute (what Triton's PyTorch backend serves as tensors)
_TORCH_TYPES = {
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


class _Shared:
    """Modules shared by instances on one device (ENABLE_WEIGHT_SHARING), counted so the last unload frees."""

    lock = threading.Lock()
    modules: ClassVar[dict[tuple[str, str, str], list[Any]]] = {}  # key -> [module, extra, users]


@dataclass(frozen=True)
class _Slot:
    """Where a config tensor goes in (or comes from) the model's call: a position, or a dict key."""

    index: int | None = None
    key: str | None = None


class PyTorchBackend(Backend):
    name = "pytorch"
    platform = "pytorch_libtorch"
    config_platform = "pytorch_libtorch"
    default_filename = "model.pt"

    @classmethod
    def gpu_available(cls) -> bool:
        try:
            torch = _torch()
        except MissingDependencyError:
            return False
        return bool(torch.cuda.is_available())

    # -- load ------------------------------------------------------------------------------------------------
    def load(self) -> None:
        try:
            torch = _torch()
        except MissingDependencyError as e:
            raise ModelLoadError(e.message) from None
        self._torch = torch
        self.options = TorchOptions.parse(self.config)
        if self.options.ignored:
            log.warning(
                "model '%s': parameters %s are not PyTorch backend settings; the pytorch backend does not use "
                "them", self.config.name, list(self.options.ignored),
            )  # fmt: skip
        if self.context.kind == "GPU":
            if not torch.cuda.is_available():
                raise ModelLoadError(
                    f"model '{self.config.name}': KIND_GPU needs CUDA, which this torch "
                    f"({torch.__version__}) does not have; use KIND_CPU"
                )
            self.device = torch.device("cuda", self.context.device_id)
        else:
            self.device = torch.device("cpu")
        self._check_datatypes()
        self.format = self._format()
        self._exported_signature: tuple[list[ModelIO], list[ModelIO]] | None = None
        self._maps: tuple[dict[str, _Slot], dict[str, _Slot]] | None = None
        self._lock = threading.Lock()
        try:
            for kind, value in (
                ("intra", self.options.intra_op_threads),
                ("inter", self.options.inter_op_threads),
            ):
                if value is not None:
                    ThreadPools.claim(torch, self, kind, value)
            self._module, self._extra = self._load_shared()
            if self.format == "torchscript":
                self._arg_names, self._arg_kinds, self._dict_input = self._torchscript_arguments()
                self._returns = self._torchscript_returns()
                self._maps = (self._map_inputs(), self._map_outputs())
            else:
                self._dict_input = False
                self._returns = self._extra["returns"]
                if self.format == "export":
                    self._exported_signature = self._export_signature()
                    self._arg_names = [io.name for io in self._exported_signature[0]]
                else:  # AOTInductor: positional inputs, no names
                    self._arg_names = []
                self._arg_kinds = ["Tensor"] * (len(self._arg_names) or self._extra.get("args", 0))
                if self.format == "aoti" or self.config.input:
                    # a torch.export program's config may still be auto-completed: mapped at first use then
                    self._maps = (self._map_inputs(), self._map_outputs())
        except BaseException:
            self.unload()
            raise

    def _slots(self) -> tuple[dict[str, _Slot], dict[str, _Slot]]:
        if self._maps is None:
            with self._lock:
                if self._maps is None:
                    self._maps = (self._map_inputs(), self._map_outputs())
        return self._maps

    def _format(self) -> str:
        if self.model_path.suffix != ".pt2":
            return "torchscript"
        try:
            with zipfile.ZipFile(self.model_path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"{self.model_path.name} is not a .pt2 archive: {e}") from None
        return "aoti" if any("/data/aotinductor/" in f"/{n}" for n in names) else "export"

    def _load_shared(self) -> tuple[Any, dict[str, Any]]:
        if not self.options.weight_sharing:
            return self._load_model()
        key = (str(self.model_path.resolve()), str(self.device), str(self.model_path.stat().st_mtime_ns))
        with _Shared.lock:
            entry = _Shared.modules.get(key)
            if entry is None:
                module, extra = self._load_model()
                entry = _Shared.modules[key] = [module, extra, 0]
            else:
                log.info("model '%s': instance %s reuses the loaded module", self.config.name,
                         self.context.instance_name)  # fmt: skip
            entry[2] += 1
            self._shared_key: tuple[str, str, str] | None = key
            return entry[0], entry[1]

    def _load_model(self) -> tuple[Any, dict[str, Any]]:
        torch = self._torch
        path = str(self.model_path)
        try:
            with torch.inference_mode(self.options.inference_mode):
                if self.format == "torchscript":
                    return torch.jit.load(path, map_location=self.device), {}
                if self.format == "export":
                    program = torch.export.load(path)
                    module = program.module()
                    if self.device.type != "cpu":
                        module = module.to(self.device)
                    return module, {"program": program, "returns": _spec_returns(program.call_spec.out_spec)}
                return self._load_aoti(path)
        except KilnError:
            raise
        except Exception as e:  # torch raises RuntimeError and friends with the reason
            what = {"torchscript": "TorchScript", "export": "torch.export", "aoti": "AOTInductor"}[
                self.format
            ]
            raise ModelLoadError(
                f"PyTorch could not load {self.model_path.name} as a {what} model: {str(e).splitlines()[0]}"
            ) from None

    def _load_aoti(self, path: str) -> tuple[Any, dict[str, Any]]:
        import importlib

        inductor = importlib.import_module("torch._inductor")
        _pytree = importlib.import_module("torch.utils._pytree")

        device_index = self.device.index if self.device.type == "cuda" else -1
        compiled = inductor.aoti_load_package(path, device_index=device_index)
        in_spec, out_spec = (_pytree.treespec_loads(s) for s in compiled.loader.get_call_spec())
        args_spec, kwargs_spec = in_spec.children()
        if kwargs_spec.num_children:
            raise ModelLoadError(
                f"{self.model_path.name}: keyword inputs {kwargs_spec.context} are not served (export the model "
                f"with positional inputs only)"
            )
        return compiled, {"args": args_spec.num_children, "returns": _spec_returns(out_spec)}

    def _check_datatypes(self) -> None:
        batched = self.config.max_batch_size > 0
        for kind, entries in (("input", self.config.input), ("output", self.config.output)):
            for entry in entries:
                dtype = BY_CONFIG_NAME.get(model_config_pb2.DataType.Name(entry.data_type))
                where = f"model '{self.config.name}' {kind} '{entry.name}'"
                if dtype is None or (dtype.name not in _TORCH_TYPES and dtype.name != "BYTES"):
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

    # -- the model's call --------------------------------------------------------------------------------------
    def _torchscript_arguments(self) -> tuple[list[str], list[str], bool]:
        try:
            schema = self._module.forward.schema
        except (AttributeError, RuntimeError):
            raise ModelLoadError(f"{self.model_path.name} has no forward method") from None
        args = list(schema.arguments)
        if args and args[0].type.kind() == "ClassType":
            args = args[1:]  # self
        if len(args) == 1 and args[0].type.kind() == "DictType":
            if str(args[0].type) != "Dict[str, Tensor]":
                raise ModelLoadError(
                    f"{self.model_path.name}: a dict input must be Dict[str, Tensor], not {args[0].type}"
                )
            return [], [], True
        names, kinds = [], []
        for arg in args:
            text = str(arg.type)
            if arg.type.kind() == "DictType":
                raise ModelLoadError(
                    f"{self.model_path.name}: forward has several arguments and '{arg.name}' is a dict; only a "
                    f"single input of type Dict[str, Tensor] is supported"
                )
            if text not in ("Tensor", "List[str]"):
                raise ModelLoadError(
                    f"{self.model_path.name}: forward argument '{arg.name}' has type '{text}'; the PyTorch "
                    f"backend passes Tensors, a List[str] (TYPE_STRING) or one Dict[str, Tensor]"
                )
            names.append(arg.name)
            kinds.append(text)
        return names, kinds, False

    def _torchscript_returns(self) -> dict[str, Any]:
        returns = self._module.forward.schema.returns
        if len(returns) != 1:
            raise ModelLoadError(f"{self.model_path.name}: forward returns {len(returns)} values")
        kind_of = returns[0].type

        def leaf(t: Any) -> str:
            return "tensor" if str(t) == "Tensor" else "strings" if str(t) == "List[str]" else ""

        if leaf(kind_of):
            return {"kind": "tuple", "count": 1, "single": True}
        if kind_of.kind() == "TupleType":
            bad = [str(t) for t in kind_of.elements() if not leaf(t)]
            if bad:
                raise ModelLoadError(
                    f"{self.model_path.name}: forward returns {kind_of}; each element must be a Tensor or a "
                    f"List[str]"
                )
            return {"kind": "tuple", "count": len(kind_of.elements()), "single": False}
        if str(kind_of) == "List[Tensor]":
            return {"kind": "tuple", "count": None, "single": False}
        if str(kind_of) == "Dict[str, Tensor]":
            return {"kind": "dict", "keys": None}
        raise ModelLoadError(
            f"{self.model_path.name}: forward returns {kind_of}; serve models that return a Tensor, a List[str], "
            f"a tuple of those, a List[Tensor] or a Dict[str, Tensor]"
        )

    def _extra_inputs(self) -> list[str]:
        """Sequence-batcher tensors Kiln feeds besides the config inputs (controls, state inputs)."""
        seq = self.config.sequence_batching
        if not self.config.HasField("sequence_batching"):
            return []
        return [c.name for c in seq.control_input] + [s.input_name for s in seq.state]

    def _map_inputs(self) -> dict[str, _Slot]:
        arg_names, arg_kinds = self._arg_names, self._arg_kinds
        names = [e.name for e in self.config.input]
        if (
            not names and self._exported_signature is not None
        ):  # a bare config (kiln bench): the program's own
            names = [io.name for io in self._exported_signature[0]]
        extra = self._extra_inputs()
        if self._dict_input:
            return {n: _Slot(key=n) for n in [*names, *extra]}
        where = f"model '{self.config.name}'"
        if len(names) + len(extra) != len(arg_kinds):
            raise ModelConfigError(
                f"{where}: configuration expects {len(names) + len(extra)} inputs, the model's forward takes "
                f"{len(arg_kinds)}" + (f" ({', '.join(arg_names)})" if arg_names else "")
            )
        slots: dict[str, _Slot] = {}
        if arg_names and all(n in arg_names for n in names):
            slots = {n: _Slot(arg_names.index(n)) for n in names}
        elif all(_named_index(n) is not None for n in names):
            slots = {n: _Slot(_named_index(n)) for n in names}
        else:
            log.warning(
                "model '%s': inputs %s are neither forward arguments %s nor <name>__<index> names: they go to "
                "forward in config order", self.config.name, names, arg_names,
            )  # fmt: skip
            slots = {n: _Slot(i) for i, n in enumerate(names)}
        for n in extra:
            index = _named_index(n)
            if index is None:
                raise ModelConfigError(
                    f"{where}: sequence tensor '{n}' must follow the <name>__<index> naming convention for a "
                    f"PyTorch model"
                )
            slots[n] = _Slot(index)
        used = [s.index for s in slots.values()]
        if sorted(used) != list(range(len(arg_kinds))):  # type: ignore[type-var]
            raise ModelConfigError(
                f"{where}: input positions {dict((n, s.index) for n, s in slots.items())} do not cover the "
                f"forward's {len(arg_kinds)} arguments once each"
            )
        types = {
            e.name: BY_CONFIG_NAME[model_config_pb2.DataType.Name(e.data_type)] for e in self.config.input
        }
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

    def _map_outputs(self) -> dict[str, _Slot]:
        names = [e.name for e in self.config.output]
        if not names and self._exported_signature is not None:
            names = [io.name for io in self._exported_signature[1]]
        states = (
            [s.output_name for s in self.config.sequence_batching.state]
            if self.config.HasField("sequence_batching")
            else []
        )
        returns = self._returns
        if returns["kind"] == "dict":
            keys = returns.get("keys")
            missing = [n for n in names if keys is not None and n not in keys]
            if missing:
                raise ModelConfigError(
                    f"model '{self.config.name}': outputs {missing} are not keys of the dict the model returns "
                    f"({list(keys or [])})"
                )
            return {n: _Slot(key=n) for n in [*names, *states]}
        if all(_named_index(n) is not None for n in names):
            slots = {n: _Slot(_named_index(n)) for n in names}
        else:
            if len(names) > 1:
                log.warning(
                    "model '%s': outputs %s do not all follow the <name>__<index> convention: they are read "
                    "from the model's results in config order", self.config.name, names,
                )  # fmt: skip
            slots = {n: _Slot(i) for i, n in enumerate(names)}
        for n in states:
            index = _named_index(n)
            if index is None:
                raise ModelConfigError(
                    f"model '{self.config.name}': sequence state output '{n}' must follow the <name>__<index> "
                    f"naming convention for a PyTorch model"
                )
            slots[n] = _Slot(index)
        count = returns.get("count")
        if count is not None:
            bad = {n: s.index for n, s in slots.items() if s.index is not None and s.index >= count}
            if bad:
                raise ModelConfigError(
                    f"model '{self.config.name}': outputs {bad} refer to result positions the model does not "
                    f"have; it returns {count} value(s)"
                )
        return slots

    # -- the readable signature of torch.export programs -------------------------------------------------------
    def _export_signature(self) -> tuple[list[ModelIO], list[ModelIO]]:
        program = self._extra["program"]
        user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        arg_names = list(program.module_call_graph[0].signature.forward_arg_names or [])
        if len(arg_names) != len(user_inputs):
            arg_names = user_inputs
        inputs = [
            _fake_io(arg, placeholders[node].meta.get("val"), self.model_path.name)
            for arg, node in zip(arg_names, user_inputs, strict=True)
        ]
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        values = [a.meta.get("val") if hasattr(a, "meta") else None for a in output_node.args[0]]
        user_outputs = [
            v for s, v in zip(program.graph_signature.output_specs, values, strict=False)
            if s.kind.name == "USER_OUTPUT"
        ]  # fmt: skip
        returns = self._extra["returns"]
        if returns["kind"] == "dict":
            names = list(returns["keys"])
        else:
            names = [f"OUTPUT__{i}" for i in range(len(user_outputs))]
        outputs = [_fake_io(n, v, self.model_path.name) for n, v in zip(names, user_outputs, strict=True)]
        return inputs, outputs

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        """torch.export programs declare their I/O; TorchScript and AOTInductor packages do not (None)."""
        return self._exported_signature

    def settings(self) -> dict[str, object]:
        torch = getattr(self, "_torch", None)
        if torch is None:
            return {"runtime": "torch (not loaded)"}
        opts = getattr(self, "options", TorchOptions())
        values: dict[str, object] = {
            "runtime": f"torch {torch.__version__}",
            "format": getattr(self, "format", "torchscript"),
            "device": str(getattr(self, "device", "cpu")),
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "inference_mode": opts.inference_mode,
            "optimized_execution": opts.optimized_execution,
            "weight_sharing": opts.weight_sharing,
        }
        for key, value in (
            ("jit_executor", opts.jit_executor),
            ("jit_profiling", opts.jit_profiling),
            ("tensor_fuser", opts.tensor_fuser),
        ):
            if value is not None:
                values[key] = value
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            values["cudnn"] = opts.cudnn
            values["cache_cleaning"] = opts.cache_cleaning
        return values

    # -- execute -------------------------------------------------------------------------------------------------
    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        slots_in, _ = self._slots()
        feeds = {name: self._to_torch(arr) for name, arr in inputs.items()}
        try:
            with ExitStack() as stack:
                self._enter_modes(stack)
                if self._dict_input:
                    result = self._module({n: feeds[n] for n in feeds if n in slots_in})
                else:
                    args: list[Any] = [None] * len(slots_in)
                    for name, value in feeds.items():
                        slot = slots_in.get(name)
                        if slot is not None and slot.index is not None:
                            args[slot.index] = value
                    missing = [
                        n for n, s in slots_in.items() if s.index is not None and args[s.index] is None
                    ]
                    if missing:
                        raise InvalidArgumentError(
                            f"model '{self.config.name}' needs inputs {missing} (its forward has no defaults)"
                        )
                    result = self._module(*args)
                answer = {name: self._read_output(name, result) for name in outputs}
        except KilnError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InternalError(f"PyTorch execute failure: {text}") from None
        finally:
            if self.device.type == "cuda" and self.options.cache_cleaning:
                torch.cuda.empty_cache()
        return answer

    def _enter_modes(self, stack: ExitStack) -> None:
        torch = self._torch
        opts = self.options
        if self.format == "torchscript":
            stack.enter_context(torch.jit.optimized_execution(opts.optimized_execution))
            # process-wide JIT switches, set for each execution when the config gives them (as Triton does)
            if opts.jit_profiling is not None:
                torch._C._jit_set_profiling_mode(opts.jit_profiling)
            if opts.jit_executor is not None:
                torch._C._jit_set_profiling_executor(opts.jit_executor)
            if opts.tensor_fuser is not None:
                torch._C._jit_set_texpr_fuser_enabled(opts.tensor_fuser)
        if self.device.type == "cuda":
            stack.enter_context(torch.backends.cudnn.flags(enabled=opts.cudnn))
            stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.no_grad())
        if opts.inference_mode:
            stack.enter_context(torch.inference_mode())

    def _to_torch(self, arr: np.ndarray) -> Any:
        torch = self._torch
        if arr.dtype == np.object_:  # BYTES -> List[str] (one dimension, checked at load)
            return [
                b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else str(b)
                for b in arr.reshape(-1)
            ]
        if not arr.flags.writeable:  # torch.from_numpy shares memory and wants it writable
            arr = np.array(arr, order="C")
        tensor = torch.from_numpy(arr)
        return tensor.to(self.device) if self.device.type != "cpu" else tensor

    def _read_output(self, name: str, result: Any) -> np.ndarray:
        slot = self._slots()[1].get(name)
        if slot is None:
            raise InvalidArgumentError(f"model '{self.config.name}' has no output '{name}'")
        if slot.key is not None:
            if not isinstance(result, dict):
                raise InternalError(
                    f"model '{self.config.name}' returned {type(result).__name__}, not a dict"
                )
            if name not in result:
                raise InternalError(
                    f"model '{self.config.name}' returned no '{name}' (its dict has {sorted(result)})"
                )
            value = result[name]
        else:
            single = self._returns.get("single") or not isinstance(result, tuple | list)
            values = (result,) if single else result
            assert slot.index is not None
            if slot.index >= len(values):
                raise InvalidArgumentError(
                    f"The output {name} in the model configuration refers to an output index which doesn't "
                    f"exist. This model has {len(values)} outputs"
                )
            value = values[slot.index]
        return self._to_numpy(name, value)

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        torch = self._torch
        spec = self._config_type(name)
        if isinstance(value, list) and _is_strings(value):
            if spec is not None and spec.name != "BYTES":
                raise InvalidArgumentError(
                    f"configuration expects datatype {spec.config_name} for output '{name}', model provides "
                    f"TYPE_STRING"
                )
            return np.array([s.encode("utf-8", "surrogateescape") for s in value], dtype=np.object_)
        if not isinstance(value, torch.Tensor):
            raise InternalError(
                f"output '{name}' must be of type Tensor or List[str], not {type(value).__name__}"
            )
        if value.dim() == 0:
            raise InvalidArgumentError(f"output '{name}' is a scalar which is not supported.")
        provided = _TORCH_NAMES.get(str(value.dtype).removeprefix("torch."))
        if spec is not None and provided != spec.name:
            shown = f"TYPE_{provided}" if provided else str(value.dtype)
            raise InvalidArgumentError(
                f"configuration expects datatype {spec.config_name} for output '{name}', model provides {shown}"
            )
        return value.detach().cpu().contiguous().numpy()

    def _config_type(self, name: str) -> DataType | None:
        for entry in self.config.output:
            if entry.name == name:
                return BY_CONFIG_NAME[model_config_pb2.DataType.Name(entry.data_type)]
        for state in self.config.sequence_batching.state:
            if state.output_name == name:
                return BY_CONFIG_NAME[model_config_pb2.DataType.Name(state.data_type)]
        return None

    def unload(self) -> None:
        ThreadPools.release(self)
        key = self.__dict__.pop("_shared_key", None)
        if key is not None:
            with _Shared.lock:
                entry = _Shared.modules.get(key)
                if entry is not None:
                    entry[2] -= 1
                    if entry[2] <= 0:
                        del _Shared.modules[key]
        self.__dict__.pop("_module", None)
        self.__dict__.pop("_extra", None)


_TORCH_NAMES = {v: k for k, v in _TORCH_TYPES.items()}


def _named_index(name: str) -> int | None:
    """The index of a ``<name>__<index>`` tensor name (Triton: after the first ``__``, digits only)."""
    _head, sep, tail = name.partition(_DELIMITER)
    return int(tail) if sep and tail.isdigit() else None


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _spec_returns(spec: Any) -> dict[str, Any]:
    """How a torch.export / AOTInductor out_spec lays out the results: a dict (its keys), else positions."""
    if spec.type is dict:
        keys = list(spec.context)
        if not all(isinstance(k, str) for k in keys):
            raise ModelLoadError(f"the model returns a dict with non-string keys {keys}")
        return {"kind": "dict", "keys": keys}
    if spec.type is None:  # a single tensor
        return {"kind": "tuple", "count": 1, "single": True}
    return {"kind": "tuple", "count": spec.num_children, "single": False}


def _fake_io(name: str, value: Any, filename: str) -> ModelIO:
    dtype_name = _TORCH_NAMES.get(str(getattr(value, "dtype", "")).removeprefix("torch."))
    if dtype_name is None:
        raise ModelLoadError(
            f"{filename}: '{name}' is {getattr(value, 'dtype', type(value).__name__)}, which the PyTorch backend "
            f"does not serve"
        )
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return ModelIO(name, BY_NAME[dtype_name], shape)
