"""How request and response tensors change form between a client and a model: ``reshape`` targets with several
variable dimensions, and outputs converted to the config's datatype when nothing is lost."""

from __future__ import annotations

import numpy as np

from kiln.errors import KilnError
from kiln.types import datatypes
from kiln.types.datatypes import DataType


def reshape_target(shape: tuple[int, ...], dims: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """``target`` with its variable (-1) dimensions filled, in order, from the sizes ``shape`` has where ``dims``
    is variable — how Triton applies ``reshape`` when more than one dimension varies (numpy takes only one -1)."""
    if target.count(-1) <= 1:
        return target
    sizes = iter([size for size, d in zip(shape, dims, strict=False) if d == -1])
    filled = tuple(next(sizes, -1) if d == -1 else d for d in target)
    return filled if filled.count(-1) <= 1 else target


def same_kind(actual: np.dtype, expected: DataType) -> bool:
    """BYTES outputs may come as object, str or bytes arrays; everything else must match exactly."""
    return expected.name == "BYTES" and actual.kind in "OSU"


def lossless(array: np.ndarray, dtype: DataType) -> np.ndarray | None:
    """``array`` in the config's datatype when nothing is lost (int64 [0, 1] as INT32; float64 as FP32, which
    numpy rounds as Triton's own clients would), else None: a float can't become an integer, nor text a number."""
    target = dtype.numpy
    if dtype.name == "BYTES" or array.dtype.kind not in "biuf" or target.kind not in "biuf":
        return None
    if array.dtype.kind == "f" and target.kind != "f":
        return None
    converted = array.astype(target)
    if target.kind != "f" and not np.array_equal(converted, array):
        return None  # an integer or bool that does not fit
    return converted


def wire_name(dtype: np.dtype) -> str:
    try:
        return datatypes.from_numpy(dtype).name
    except KilnError:
        return str(dtype)
