"""Wire-neutral tensor decoding and encoding shared by the HTTP codec and the gRPC converters.

Every decoder checks sizes *before* allocating: a request declaring an absurd shape is refused by comparing
its element count with the bytes or values it really carries.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from kiln.errors import InvalidArgumentError
from kiln.types.datatypes import DataType

MAX_RANK = 32  # far beyond any model; bounds nesting depth and shape arithmetic


def check_shape(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """Validate a request shape (non-negative ints, bounded rank) and return it as a tuple."""
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(f"input '{name}': rank {len(shape)} exceeds the maximum of {MAX_RANK}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0:
            raise InvalidArgumentError(f"input '{name}': invalid shape {list(shape)}, dims must be ints >= 0")
        out.append(int(d))
    return tuple(out)


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def from_raw(
    name: str, dtype: DataType, shape: tuple[int, ...], raw: bytes | memoryview, model: str = ""
) -> np.ndarray:
    """Decode binary tensor data (Triton binary extension / gRPC raw contents)."""
    count = element_count(shape)
    if dtype.name == "BYTES":
        return _bytes_from_raw(name, shape, count, raw)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgumentError(byte_size_mismatch(name, model, expected, len(raw), shape, dtype))
    return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)


def byte_size_mismatch(
    name: str, model: str, expected: int, got: int, shape: tuple[int, ...], dtype: DataType
) -> str:
    """Triton's message (its clients and tests match on it), then what the shape needs."""
    for_model = f" for model '{model}'" if model else ""
    return (
        f"input byte size mismatch for input '{name}'{for_model}. Expected {expected}, got {got} "
        f"(shape {list(shape)} of {dtype.name})"
    )


def _bytes_from_raw(name: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview) -> np.ndarray:
    # Each element: 4-byte little-endian length, then that many bytes. Every element costs >= 4 bytes,
    # so a count larger than len(raw) // 4 cannot be honest: refuse before allocating.
    view = memoryview(raw)
    if count > len(view) // 4 + (1 if count == 0 else 0):
        raise InvalidArgumentError(
            f"input '{name}': shape {list(shape)} needs {count} BYTES elements but only {len(view)} bytes given"
        )
    items: list[bytes] = []
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidArgumentError(f"input '{name}': BYTES element {i} is truncated (no length prefix)")
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidArgumentError(
                f"input '{name}': BYTES element {i} declares {size} bytes but only {len(view) - pos} remain"
            )
        items.append(bytes(view[pos : pos + size]))
        pos += size
    if pos != len(view):
        raise InvalidArgumentError(
            f"input '{name}': {len(view) - pos} unexpected bytes after the {count} BYTES elements"
        )
    arr = np.empty(count, dtype=np.object_)
    arr[:] = items
    return arr.reshape(shape)


def to_raw(dtype: DataType, array: np.ndarray) -> bytes:
    """Encode a tensor as binary data (the inverse of :func:`from_raw`)."""
    raw = raw_view(dtype, array)
    return raw if isinstance(raw, bytes) else raw.tobytes()


def raw_view(dtype: DataType, array: np.ndarray) -> bytes | memoryview:
    """Binary data of a tensor without a copy where the array is already contiguous (joined into a body once)."""
    if dtype.name != "BYTES":
        contiguous = np.ascontiguousarray(array, dtype=dtype.numpy)
        return memoryview(contiguous).cast("B") if contiguous.size else b""
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def flatten_json(name: str, data: Any, max_depth: int) -> list[Any]:
    """Flatten JSON ``data`` (flat or nested lists) without recursion, refusing nesting deeper than the rank."""
    if not isinstance(data, list):
        return [data]
    if list not in set(map(type, data)):  # already flat (checked in C, not per element in Python)
        return data
    out: list[Any] = []
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 1)]
    while stack:
        seq, idx, depth = stack.pop()
        if depth > max_depth:
            raise InvalidArgumentError(f"input '{name}': data is nested deeper than the tensor's rank")
        for j in range(idx, len(seq)):
            item = seq[j]
            if isinstance(item, list):
                stack.append((seq, j + 1, depth))
                stack.append((item, 0, depth + 1))
                break
            out.append(item)
    return out


def from_json(name: str, dtype: DataType, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Decode the JSON ``data`` of a tensor into an array of ``shape``."""
    flat = flatten_json(name, data, max(1, len(shape)))
    if dtype.name != "BYTES":
        kinds = set(
            map(type, flat)
        )  # one pass in C: the checks below look at the kinds of value, not each value
        if not kinds <= _NUMBER_KINDS:
            bad = next(x for x in flat if type(x) not in _NUMBER_KINDS)
            raise InvalidArgumentError(f"input '{name}': value {bad!r} is not valid {dtype.name} data")
        if dtype.name == "BOOL" and kinds - {bool}:
            raise InvalidArgumentError(f"input '{name}': BOOL data must be true/false")
        if dtype.numpy.kind in "iu" and float in kinds:
            raise InvalidArgumentError(f"input '{name}': {dtype.name} data must be integers")
    return from_values(name, dtype, shape, flat)


_NUMBER_KINDS = frozenset({int, float, bool})


def from_values(name: str, dtype: DataType, shape: tuple[int, ...], values: Sequence[Any]) -> np.ndarray:
    """A tensor from a flat sequence of typed values (JSON data, gRPC typed contents): count and range checked."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input '{name}': got {len(values)} values but shape {list(shape)} needs {count}"
        )
    if dtype.name == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        try:
            arr[:] = [x.encode("utf-8") if isinstance(x, str) else _bytes_value(x) for x in values]
        except TypeError as e:
            raise InvalidArgumentError(f"input '{name}': {e}") from None
        return arr.reshape(shape)
    if dtype.numpy.kind in "iu" and count:
        info = np.iinfo(dtype.numpy)
        if min(values) < info.min or max(values) > info.max:
            raise InvalidArgumentError(
                f"input '{name}': data does not fit {dtype.name} (range {info.min}..{info.max})"
            )
    try:
        return np.asarray(values, dtype=dtype.numpy).reshape(shape)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"input '{name}': data does not fit {dtype.name}: {e}") from None


def _bytes_value(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, bool | int | float):
        return str(x).encode("utf-8")
    raise TypeError(f"BYTES data must be strings, got {type(x).__name__}")


def to_json_list(dtype: DataType, array: np.ndarray) -> list[Any]:
    """Flat JSON-ready list of a tensor's values (BYTES as UTF-8 strings where they decode)."""
    flat = array.reshape(-1)
    if dtype.name == "BYTES":
        return [_decode_text(x) for x in flat]
    if dtype.name == "FP16":
        return flat.astype(np.float32).tolist()
    return flat.tolist()


def _decode_text(x: Any) -> Any:
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return x.decode("latin-1")
    return x if isinstance(x, str) else str(x)
