"""The wire-neutral tensor codec and the HTTP binary-tensor extension, as units."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from kiln.errors import InvalidArgumentError
from kiln.http import codec
from kiln.types import InferResponse, OutputTensor, tensors
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
    with pytest.raises(InvalidArgumentError, match="needs"):
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


def _binary_request(header: dict[str, object], *chunks: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), str(len(head))


def test_binary_request_decodes_inputs_in_order() -> None:
    a = np.arange(4, dtype=np.float32)
    b = np.array([7, 8], dtype=np.int64)
    body, length = _binary_request(
        {"id": "r1", "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        ], "outputs": [{"name": "y", "parameters": {"binary_data": True, "classification": 2}}]},
        a.tobytes(), b.tobytes(),
    )  # fmt: skip
    req, binary = codec.decode_infer_request(body, length, "m", "")
    assert req.id == "r1"
    np.testing.assert_array_equal(req.inputs[0].data, a)
    np.testing.assert_array_equal(req.inputs[1].data, b)
    assert req.outputs is not None and req.outputs[0].classification == 2
    # the HTTP-only switch stays in the HTTP codec, not on the protocol types
    assert binary.binary("y") and not binary.binary("z") and "binary_data" not in req.outputs[0].parameters


@pytest.mark.parametrize("extra", [b"", b"\x00" * 8])
def test_binary_sizes_must_add_up(extra: bytes) -> None:
    size = 16 if extra else 12  # honest size + trailing bytes, or a size too small for the shape
    inputs = [{"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": size}}]
    body, length = _binary_request({"inputs": inputs}, b"\x00" * size + extra)
    if extra:
        with pytest.raises(InvalidArgumentError, match="add up"):
            codec.decode_infer_request(body, length, "m", "")
    else:
        with pytest.raises(InvalidArgumentError, match="needs 16 bytes"):
            codec.decode_infer_request(body, length, "m", "")


def test_binary_response_layout() -> None:
    out = np.arange(3, dtype=np.int32)
    resp = InferResponse("m", "1", "", [
        OutputTensor("bin", BY_NAME["INT32"], (3,), out),
        OutputTensor("json", BY_NAME["INT32"], (3,), out),
    ])  # fmt: skip
    body, header_len = codec.encode_infer_response(resp, codec.BinaryChoice(False, {"bin": True}))
    assert header_len is not None
    header = orjson.loads(body[:header_len])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert header["outputs"][1]["data"] == [0, 1, 2]
    assert body[header_len:] == out.tobytes()


def raw_deflate(data: bytes) -> bytes:
    """A bare deflate stream (no zlib header), as some clients send for Content-Encoding: deflate."""
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)]
)
def test_decompress(encoding: str, pack: Callable[[bytes], bytes]) -> None:
    data = b"x" * 1000
    assert codec.decompress(pack(data), encoding, 10_000) == data


def test_decompression_bomb_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="exceeds the limit"):
        codec.decompress(gzip.compress(b"\x00" * 1_000_000), "gzip", 1000)


def test_accept_encoding_choice() -> None:
    assert codec.choose_encoding("gzip") == "gzip"
    assert codec.choose_encoding("br, deflate;q=0.5, gzip") == "deflate"
    assert codec.choose_encoding("gzip;q=0") is None
    assert codec.choose_encoding(None) is None
