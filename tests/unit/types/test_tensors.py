"""The wire-neutral tensor conversions (raw bytes, BYTES elements, JSON values), as units."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kiln.errors import InvalidArgumentError
from kiln.types import tensors
from kiln.types.datatypes import BY_NAME


@pytest.mark.parametrize("name", [n for n in BY_NAME if n != "BYTES"])
def test_raw_round_trip_every_numeric_type(name: str) -> None:
    dtype = BY_NAME[name]
    arr = (np.arange(6) % 2 == 0) if name == "BOOL" else np.arange(6).astype(dtype.numpy)
    arr = arr.reshape(2, 3)
    back = tensors.from_raw("x", dtype, (2, 3), tensors.to_raw(dtype, arr))
    np.testing.assert_array_equal(back, arr)


def test_bytes_round_trip_with_embedded_nul_and_empty() -> None:
    dtype = BY_NAME["BYTES"]
    arr = np.array([b"a\x00b", b"", "ü".encode()], dtype=object)
    raw = tensors.to_raw(dtype, arr)
    assert raw[:4] == struct.pack("<I", 3)
    assert list(tensors.from_raw("x", dtype, (3,), raw)) == list(arr)


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (struct.pack("<I", 10) + b"abc", (1,), "declares 10 bytes"),
        (struct.pack("<I", 1) + b"a" + b"\x01\x00\x00", (2,), "truncated"),
        (struct.pack("<I", 1) + b"ab", (1,), "unexpected bytes"),
        (b"", (2**40,), "needs 1099511627776 BYTES elements"),
    ],
)
def test_bytes_decoding_refuses_bad_lengths(raw: bytes, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tensors.from_raw("x", BY_NAME["BYTES"], shape, raw)


def test_absurd_shape_is_refused_without_allocating() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input byte size mismatch for input 'x'\. Expected 4"):
        tensors.from_raw("x", BY_NAME["FP32"], (2**40, 2**20), b"\x00" * 8)


def test_json_nested_and_flat_give_the_same_tensor() -> None:
    fp32 = BY_NAME["FP32"]
    nested = tensors.from_json("x", fp32, (2, 2), [[1, 2], [3, 4]])
    flat = tensors.from_json("x", fp32, (2, 2), [1, 2, 3, 4])
    np.testing.assert_array_equal(nested, flat)


def test_json_nesting_deeper_than_rank_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="nested deeper"):
        tensors.from_json("x", BY_NAME["FP32"], (1,), [[[[1]]]])


@pytest.mark.parametrize(
    ("dtype", "data", "message"),
    [("FP32", ["a"], "not valid FP32"), ("INT32", [1.5], "integers"), ("BOOL", [1], "true/false"),
     ("UINT8", [300], "does not fit"), ("FP32", [1, 2], "got 2 values")],
)  # fmt: skip
def test_json_values_are_checked(dtype: str, data: list[object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tensors.from_json("x", BY_NAME[dtype], (1,), data)
