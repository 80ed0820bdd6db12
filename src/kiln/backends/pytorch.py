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
from typing import Any, ClassVar

import numpy as np

from kiln.backends import torch_io
from kiln.backends.base import Backend
from kiln.backends.torch_io import Slot
from kiln.backends.torch_options import ThreadPools, TorchOptions, _torch
from kiln.config import ModelIO
from kiln.errors import (
    InternalError,
    InvalidArgumentError,
    KilnError,
    MissingDependencyError,
    ModelLoadError,
)

log = logging.getLogger(__name__)
# torch 2.13 marks torch.jit.load / trace deprecated (in favour of torch.export); serving TorchScript is this
# backend's job, so that notice would only repeat on every load
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)


class _Shared:
    """Modules shared by instances on one device (ENABLE_WEIGHT_SHARING), counted so the last unload frees."""

    lock = threading.Lock()
    modules: ClassVar[dict[tuple[str, str, str], list[Any]]] = {}  # key -> [module, extra, users]


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
        torch_io.check_datatypes(self.config)
        self.format = self._format()
        self._exported_signature: tuple[list[ModelIO], list[ModelIO]] | None = None
        self._maps: tuple[dict[str, Slot], dict[str, Slot]] | None = None
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
                self._arg_names, self._arg_kinds, self._dict_input = torch_io.torchscript_arguments(
                    self._module, self.model_path.name
                )
                self._returns = torch_io.torchscript_returns(self._module, self.model_path.name)
                self._maps = self._map()
            else:
                self._dict_input = False
                self._returns = self._extra["returns"]
                if self.format == "export":
                    self._exported_signature = torch_io.export_signature(
                        self._extra["program"], self._returns, self.model_path.name
                    )
                    self._arg_names = [io.name for io in self._exported_signature[0]]
                else:  # AOTInductor: positional inputs, no names
                    self._arg_names = []
                self._arg_kinds = ["Tensor"] * (len(self._arg_names) or self._extra.get("args", 0))
                if self.format == "aoti" or self.config.input:
                    # a torch.export program's config may still be auto-completed: mapped at first use then
                    self._maps = self._map()
        except BaseException:
            self.unload()
            raise

    def _slots(self) -> tuple[dict[str, Slot], dict[str, Slot]]:
        if self._maps is None:
            with self._lock:
                if self._maps is None:
                    self._maps = self._map()
        return self._maps

    def _map(self) -> tuple[dict[str, Slot], dict[str, Slot]]:
        declared = self._exported_signature
        inputs = torch_io.map_inputs(
            self.config, self._arg_names, self._arg_kinds, self._dict_input, declared[0] if declared else None
        )
        return inputs, torch_io.map_outputs(self.config, self._returns, declared[1] if declared else None)

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
                    return module, {
                        "program": program,
                        "returns": torch_io.spec_returns(program.call_spec.out_spec),
                    }
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
        return compiled, {"args": args_spec.num_children, "returns": torch_io.spec_returns(out_spec)}

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
        spec = torch_io.output_type(self.config, name)
        if isinstance(value, list) and torch_io.is_strings(value):
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
        provided = torch_io.TORCH_NAMES.get(str(value.dtype).removeprefix("torch."))
        if spec is not None and provided != spec.name:
            shown = f"TYPE_{provided}" if provided else str(value.dtype)
            raise InvalidArgumentError(
                f"configuration expects datatype {spec.config_name} for output '{name}', model provides {shown}"
            )
        return value.detach().cpu().contiguous().numpy()

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
