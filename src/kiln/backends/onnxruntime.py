"""ONNX Runtime backend (``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import InternalError, InvalidArgumentError, ModelConfigError, ModelLoadError
from kiln.types.datatypes import BY_ONNX

log = logging.getLogger(__name__)

_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    platform = "onnxruntime_onnx"
    config_platform = "onnxruntime_onnx"
    default_filename = "model.onnx"

    session: ort.InferenceSession
    #: an in-memory model (``kiln build`` runs its intermediate graphs without writing them); else the file
    model_bytes: bytes | None = None

    def settings(self) -> dict[str, object]:
        opts = getattr(self, "_options", None) or self.session_options()
        return {
            "runtime": f"onnxruntime {ort.__version__}",
            "intra_op_threads": opts.intra_op_num_threads,
            "inter_op_threads": opts.inter_op_num_threads,
            "graph_optimization": str(opts.graph_optimization_level).rsplit(".", 1)[-1],
            "providers": self.session.get_providers() if hasattr(self, "session") else self.providers(),
        }

    def session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.int_parameter("intra_op_thread_count", self.default_threads())
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
        if self.context.kind != "GPU":
            return ["CPUExecutionProvider"]
        device = str(self.context.device_id)
        providers: list[str | tuple[str, dict[str, str]]] = []
        trt = tensorrt_options(self.config, self.model_path.parent.parent)
        if trt is not None:
            if "TensorrtExecutionProvider" in ort.get_available_providers():
                providers.append(("TensorrtExecutionProvider", {"device_id": device, **trt}))
            else:
                log.warning(
                    "model '%s' asks for TensorRT, which this ONNX Runtime lacks: using CUDA",
                    self.config.name,
                )
        return [*providers, ("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]

    def load(self) -> None:
        self._options = self.session_options()
        source: str | bytes = self.model_bytes if self.model_bytes is not None else str(self.model_path)
        try:
            self.session = ort.InferenceSession(
                source, sess_options=self._options, providers=self.providers()
            )
        except Exception as e:  # ORT raises its own pybind exception types
            raise ModelLoadError(f"ONNX Runtime could not load {self.model_path.name}: {e}") from None

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
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


def tensorrt_options(config: model_config_pb2.ModelConfig, model_dir: Path) -> dict[str, str] | None:
    """TensorRT execution-provider options from Triton's ``optimization { execution_accelerators {
    gpu_execution_accelerator: [{ name: "tensorrt", parameters {...} }] } }``; None when not asked for.
    ``precision_mode`` FP16/INT8 become trt_fp16_enable/trt_int8_enable; trt_* parameters pass through; a relative
    engine cache path is relative to the model directory."""
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    spec = next((a for a in accelerators if a.name == "tensorrt"), None)
    if spec is None:
        return None
    params = dict(spec.parameters)
    options = {k: v for k, v in params.items() if k.startswith("trt_")}
    mode = params.get("precision_mode", "FP32").upper()
    if mode not in ("FP32", "FP16", "INT8"):
        raise ModelConfigError(f"model '{config.name}': tensorrt precision_mode must be FP32, FP16 or INT8")
    options["trt_fp16_enable"] = "1" if mode in ("FP16", "INT8") else options.get("trt_fp16_enable", "0")
    options["trt_int8_enable"] = "1" if mode == "INT8" else options.get("trt_int8_enable", "0")
    cache = options.get("trt_engine_cache_path")
    if cache and not Path(cache).is_absolute():
        options["trt_engine_cache_path"] = str(model_dir / cache)
    return options


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
