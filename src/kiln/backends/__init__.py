"""Backends behind one small interface; each runtime module is imported only when a model needs it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from kiln.backends.base import Backend, BackendContext, ExecutionShape, ModelCaller
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError, UnimplementedError


@dataclass(frozen=True)
class BackendSpec:
    module: str  # imported when a model of this backend loads
    cls: str
    platforms: tuple[str, ...] = ()  # platform names that select it
    files: tuple[str, ...] = ()  # model file (or folder) names that identify it in a version folder


_REGISTRY: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec(
        "kiln.backends.onnxruntime", "OnnxRuntimeBackend", ("onnxruntime_onnx",), ("model.onnx",)
    ),
    "openvino": BackendSpec("kiln.backends.openvino", "OpenVinoBackend", ("openvino",), ("model.xml",)),
    "python": BackendSpec("kiln.backends.python", "PythonBackend", (), ("model.py",)),
    "ensemble": BackendSpec("kiln.backends.ensemble", "EnsembleBackend", ("ensemble",)),
    "tensorflow": BackendSpec(
        "kiln.backends.tensorflow",
        "TensorFlowBackend",
        ("tensorflow_savedmodel", "tensorflow_graphdef"),
        ("model.savedmodel", "model.graphdef"),
    ),
    "tflite": BackendSpec("kiln.backends.tflite", "TFLiteBackend", (), ("model.tflite",)),
    "pytorch": BackendSpec("kiln.backends.pytorch", "PyTorchBackend", ("pytorch_libtorch",), ("model.pt",)),
    "ncnn": BackendSpec("kiln.backends.ncnn", "NcnnBackend", (), ("model.param",)),
}
# Known to Triton, not (yet) served by Kiln: refused with a clear message instead of a vague failure.
_NOT_YET = {
    "tensorrt_plan": "tensorrt",
}
_NOT_YET_BACKENDS = {"tensorrt", "fil", "dali"}


def register_backend(name: str, spec: BackendSpec) -> None:
    """Add (or replace) a backend: how extensions and tests plug a runtime in without touching the core."""
    _REGISTRY[name] = spec


def backend_name(config: model_config_pb2.ModelConfig, model_dir: Path) -> str:
    """Which backend serves this config: ``backend``, else ``platform``, else the files present."""
    if config.backend:
        name = config.backend
    elif config.platform:
        name = next((b for b, spec in _REGISTRY.items() if config.platform in spec.platforms), "")
        if not name:
            name = _NOT_YET.get(config.platform, config.platform)
    else:
        name = ""
        for b, spec in _REGISTRY.items():
            # a model "file" may be a folder (TensorFlow SavedModel)
            if any(p.exists() for fname in spec.files for p in model_dir.glob(f"*/{fname}")):
                name = b
                break
        if not name:
            raise ModelConfigError(
                f"model '{config.name}': config sets neither 'backend' nor 'platform' and no model file "
                f"Kiln recognises was found"
            )
    if name in _REGISTRY:
        return name
    if name in _NOT_YET_BACKENDS:
        raise UnimplementedError(
            f"model '{config.name}': the '{name}' backend is not implemented in Kiln yet"
        )
    raise ModelConfigError(f"model '{config.name}': unknown backend/platform '{name}'")


def backend_class(name: str) -> type[Backend]:
    spec = _REGISTRY[name]
    return getattr(importlib.import_module(spec.module), spec.cls)


__all__ = [
    "Backend",
    "BackendContext",
    "BackendSpec",
    "ExecutionShape",
    "ModelCaller",
    "backend_class",
    "backend_name",
    "register_backend",
]
