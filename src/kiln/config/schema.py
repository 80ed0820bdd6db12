"""Triton's ``ModelConfig`` schema: the one place Kiln gets it from.

The protobuf module is the one that ships in the pinned ``tritonclient`` wheel, loaded here *by file* so that
importing the core, the scheduler or a backend does not import ``tritonclient.grpc`` (and with it ``grpc``).
Both loads register the same serialized file in protobuf's default pool, so the classes are one and the same:
a ``ModelConfig`` made here is the one ``service_pb2.ModelConfigResponse`` carries.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    name = "kiln.config._model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("tritonclient")
    if package is None or not package.submodule_search_locations:
        raise ImportError("tritonclient is not installed; Kiln takes Triton's ModelConfig schema from it")
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Triton's model config schema from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _load()
ModelConfig = model_config_pb2.ModelConfig

__all__ = ["ModelConfig", "model_config_pb2"]
