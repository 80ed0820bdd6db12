"""``triton_python_backend_utils`` for models run by Kiln: Triton's Python-backend API, so ``model.py`` files
written for Triton import it as ``pb_utils`` and run unchanged.

Tensors are numpy arrays (BYTES as object arrays of ``bytes``, as Triton gives them). ``InferenceRequest.exec``
/ ``async_exec`` (BLS) reach any model Kiln serves through the core, with its batching and statistics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from kiln.backends.python.helpers import (
    _CONFIG_ENUMS,
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_MEMORY_GPU,
    Logger,
    MemoryType,
    PreferredMemory,
    _check_preferred_memory,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)
from kiln.backends.python.shared import TritonError, TritonModelException, state
from kiln.errors import KilnError
from kiln.tracing.context import run_in_trace
from kiln.types import InferRequest, InputTensor, RequestedOutput, datatypes

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_log = logging.getLogger("kiln.python_model")


class Tensor:
    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(data, np.ndarray):
            raise TritonModelException(
                f"tensor '{name}': data must be a numpy array, got {type(data).__name__}"
            )
        if data.dtype.kind in "US":
            data = np.array([x.encode() if isinstance(x, str) else bytes(x) for x in data.reshape(-1)],
                            dtype=np.object_).reshape(data.shape)  # fmt: skip
        self._name = name
        self._data = data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def triton_dtype(self) -> int:
        return _CONFIG_ENUMS[datatypes.from_numpy(self._data.dtype).config_name]

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._data.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._data.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._data.__dlpack_device__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        return Tensor(name, np.from_dlpack(capsule))


class InferenceResponse:
    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceRequest:
    """A request given to ``execute`` (built by Kiln), or one a model builds to call another model (BLS)."""

    def __init__(
        self,
        model_name: str = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        request_id: str = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        model_version: int = -1,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        # Triton's examples pass a BYTES input's element as the name: bytes are taken as UTF-8 text
        self._model_name = model_name.decode() if isinstance(model_name, bytes) else str(model_name)
        self._inputs = list(inputs or [])
        self._outputs = list(requested_output_names or [])
        self._id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._model_version = model_version
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})
        _check_preferred_memory(preferred_memory)
        self._sender: Any = None  # set by Kiln for requests given to execute
        self._trace = trace  # an InferenceTrace (request.trace()): this BLS call is traced as its child
        self._cancelled: Any = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = int(flags)

    def set_release_flags(self, flags: int) -> None:
        """TRITONSERVER_REQUEST_RELEASE_ALL is what every request gets anyway; rescheduling is refused."""
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException(
                "request rescheduling (TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) is not implemented in Kiln"
            )
        if flags != TRITONSERVER_REQUEST_RELEASE_ALL:
            raise TritonModelException(f"unknown request release flags {flags}")

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def model_name(self) -> str:
        return self._model_name

    def get_response_sender(self) -> Any:
        if self._sender is None:
            raise TritonModelException("only a request given to execute() has a response sender")
        return self._sender

    def is_cancelled(self) -> bool:
        return bool(self._cancelled and self._cancelled())

    def trace(self) -> InferenceTrace:
        """This request's trace, to pass as ``InferenceRequest(..., trace=request.trace())`` (Triton's way to
        trace a BLS call as a child of the request)."""
        return self._trace if isinstance(self._trace, InferenceTrace) else InferenceTrace(self._trace)

    # -- BLS ---------------------------------------------------------------------------------------------
    def _kiln_request(self) -> InferRequest:
        inputs = []
        for t in self._inputs:
            data = t.as_numpy()
            inputs.append(InputTensor(t.name(), datatypes.from_numpy(data.dtype), tuple(data.shape), data))
        request = InferRequest(
            self._model_name,
            "" if self._model_version in (-1, None) else str(self._model_version),
            self._id,
            inputs,
            [RequestedOutput(n) for n in self._outputs] or None,
            dict(self._parameters),
            correlation_id=self._correlation_id,
            sequence_start=bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START),
            sequence_end=bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END),
            timeout_us=self._timeout or None,
        )
        return request

    def exec(self, decoupled: bool = False) -> Any:
        caller = _caller()
        try:
            if decoupled:
                return ResponseIterator(_responses(caller.stream_sync(self._kiln_request())))
            return _response(run_in_trace(self._traced(), caller.infer_sync, self._kiln_request()))
        except KilnError as e:
            error = InferenceResponse(error=TritonError(e.message))
            return ResponseIterator(iter([error])) if decoupled else error

    async def async_exec(self, decoupled: bool = False) -> Any:
        caller = _caller()
        if decoupled:
            return await _async_responses(caller, self._kiln_request())
        try:
            server_loop = getattr(caller, "loop", None)
            if server_loop is not None:  # in the server process: await the core across the two event loops
                future = run_in_trace(
                    self._traced(),
                    asyncio.run_coroutine_threadsafe,
                    caller.infer(self._kiln_request()),
                    server_loop,
                )
                return _response(await asyncio.wrap_future(future))
            loop = asyncio.get_running_loop()  # in a worker process: the blocking call, off this loop
            return _response(await loop.run_in_executor(None, caller.infer_sync, self._kiln_request()))
        except KilnError as e:
            return InferenceResponse(error=TritonError(e.message))

    def _traced(self) -> Any:
        return self._trace._trace if isinstance(self._trace, InferenceTrace) else None


class InferenceTrace:
    """A request's trace handle (``request.trace()``); ``None`` inside when the request is not traced."""

    def __init__(self, trace: Any = None) -> None:
        self._trace = trace

    def get_context(self, mode: str = "opentelemetry") -> str | None:
        span = getattr(self._trace, "span", None)
        if span is None:
            return None
        context = span.get_span_context()
        return json.dumps({"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-01"})


