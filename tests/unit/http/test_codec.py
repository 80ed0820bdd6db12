"""The HTTP codec: the binary-tensor extension, compression and Accept-Encoding, as units."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from kiln.errors import InvalidArgumentError
from kiln.http import codec
from kiln.types import InferResponse, OutputTensor
from kiln.types.datatypes import BY_NAME


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
        with pytest.raises(InvalidArgumentError, match="input byte size mismatch for input"):
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
