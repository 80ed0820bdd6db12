"""Backends behind one small interface; each runtime module is imported only when a model needs it."""

from __future__ import annotations

import importlib
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from kiln.backends.base import Backend, BackendContext
from kiln.errors import ModelConfigError, UnimplementedError

# backend name -> (module, class, platform names that select it, file names that identify it)
_REGISTRY: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "onnxruntime": (
        "kiln.backends.onnxruntime",
        "OnnxRuntimeBackend",
        ("onnxruntime_onnx",),
        ("model.onnx",),
    ),
    "openvino": (
        "kiln.backends.openvino",
        "OpenVinoBackend",
        ("openvino",),
        ("model.xml",),
    ),
}
# Known to Triton, not (yet) served by Kiln: refused with a clear message instead of a vague failure.
_NOT_YET = {
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "pytorch_libtorch": "pytorch",
    "ensemble": "ensemble",
}
_NOT_YET_BACKENDS = {"tensorrt", "tensorflow", "pytorch", "python", "ensemble", "fil", "dali"}


def backend_name(config: model_config_pb2.ModelConfig, model_dir: Path) -> str:
    """Which backend serves this config: ``backend``, else ``platform``, else the files present."""
    if config.backend:
        name = config.backend
    elif config.platform:
        name = next((b for b, spec in _REGISTRY.items() if config.platform in spec[2]), "")
        if not name:
            name = _NOT_YET.get(config.platform, config.platform)
    else:
        name = ""
        for b, spec in _REGISTRY.items():
            if any(p.is_file() for fname in spec[3] for p in model_dir.glob(f"*/{fname}")):
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
    module_name, class_name, _, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Backend", "BackendContext", "backend_class", "backend_name"]