def _caller() -> Any:
    caller = state["caller"]
    if caller is None:
        raise TritonModelException("BLS calls need a running Kiln server")
    return caller


def _response(response: Any) -> InferenceResponse:
    if response.error is not None:
        message = getattr(response.error, "message", str(response.error))
        return InferenceResponse(error=TritonError(message))
    return InferenceResponse(
        [Tensor(o.name, o.data) for o in response.outputs], parameters=response.parameters
    )


def _responses(stream: Iterator[Any]) -> Iterator[InferenceResponse]:
    try:
        for response in stream:
            yield _response(response)
    except KilnError as e:
        yield InferenceResponse(error=TritonError(e.message))


class ResponseIterator:
    """What ``exec(decoupled=True)`` returns: the callee's responses as they come; ``cancel()`` cancels the call
    (as a client that goes away does) and ends the iteration."""

    def __init__(self, responses: Iterator[InferenceResponse]) -> None:
        self._responses = responses

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        return next(self._responses)

    def cancel(self) -> None:
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()


class InferenceResponseSender:
    """Triton's name for the type ``request.get_response_sender()`` returns (``send``, ``is_cancelled``)."""


class _AsyncResponses(ResponseIterator):
    """What ``await async_exec(decoupled=True)`` returns, once the callee's first response is in (as Triton's):
    the responses as they come, with ``for`` (each next one waited for, as in Triton) or ``async for`` (waited
    for off this event loop); ``cancel()`` cancels the call."""

    def __init__(self, first: InferenceResponse | None, rest: Iterator[InferenceResponse]) -> None:
        super().__init__(rest)
        self._first = first

    def __next__(self) -> InferenceResponse:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return super().__next__()

    def __aiter__(self) -> AsyncIterator[InferenceResponse]:
        async def gen() -> AsyncIterator[InferenceResponse]:
            loop = asyncio.get_running_loop()
            while (item := await loop.run_in_executor(None, next, self, None)) is not None:
                yield item

        return gen()


async def _async_responses(caller: Any, request: InferRequest) -> _AsyncResponses:
    stream = _responses(caller.stream_sync(request))
    first = await asyncio.get_running_loop().run_in_executor(None, next, stream, None)
    return _AsyncResponses(first, stream)


# -- helpers Triton's module has -----------------------------------------------------------------------
def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in model_config.get("input", []) if e.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in model_config.get("output", []) if e.get("name") == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def _lifecycle(method: str, *args: Any) -> Any:
    caller = _caller()
    try:
        return getattr(caller, method)(*args)
    except KilnError as e:
        raise TritonModelException(e.message) from None


def load_model(model_name: str, config: str | None = None, files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model of the repository; the server must run with --model-control-mode explicit."""
    params: dict[str, Any] = {}
    if config is not None:
        params["config"] = config
    for path, content in (files or {}).items():
        params[path if path.startswith("file:") else f"file:{path}"] = content
    _lifecycle("load_sync", model_name, params)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    _lifecycle("unload_sync", model_name, {"unload_dependents": unload_dependents})


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    return bool(_lifecycle("ready_sync", model_name, model_version))


# The rest of Triton's module surface, kept in their own files.
from kiln.backends.python.autocomplete import ModelConfig  # noqa: E402
from kiln.backends.python.metrics import COUNTER, GAUGE, HISTOGRAM, Metric, MetricFamily, MetricKind  # noqa: E402

__all__ = [
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
    "TRITONSERVER_MEMORY_CPU",
    "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Logger",
    "MemoryType",
    "Metric",
    "MetricFamily",
    "MetricKind",
    "ModelConfig",
    "PreferredMemory",
    "ResponseIterator",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]
