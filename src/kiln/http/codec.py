"""KServe V2 JSON + Triton binary-tensor extension <-> protocol types; request/response compression."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kiln.errors import InvalidArgumentError
from kiln.lifecycle.state import IndexEntry
from kiln.stats import STAT_DURATIONS, Duration, ModelStats
from kiln.types import InferRequest, InferResponse, InputTensor, RequestedOutput, datatypes, tensors

HEADER_LENGTH = "inference-header-content-length"


def parse_json(body: bytes | memoryview, what: str = "request") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidArgumentError(
            f"failed to parse the request JSON buffer: malformed JSON in {what}: {e}"
        ) from None


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    return value


@dataclass(frozen=True)
class BinaryChoice:
    """HTTP-only: which outputs go back as binary data (the request's ``binary_data_output`` default, and each
    output's ``binary_data`` parameter)."""

    default: bool = False
    per_output: dict[str, bool] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        return self.per_output.get(name, self.default)


def decode_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> tuple[InferRequest, BinaryChoice]:
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise InvalidArgumentError(
                f"Inference-Header-Content-Length '{header_length}' is not an integer"
            ) from None
        if json_size < 0 or json_size > len(body):
            raise InvalidArgumentError(
                f"Inference-Header-Content-Length {json_size} does not fit a body of {len(body)} bytes"
            )
    else:
        json_size = len(body)
    view = memoryview(body)
    doc = _dict(parse_json(view[:json_size]), "inference request")
    binary = view[json_size:]
    request = InferRequest(model_name, model_version)
    request.id = _id(doc.get("id"))
    request.parameters = dict(_dict(doc.get("parameters"), "request 'parameters'"))
    binary_default = request.parameters.pop("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidArgumentError("request parameter 'binary_data_output' must be true or false")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgumentError("inference request needs a non-empty 'inputs' list")
    offset = 0
    for item in raw_inputs:
        tensor, used = _decode_input(_dict(item, "each input"), binary, offset, model_name)
        offset += used
        request.inputs.append(tensor)
    if offset != len(binary):
        raise InvalidArgumentError(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size values add up to {offset}"
        )
    raw_outputs = doc.get("outputs")
    per_output: dict[str, bool] = {}
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgumentError("'outputs' must be a list")
        request.outputs = [_decode_output(_dict(o, "each output"), per_output) for o in raw_outputs]
    return request, BinaryChoice(binary_default, per_output)


def _id(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgumentError("request 'id' must be a string")
    return value


def _decode_input(
    item: dict[str, Any], binary: memoryview, offset: int, model: str
) -> tuple[InputTensor, int]:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("every input needs a 'name' string")
    dtype_name = item.get("datatype")
    if not isinstance(dtype_name, str):
        raise InvalidArgumentError(f"input '{name}' needs a 'datatype' string")
    dtype = datatypes.from_name(dtype_name)
    shape_value = item.get("shape")
    if not isinstance(shape_value, list):
        raise InvalidArgumentError(f"input '{name}' needs a 'shape' list")
    shape = tensors.check_shape(name, shape_value)
    params = _dict(item.get("parameters"), f"input '{name}' parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgumentError(f"input '{name}': binary_data_size must be an integer >= 0")
        if "data" in item:
            raise InvalidArgumentError(f"input '{name}' has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise InvalidArgumentError(
                f"input '{name}': binary_data_size {size} runs past the end of the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        data = tensors.from_raw(name, dtype, shape, binary[offset : offset + size], model)
        return InputTensor(name, dtype, shape, data, params), size
    if "data" not in item:
        if "shared_memory_region" in params:
            return InputTensor(name, dtype, shape, _EMPTY, params), 0
        raise InvalidArgumentError(f"input '{name}' has neither 'data' nor binary_data_size")
    data = tensors.from_json(name, dtype, shape, item["data"])
    return InputTensor(name, dtype, shape, data, params), 0


def _decode_output(item: dict[str, Any], binary_choice: dict[str, bool]) -> RequestedOutput:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("every requested output needs a 'name' string")
    params = dict(_dict(item.get("parameters"), f"output '{name}' parameters"))
    classification = params.get("classification", 0)
    if isinstance(classification, bool) or not isinstance(classification, int):
        raise InvalidArgumentError(f"output '{name}': classification must be an integer")
    binary = params.pop("binary_data", None)
    if binary is not None:
        if not isinstance(binary, bool):
            raise InvalidArgumentError(f"output '{name}': binary_data must be true or false")
        binary_choice[name] = binary
    return RequestedOutput(name, classification, params)


def encode_infer_response(response: InferResponse, binary: BinaryChoice) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else None)."""
    outputs = []
    chunks: list[bytes | memoryview] = []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype.name, "shape": list(out.shape)}
        if out.shared_memory:
            pass  # written into the client's region: name, datatype and shape only, as Triton answers
        elif binary.binary(out.name):
            raw = tensors.raw_view(out.datatype, out.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json_list(out.datatype, out.data)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding gzip/deflate, refusing output past ``limit`` bytes (no decompression bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # "deflate" is zlib-wrapped per RFC 9110, but some clients send a raw deflate stream.
        zlib_header = len(body) >= 2 and (body[0] & 0x0F) == 8 and ((body[0] << 8) | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        raise InvalidArgumentError(f"unsupported Content-Encoding '{encoding}' (use gzip or deflate)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgumentError(f"request body is not valid {encoding} data: {e}") from None
    if len(out) > limit:
        raise InvalidArgumentError(f"decompressed request exceeds the limit of {limit} bytes")
    if not d.eof:
        raise InvalidArgumentError(f"request body is truncated {encoding} data")
    return out


def choose_encoding(accept_encoding: str | None) -> str | None:
    """Pick gzip or deflate from Accept-Encoding in the client's order (q=0 refused)."""
    if not accept_encoding:
        return None
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if token in ("gzip", "deflate") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return token
    return None


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6)
    return zlib.compress(body, 6)


_EMPTY = np.empty(0)


def statistics_to_json(stats: ModelStats) -> dict[str, Any]:
    """Triton's JSON shape for one ``model_stats`` entry."""
    inference = {name: _duration(getattr(stats, name)) for name in STAT_DURATIONS}
    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": inference,
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(b.compute_input),
                "compute_infer": _duration(b.compute_infer),
                "compute_output": _duration(b.compute_output),
            }
            for size, b in sorted(stats.batches.items())
        ],
        "memory_usage": [],
    }


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def index_row(row: IndexEntry) -> dict[str, Any]:
    """One repository-index row as Triton writes it, plus Kiln's ``composing_models`` (an ensemble's steps,
    a model's declared BLS targets) where there are any."""
    out: dict[str, Any] = {"name": row.name, "version": row.version, "state": row.state, "reason": row.reason}
    if row.composing:
        out["composing_models"] = list(row.composing)
    return out
