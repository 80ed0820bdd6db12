"""Load an artifact (an .onnx file, an OpenVINO .xml, or a repository model folder) into something that runs
input dicts: the same runtimes, with the same thread settings, that ``kiln serve`` uses."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from kiln.errors import InvalidArgumentError, MissingDependencyError, UnavailableError
from kiln.perf.inputs import InputSpec

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class Runner(Protocol):
    name: str
    inputs: list[InputSpec]
    outputs: list[InputSpec]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def default_threads() -> int:
    return os.cpu_count() or 1


def gpu_providers(device_id: int = 0, trt_options: dict[str, str] | None = None) -> list[object]:
    """CUDA (and TensorRT, when this onnxruntime build has it) providers; a clear error without a GPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise UnavailableError(
            "GPU requested but this onnxruntime has no CUDAExecutionProvider (no GPU or CPU-only build: "
            f"available providers are {', '.join(available)}); install onnxruntime-gpu on a machine with a GPU"
        )
    providers: list[object] = []
    if "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {"device_id": str(device_id), **(trt_options or {})}))
    providers.append(("CUDAExecutionProvider", {"device_id": str(device_id)}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtRunner:
    def __init__(
        self,
        model: Path | bytes,
        threads: int | None = None,
        name: str = "",
        providers: list[object] | None = None,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise InvalidArgumentError(f"ONNX Runtime cannot load {name or 'the model'}: {e}") from None
        self.name = name or (model.name if isinstance(model, Path) else "model.onnx")
        self.inputs = [
            InputSpec(
                a.name, np.dtype(_ORT_TYPES[a.type]), tuple(d if isinstance(d, int) else -1 for d in a.shape)
            )
            for a in self.session.get_inputs()
        ]
        self.outputs = [
            InputSpec(
                a.name, np.dtype(_ORT_TYPES[a.type]), tuple(d if isinstance(d, int) else -1 for d in a.shape)
            )
            for a in self.session.get_outputs()
        ]
        self.output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds)), strict=True))


def import_openvino():  # type: ignore[no-untyped-def]
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO", "openvino") from None
    return openvino


def _ov_spec(port: Any) -> InputSpec:
    from kiln.backends.openvino import OPENVINO_TYPES

    name = port.get_element_type().get_type_name()
    if name not in OPENVINO_TYPES:
        raise InvalidArgumentError(
            f"'{port.get_any_name()}' has OpenVINO type {name}, which Kiln does not handle"
        )
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    return InputSpec(port.get_any_name(), np.dtype(OPENVINO_TYPES[name]), shape)


def openvino_compile_config(threads: int, inference_precision: str | None) -> dict[str, object]:
    """CPU plugin settings. ``inference_precision`` "f32" keeps FP32 artifacts in FP32: on CPUs with native
    BF16 the plugin otherwise computes in BF16 by default."""
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    return config


class OpenVinoRunner:
    def __init__(
        self,
        model_path: Path,
        threads: int | None = None,
        cache_dir: Path | None = None,
        name: str = "",
        inference_precision: str | None = None,
    ) -> None:
        ov = import_openvino()
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = openvino_compile_config(threads or default_threads(), inference_precision)
        try:
            self.compiled = core.compile_model(str(model_path), "CPU", config)
        except Exception as e:
            raise InvalidArgumentError(f"OpenVINO cannot load {model_path}: {e}") from None
        self.name = name or model_path.name
        self.inputs = [_ov_spec(p) for p in self.compiled.inputs]
        self.outputs = [_ov_spec(p) for p in self.compiled.outputs]
        self.output_names = [o.name for o in self.outputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            result = self._request.infer(dict(feeds))
            return {
                name: np.array(result[out])
                for name, out in zip(self.output_names, self.compiled.outputs, strict=False)
            }


@dataclass(frozen=True)
class Artifact:
    path: Path  # the model file
    backend: str  # "onnxruntime" or "openvino"
    threads: int | None = None  # from config.pbtxt parameters, when a repository model
    inference_precision: str | None = None  # OpenVINO: config.pbtxt parameter "inference_precision"


def resolve(target: Path) -> Artifact:
    """An .onnx / .xml file, a repository model folder (latest version) or a version folder."""
    target = Path(target)
    if target.is_file():
        if target.suffix == ".onnx":
            return Artifact(target, "onnxruntime")
        if target.suffix == ".xml":
            return Artifact(target, "openvino")
        raise InvalidArgumentError(f"{target}: expected an .onnx or OpenVINO .xml file, or a model folder")
    if not target.is_dir():
        raise InvalidArgumentError(f"{target} does not exist")
    threads = None
    precision = None
    model_dir = target
    config = target / "config.pbtxt"
    if not config.exists() and (target.parent / "config.pbtxt").exists():
        model_dir, config = target.parent, target.parent / "config.pbtxt"
    if config.exists():
        from kiln.config import int_parameter, load_config, string_parameter

        cfg = load_config(config)
        threads = int_parameter(cfg, "intra_op_thread_count", 0) or None
        precision = string_parameter(cfg, "inference_precision") or precision
    version_dir = target
    if model_dir == target:
        versions = sorted(int(p.name) for p in target.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise InvalidArgumentError(f"{target} has no numbered version folder")
        version_dir = target / str(versions[-1])
    for name, backend in (("model.onnx", "onnxruntime"), ("model.xml", "openvino")):
        if (version_dir / name).is_file():
            return Artifact(version_dir / name, backend, threads, precision)
    raise InvalidArgumentError(f"{version_dir} holds neither model.onnx nor model.xml")


def open_runner(artifact: Artifact, threads: int | None = None, name: str = "") -> Runner:
    threads = threads or artifact.threads
    if artifact.backend == "openvino":
        return OpenVinoRunner(
            artifact.path, threads, name=name, inference_precision=artifact.inference_precision
        )
    return OrtRunner(artifact.path, threads, name=name)
