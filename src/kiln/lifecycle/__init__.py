"""Model lifecycle: control modes, load / unload / reload with zero failed requests, polling, the index."""

from kiln.lifecycle.manager import ModelManager
from kiln.lifecycle.state import (
    ControlMode,
    IndexEntry,
    LifecycleOptions,
    ModelEntry,
    ModelState,
    VersionStatus,
)
from kiln.lifecycle.uploads import check_model_name, decode_file_overrides, safe_relative_path

__all__ = [
    "ControlMode",
    "IndexEntry",
    "LifecycleOptions",
    "ModelEntry",
    "ModelManager",
    "ModelState",
    "VersionStatus",
    "check_model_name",
    "decode_file_overrides",
    "safe_relative_path",
]
