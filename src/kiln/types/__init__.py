"""The inference protocol's data, independent of any wire format: requests, responses, tensors, metadata and
the one datatype table. No HTTP, no protobuf here."""

from kiln.types.datatypes import DataType
from kiln.types.protocol import (
    Cancellation,
    CorrelationId,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    OutputTensor,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "Cancellation",
    "CorrelationId",
    "DataType",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ModelMetadata",
    "OutputTensor",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
]
