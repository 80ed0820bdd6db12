"""What travels between the server and a Python model's worker process: pickled messages on a socket pair,
with tensors of at least ``SHM_THRESHOLD`` bytes in shared-memory blocks (written once by the sender, copied out
and unlinked by the receiver) instead of through the socket. Needs only numpy and the standard library."""

from __future__ import annotations

import dataclasses
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from kiln import errors
from kiln.types import InferRequest, InferResponse, InputTensor, OutputTensor, RequestedOutput, datatypes

SHM_THRESHOLD = 64 * 1024


def pack_array(array: np.ndarray) -> tuple[Any, ...]:
    if array.dtype.kind == "O" or array.nbytes < SHM_THRESHOLD:
        return ("inline", array)
    contiguous = np.ascontiguousarray(array)
    block = shared_memory.SharedMemory(create=True, size=contiguous.nbytes)
    # the receiver unlinks the block: this process must not track (and later "clean up") it
    resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    np.ndarray(contiguous.shape, contiguous.dtype, buffer=block.buf)[...] = contiguous
    name = block.name
    block.close()
    return ("shm", name, contiguous.dtype.str, contiguous.shape)


def unpack_array(packed: tuple[Any, ...]) -> np.ndarray:
    if packed[0] == "inline":
        return packed[1]
    _, name, dtype, shape = packed
    block = shared_memory.SharedMemory(name=name)
    try:
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        return np.ndarray(shape, np.dtype(dtype), buffer=block.buf).copy()
    finally:
        block.close()
        block.unlink()


def discard_array(packed: tuple[Any, ...]) -> None:
    """Free a packed tensor that will never be unpacked (its request went away)."""
    if packed[0] == "shm":
        try:
            block = shared_memory.SharedMemory(name=packed[1])
            resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
            block.close()
            block.unlink()
        except FileNotFoundError:
            pass


def pack_arrays(arrays: dict[str, np.ndarray] | Any) -> dict[str, tuple[Any, ...]]:
    return {name: pack_array(np.asarray(a)) for name, a in arrays.items()}


def unpack_arrays(packed: dict[str, tuple[Any, ...]]) -> dict[str, np.ndarray]:
    return {name: unpack_array(p) for name, p in packed.items()}


def pack_error(error: BaseException) -> tuple[str, str]:
    if isinstance(error, errors.KilnError):
        return (error.code.value, error.message)
    return (errors.ErrorCode.INTERNAL.value, f"{type(error).__name__}: {error}")


def unpack_error(packed: tuple[str, str]) -> errors.KilnError:
    code, message = packed
    return errors.error_class(errors.ErrorCode(code))(message)


def pack_request(request: InferRequest, feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The identity and inputs of a request (for BLS calls from a worker, and requests sent to it); ``feeds``:
    send these arrays (the model-shaped inputs) instead of the request's own tensors."""
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    fields.pop("cancellation")
    if feeds is None:
        fields["inputs"] = [(t.name, t.datatype.name, t.shape, pack_array(t.data)) for t in request.inputs]
    else:
        wire = {t.name: t.datatype.name for t in request.inputs}
        fields["inputs"] = [
            (name, wire.get(name) or datatypes.from_numpy(a.dtype).name, a.shape, pack_array(a))
            for name, a in feeds.items()
        ]
    fields["outputs"] = (
        None if request.outputs is None else [(o.name, o.classification) for o in request.outputs]
    )
    return fields


def unpack_request(fields: dict[str, Any]) -> InferRequest:
    fields = dict(fields)
    inputs = [
        InputTensor(name, datatypes.BY_NAME[dtype], tuple(shape), unpack_array(data))
        for name, dtype, shape, data in fields.pop("inputs")
    ]
    outputs = fields.pop("outputs")
    request = InferRequest(**fields)
    request.inputs = inputs
    request.outputs = None if outputs is None else [RequestedOutput(n, c) for n, c in outputs]
    return request


def pack_response(response: InferResponse) -> dict[str, Any]:
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [(o.name, o.datatype.name, o.shape, pack_array(o.data)) for o in response.outputs],
        "parameters": response.parameters,
        "final": response.final,
        "error": None if response.error is None else pack_error(response.error),
    }


def unpack_response(fields: dict[str, Any]) -> InferResponse:
    outputs = [
        OutputTensor(name, datatypes.BY_NAME[dtype], tuple(shape), unpack_array(data))
        for name, dtype, shape, data in fields["outputs"]
    ]
    error = None if fields["error"] is None else unpack_error(fields["error"])
    return InferResponse(
        fields["model_name"], fields["model_version"], fields["id"], outputs, fields["parameters"],
        fields["final"], error,
    )  # fmt: skip
