"""OpenVINO backend (``backend: "openvino"``): serves the IR that ``kiln build --target openvino`` writes
(``model.xml`` + ``model.bin``) on the CPU plugin. Imported only when such a model is loaded."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.errors import InternalError, InvalidArgumentError, MissingDependencyError, ModelLoadError
from kiln.types.datatypes import from_numpy

# OpenVINO element type name -> numpy dtype
OPENVINO_TYPES: dict[str, type] = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "i8": np.int8,
    "u8": np.uint8,
    "i16": np.int16,
    "u16": np.uint16,
    "i32": np.int32,
    "u32": np.uint32,
    "i64": np.int64,
    "u64": np.uint64,
    "boolean": np.bool_,
}


class OpenVinoBackend(Backend):
    """Parameters (config.pbtxt ``parameters``): ``intra_op_thread_count`` (CPU threads, default cores /
    instances), ``cache_dir`` (compiled-model cache, relative to the model folder), ``inference_precision``
    (``f32`` keeps FP32 models in FP32 on CPUs that would otherwise compute in BF16), ``performance_hint``
    (``LATENCY`` default, or ``THROUGHPUT``)."""

    name = "openvino"
    platform = "openvino"
    config_platform = "openvino"
    default_filename = "model.xml"

    def load(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ModelLoadError(str(MissingDependencyError("OpenVINO", "openvino"))) from None
        if self.context.kind == "GPU":
            raise ModelLoadError(
                "the OpenVINO backend serves on CPU only in Kiln; use instance_group KIND_CPU"
            )
        core = ov.Core()
        cache = self.parameter("cache_dir")
        if cache:
            path = Path(cache)
            if not path.is_absolute():
                path = self.model_path.parent.parent / path
            core.set_property({"CACHE_DIR": str(path)})
        properties: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.int_parameter("intra_op_thread_count", self.default_threads()),
            "PERFORMANCE_HINT": (self.parameter("performance_hint") or "LATENCY").upper(),
        }
        precision = self.parameter("inference_precision")
        if precision:
            properties["INFERENCE_PRECISION_HINT"] = precision
        self._properties = properties
        try:
            self.compiled = core.compile_model(str(self.model_path), "CPU", properties)
        except Exception as e:
            raise ModelLoadError(f"OpenVINO could not load {self.model_path.name}: {e}") from None
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self._outputs = {port.get_any_name(): port for port in self.compiled.outputs}

    def settings(self) -> dict[str, object]:
        import openvino as ov

        return {"runtime": f"openvino {ov.__version__}", "device": "CPU", **getattr(self, "_properties", {})}

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        return (
            [self._io(p) for p in self.compiled.inputs],
            [self._io(p) for p in self.compiled.outputs],
        )

    def _io(self, port: Any) -> ModelIO:
        type_name = port.get_element_type().get_type_name()
        if type_name not in OPENVINO_TYPES:
            raise ModelLoadError(
                f"'{port.get_any_name()}' has OpenVINO type {type_name}, which Kiln does not serve"
            )
        shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        return ModelIO(port.get_any_name(), from_numpy(np.dtype(OPENVINO_TYPES[type_name])), shape)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        try:
            with self._lock:  # one infer request per instance; the core runs at most one batch per instance
                result = self._request.infer(dict(inputs))
                return {name: np.array(result[self._outputs[name]]) for name in outputs}
        except (RuntimeError, ValueError, TypeError) as e:
            text = str(e)
            if "shape" in text.lower() or "type" in text.lower():
                raise InvalidArgumentError(f"model rejected the request: {text}") from None
            raise InternalError(f"model execution failed: {text}") from None

    def unload(self) -> None:
        self.__dict__.pop("_request", None)
        self.__dict__.pop("compiled", None)
