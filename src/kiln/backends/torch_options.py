"""The PyTorch backend's config parameters, as Triton's PyTorch backend reads them, and torch's process-wide thread
pools (shared by every loaded PyTorch model, as in Triton)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kiln.backends.base import Backend
from kiln.config.schema import model_config_pb2
from kiln.errors import MissingDependencyError, ModelConfigError

log = logging.getLogger("kiln.backends.pytorch")

_BOOL_WORDS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}
_BOOLEANS = (
    "DISABLE_OPTIMIZED_EXECUTION",
    "INFERENCE_MODE",
    "ENABLE_JIT_EXECUTOR",
    "ENABLE_JIT_PROFILING",
    "ENABLE_TENSOR_FUSER",
    "ENABLE_WEIGHT_SHARING",
    "ENABLE_CACHE_CLEANING",
    "DISABLE_CUDNN",
    "ENABLE_NVFUSER",
)
_THREADS = {
    "intra": ("INTRA_OP_THREAD_COUNT", "intra_op_thread_count"),
    "inter": ("INTER_OP_THREAD_COUNT", "inter_op_thread_count"),
}
_KNOWN = {*_BOOLEANS, *(k for keys in _THREADS.values() for k in keys)}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("PyTorch", "torch") from None
    return torch


@dataclass(frozen=True)
class TorchOptions:
    """The config ``parameters`` this backend understands, parsed and checked."""

    optimized_execution: bool = True
    inference_mode: bool = True
    jit_executor: bool | None = None  # None: leave torch's setting alone
    jit_profiling: bool | None = None
    tensor_fuser: bool | None = None
    weight_sharing: bool = False
    cache_cleaning: bool = False
    cudnn: bool = True
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    ignored: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, config: model_config_pb2.ModelConfig) -> TorchOptions:
        where = f"model '{config.name}'"
        flags: dict[str, bool] = {}
        for key in _BOOLEANS:
            if key in config.parameters:
                raw = config.parameters[key].string_value.strip().lower()
                if raw not in _BOOL_WORDS:
                    raise ModelConfigError(
                        f"{where}: parameter '{key}' must be true or false, got "
                        f"'{config.parameters[key].string_value}'"
                    )
                flags[key] = _BOOL_WORDS[raw]
        if flags.get("ENABLE_NVFUSER"):
            raise ModelConfigError(
                f"{where}: ENABLE_NVFUSER is not available: PyTorch 2 removed NvFuser for TorchScript "
                f"(leave it out, or use ENABLE_TENSOR_FUSER)"
            )
        threads: dict[str, int | None] = {}
        for kind, keys in _THREADS.items():
            given = [k for k in keys if k in config.parameters]
            value: int | None = None
            for key in given:
                raw = config.parameters[key].string_value.strip()
                try:
                    number = int(raw)
                except ValueError:
                    raise ModelConfigError(
                        f"{where}: parameter '{key}' must be an integer, got '{raw}'"
                    ) from None
                if value is not None and number != value:
                    raise ModelConfigError(f"{where}: parameters {given} disagree ({value} vs {number})")
                value = number
            threads[kind] = value if value is not None and value > 0 else None
        return cls(
            optimized_execution=not flags.get("DISABLE_OPTIMIZED_EXECUTION", False),
            inference_mode=flags.get("INFERENCE_MODE", True),
            jit_executor=flags.get("ENABLE_JIT_EXECUTOR"),
            jit_profiling=flags.get("ENABLE_JIT_PROFILING"),
            tensor_fuser=flags.get("ENABLE_TENSOR_FUSER"),
            weight_sharing=flags.get("ENABLE_WEIGHT_SHARING", False),
            cache_cleaning=flags.get("ENABLE_CACHE_CLEANING", False),
            cudnn=not flags.get("DISABLE_CUDNN", False),
            intra_op_threads=threads["intra"],
            inter_op_threads=threads["inter"],
            ignored=tuple(sorted(k for k in config.parameters if k not in _KNOWN)),
        )


class ThreadPools:
    """torch's process-global thread pools: which loaded model fixed which size (Triton: the first one wins)."""

    lock = threading.Lock()
    owners: ClassVar[
        dict[str, tuple[int, set[int]]]
    ] = {}  # kind -> (value, ids of live backends that set it)

    @classmethod
    def claim(cls, torch: Any, backend: Backend, kind: str, value: int) -> None:
        with cls.lock:
            held = cls.owners.get(kind)
            if held is not None and held[1] and held[0] != value:
                log.warning(
                    "model '%s': %s-op threads stay at %d (torch's pool is process-wide and another loaded "
                    "PyTorch model set it); %d was asked for",
                    backend.config.name, kind, held[0], value,
                )  # fmt: skip
                return
            if kind == "intra":
                torch.set_num_threads(value)
            elif torch.get_num_interop_threads() != value:
                try:
                    torch.set_num_interop_threads(value)
                except RuntimeError:
                    log.warning(
                        "model '%s': inter-op threads stay at %d: torch sizes that pool once, before its first "
                        "use in this process; %d was asked for",
                        backend.config.name, torch.get_num_interop_threads(), value,
                    )  # fmt: skip
                    return
            users = held[1] if held is not None and held[0] == value else set()
            users.add(id(backend))
            cls.owners[kind] = (value, users)

    @classmethod
    def release(cls, backend: Backend) -> None:
        with cls.lock:
            for _value, users in cls.owners.values():
                users.discard(id(backend))
