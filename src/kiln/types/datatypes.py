"""The one table of tensor datatypes: KServe V2 names, Triton config enums, numpy and ONNX types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import InvalidArgumentError


@dataclass(frozen=True)
class DataType:
    name: str  # KServe V2 / Triton wire name, e.g. "FP32"
    config_name: str  # model_config.DataType enum name, e.g. "TYPE_FP32"
    numpy: np.dtype  # numpy dtype; object for BYTES
    onnx: str  # ONNX Runtime type string, e.g. "tensor(float)"

    @property
    def itemsize(self) -> int:
        """Bytes per element in raw (binary) form; 0 for the variable-length BYTES type."""
        return 0 if self.name == "BYTES" else self.numpy.itemsize


_TABLE = [
    DataType("BOOL", "TYPE_BOOL", np.dtype(np.bool_), "tensor(bool)"),
    DataType("UINT8", "TYPE_UINT8", np.dtype(np.uint8), "tensor(uint8)"),
    DataType("UINT16", "TYPE_UINT16", np.dtype(np.uint16), "tensor(uint16)"),
    DataType("UINT32", "TYPE_UINT32", np.dtype(np.uint32), "tensor(uint32)"),
    DataType("UINT64", "TYPE_UINT64", np.dtype(np.uint64), "tensor(uint64)"),
    DataType("INT8", "TYPE_INT8", np.dtype(np.int8), "tensor(int8)"),
    DataType("INT16", "TYPE_INT16", np.dtype(np.int16), "tensor(int16)"),
    DataType("INT32", "TYPE_INT32", np.dtype(np.int32), "tensor(int32)"),
    DataType("INT64", "TYPE_INT64", np.dtype(np.int64), "tensor(int64)"),
    DataType("FP16", "TYPE_FP16", np.dtype(np.float16), "tensor(float16)"),
    DataType("FP32", "TYPE_FP32", np.dtype(np.float32), "tensor(float)"),
    DataType("FP64", "TYPE_FP64", np.dtype(np.float64), "tensor(double)"),
    DataType("BYTES", "TYPE_STRING", np.dtype(np.object_), "tensor(string)"),
]

BY_NAME: dict[str, DataType] = {d.name: d for d in _TABLE}
BY_CONFIG_NAME: dict[str, DataType] = {d.config_name: d for d in _TABLE}
BY_ONNX: dict[str, DataType] = {d.onnx: d for d in _TABLE}
_BY_NUMPY: dict[np.dtype, DataType] = {d.numpy: d for d in _TABLE}


def from_name(name: str) -> DataType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unsupported datatype '{name}'; supported: {', '.join(BY_NAME)}"
        ) from None


def from_numpy(dtype: np.dtype) -> DataType:
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return BY_NAME["BYTES"]
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise InvalidArgumentError(f"numpy dtype {dtype} has no KServe datatype") from None
