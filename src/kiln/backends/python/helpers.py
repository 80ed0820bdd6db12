"""Triton's ``triton_python_backend_utils`` helpers that need no server: datatype numbers and numpy types, the
length-prefixed BYTES encoding, preferred memory, and ``Logger``. :mod:`kiln.backends.python.pb_utils` exports them."""

from __future__ import annotations

import enum
import logging
from typing import Any

import numpy as np

from kiln.backends.python.shared import TritonModelException
from kiln.errors import KilnError
from kiln.types import datatypes, tensors

_log = logging.getLogger("kiln.python_model")


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU, TRITONSERVER_MEMORY_CPU = (
    MemoryType.TRITONSERVER_MEMORY_GPU,
    MemoryType.TRITONSERVER_MEMORY_CPU,
)


class PreferredMemory:
    """Where a BLS call's outputs should live. Kiln's Python backend keeps every tensor in CPU memory: a GPU
    preference is accepted (the model may run on a GPU machine under Triton) and warned about once; the outputs
    come back as numpy arrays (``Tensor.is_cpu()`` is True)."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = MemoryType(preferred_memory_type)
        self.preferred_device_id = int(preferred_device_id)


_warned_gpu_memory = False


def _check_preferred_memory(preferred: Any) -> None:
    global _warned_gpu_memory
    if preferred is None:
        return
    if not isinstance(preferred, PreferredMemory):
        raise TritonModelException(
            f"preferred_memory must be a pb_utils.PreferredMemory, got {type(preferred).__name__}"
        )
    if preferred.preferred_memory_type is MemoryType.TRITONSERVER_MEMORY_GPU and not _warned_gpu_memory:
        _warned_gpu_memory = True
        _log.warning(
            "PreferredMemory(TRITONSERVER_MEMORY_GPU): Kiln's Python backend returns BLS outputs in CPU memory"
        )


def triton_string_to_numpy(triton_type_string: str) -> Any:
    dtype = datatypes.BY_CONFIG_NAME[triton_type_string].numpy
    return np.object_ if dtype == np.dtype(np.object_) else dtype.type


def triton_to_numpy_type(data_type: int) -> Any:
    """A ModelConfig DataType number (TYPE_FP32 = 11, ...) -> the numpy type; None for an unknown number."""
    name = _CONFIG_NAMES.get(data_type)
    return None if name is None else triton_string_to_numpy(name)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """A numpy type or dtype -> its ModelConfig DataType number; None for one Triton has no type for."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind == "S":
        dtype = np.dtype(np.object_)
    try:
        return _CONFIG_ENUMS[datatypes.from_numpy(dtype).config_name]
    except (KilnError, KeyError):
        return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    """A BYTES tensor (object or ``np.bytes_`` array) -> its elements as 4-byte-length-prefixed bytes, in C order
    (str elements UTF-8 encoded, others through str()); ``()`` for an empty array and None for any other dtype,
    as Triton's helper answers."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    return tensors.to_raw(_BYTES, input_tensor.astype(np.object_))


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """Length-prefixed bytes -> a 1-D object array of ``bytes``."""
    view = memoryview(encoded_tensor)
    count, pos = 0, 0
    while pos + 4 <= len(view):
        pos += 4 + int.from_bytes(view[pos : pos + 4], "little")
        count += 1
    try:
        return tensors.from_raw("encoded_tensor", _BYTES, (count,), view)
    except KilnError as e:
        raise TritonModelException(e.message) from None


_BYTES = datatypes.from_numpy(np.dtype(np.object_))

# ModelConfig's DataType numbers (fixed by Triton's schema; written out so a worker under another interpreter
# needs only numpy, not protobuf)
_CONFIG_ENUMS = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4, "TYPE_UINT64": 5, "TYPE_INT8": 6,
    "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11, "TYPE_FP64": 12,
    "TYPE_STRING": 13,
}  # fmt: skip
_CONFIG_NAMES = {number: name for name, number in _CONFIG_ENUMS.items()}


class Logger:
    class LogLevel(enum.IntEnum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    INFO, WARNING, ERROR, VERBOSE = LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR, LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        {0: _log.info, 1: _log.warning, 2: _log.error}.get(level, _log.debug)(message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)
