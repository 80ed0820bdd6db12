"""ONNX Runtime backend (``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.datatypes import BY_ONNX
from kiln.errors import InternalError, InvalidArgumentError, ModelLoadError

_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    platform = "onnxruntime_onnx"
    default_filename = "model.onnx"

    session: ort.InferenceSession

    def session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        # Default: share the cores between instances so N instances don't oversubscribe the machine.
        default_intra = max(1, self.context.cpu_count // max(1, self.context.instance_count))
        opts.intra_op_num_threads = self.int_parameter("intra_op_thread_count", default_intra)
        opts.inter_op_num_threads = self.int_parameter("inter_op_thread_count", 1)
        if opts.inter_op_num_threads > 1:
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        level = self.config.optimization.graph.level if self.config.HasField("optimization") else 0
        opts.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.log_severity_level = 3
        return opts

    @classmethod
    def gpu_available(cls) -> bool:
        return "CUDAExecutionProvider" in ort.get_available_providers()

    def providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if self.context.kind == "GPU":
            return [
                ("CUDAExecutionProvider", {"device_id": str(self.context.device_id)}),
                "CPUExecutionProvider",
            ]
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=self.session_options(), providers=self.providers()
            )
        except Exception as e:  # ORT raises its own pybind exception types
            raise ModelLoadError(f"ONNX Runtime could not load {self.model_path.name}: {e}") from None

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]]:
        return (
            [self._io(a) for a in self.session.get_inputs()],
            [self._io(a) for a in self.session.get_outputs()],
        )

    def _io(self, arg: ort.NodeArg) -> ModelIO:
        dtype = BY_ONNX.get(arg.type)
        if dtype is None:
            raise ModelLoadError(f"'{arg.name}' has ONNX type {arg.type}, which Kiln does not serve")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return ModelIO(arg.name, dtype, shape)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        feeds = {name: _to_ort(arr) for name, arr in inputs.items()}
        try:
            results = self.session.run(list(outputs), feeds)
        except Exception as e:
            text = str(e)
            if "INVALID_ARGUMENT" in text:
                raise InvalidArgumentError(f"model rejected the request: {text}") from None
            raise InternalError(f"model execution failed: {text}") from None
        return dict(zip(outputs, results, strict=True))

    def unload(self) -> None:
        self.__dict__.pop("session", None)


def _to_ort(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.object_:
        # ORT string tensors take Python str; BYTES arrive as bytes.
        return (
            np.vectorize(
                lambda b: b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b, otypes=[object]
            )(arr)
            if arr.size
            else arr
        )
    return arr
