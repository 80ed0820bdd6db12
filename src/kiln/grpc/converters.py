"""Conversions between Triton's gRPC protobuf messages and Kiln's protocol types."""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from kiln.errors import InvalidArgumentError
from kiln.stats import STAT_DURATIONS, Duration, ModelStats
from kiln.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    datatypes,
    tensors,
)

# datatype -> InferTensorContents field holding typed values (FP16 has none: raw contents only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def params_from_pb(params: Any) -> dict[str, Any]:
    out = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, kind) if kind else None
    return out


def params_to_pb(target: Any, params: dict[str, Any]) -> None:
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)


def infer_request_from_pb(pb: service_pb2.ModelInferRequest) -> InferRequest:
    request = InferRequest(pb.model_name, pb.model_version, pb.id, parameters=params_from_pb(pb.parameters))
    raw = pb.raw_input_contents
    # as Triton: raw_input_contents go, in order, to the inputs whose data is not in shared memory
    in_band = [t for t in pb.inputs if "shared_memory_region" not in t.parameters]
    if raw and len(raw) != len(in_band):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries for {len(in_band)} inputs not in shared memory; use raw "
            f"contents for all of them or for none"
        )
    if not pb.inputs:
        raise InvalidArgumentError("inference request has no inputs")
    contents = iter(raw)
    for tensor in pb.inputs:
        data = next(contents) if raw and "shared_memory_region" not in tensor.parameters else None
        request.inputs.append(_input_from_pb(tensor, data, pb.model_name))
    if pb.outputs:
        request.outputs = [_output_from_pb(o) for o in pb.outputs]
    return request


def _input_from_pb(pb: service_pb2.InferInputTensor, raw: bytes | None, model: str) -> InputTensor:
    name = pb.name
    dtype = datatypes.from_name(pb.datatype)
    shape = tensors.check_shape(name, list(pb.shape))
    params = params_from_pb(pb.parameters)
    has_contents = pb.HasField("contents") and pb.contents.ByteSize() > 0
    if raw is not None:
        if has_contents:
            raise InvalidArgumentError(f"input '{name}' has both typed contents and raw_input_contents")
        return InputTensor(name, dtype, shape, tensors.from_raw(name, dtype, shape, raw, model), params)
    if "shared_memory_region" in params:
        return InputTensor(name, dtype, shape, np.empty(0), params)
    field = CONTENTS_FIELD.get(dtype.name)
    if field is None:
        raise InvalidArgumentError(f"input '{name}': {dtype.name} data must be sent in raw_input_contents")
    data = tensors.from_values(name, dtype, shape, getattr(pb.contents, field))
    return InputTensor(name, dtype, shape, data, params)


def _output_from_pb(pb: service_pb2.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    params = params_from_pb(pb.parameters)
    classification = params.get("classification", 0) or 0
    if isinstance(classification, bool) or not isinstance(classification, int):
        raise InvalidArgumentError(f"output '{pb.name}': classification must be an integer")
    return RequestedOutput(pb.name, classification, params)


def infer_response_to_pb(response: InferResponse, final_flag: bool = False) -> service_pb2.ModelInferResponse:
    """``final_flag``: add Triton's ``triton_final_response`` parameter (streams that asked for empty finals)."""
    pb = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    params_to_pb(pb.parameters, response.parameters)
    if final_flag:
        pb.parameters["triton_final_response"].bool_param = response.final
    for out in response.outputs:
        pb.outputs.add(name=out.name, datatype=out.datatype.name, shape=list(out.shape))
        # an output written to shared memory keeps its place with empty contents, as Triton does
        pb.raw_output_contents.append(b"" if out.shared_memory else tensors.to_raw(out.datatype, out.data))
    return pb


def server_metadata_to_pb(md: ServerMetadata) -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(name=md.name, version=md.version, extensions=md.extensions)


def model_metadata_to_pb(md: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=md.name,
        versions=md.versions,
        platform=md.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in md.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in md.outputs],
    )


def statistics_to_pb(stats: list[ModelStats]) -> service_pb2.ModelStatisticsResponse:
    pb = service_pb2.ModelStatisticsResponse()
    for s in stats:
        entry = pb.model_stats.add(
            name=s.name,
            version=s.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        for name in STAT_DURATIONS:
            _duration(getattr(entry.inference_stats, name), getattr(s, name))
        for size, b in sorted(s.batches.items()):
            batch = entry.batch_stats.add(batch_size=size)
            _duration(batch.compute_input, b.compute_input)
            _duration(batch.compute_infer, b.compute_infer)
            _duration(batch.compute_output, b.compute_output)
    return pb


def _duration(target: Any, d: Duration) -> None:
    target.count = d.count
    target.ns = d.ns
