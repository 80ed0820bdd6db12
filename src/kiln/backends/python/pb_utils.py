"""``triton_python_backend_utils`` for models run by Kiln: Triton's Python-backend API, so ``model.py`` files
written for Triton import it as ``pb_utils`` and run unchanged.

Tensors are numpy arrays (BYTES as object arrays of ``bytes``, as Triton gives them). ``InferenceRequest.exec``
/ ``async_exec`` (BLS) reach any model Kiln serves through the core, with its batching and statistics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.types import InferRequest, InputTensor, RequestedOutput, datatypes

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_log = logging.getLogger("kiln.python_model")
_state: dict[str, Any] = {"caller": None}  # the injected model caller, set when a Python model loads


class TritonError(Exception):
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


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
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._outputs = list(requested_output_names or [])
        self._id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._model_version = model_version
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})
        self._sender: Any = None  # set by Kiln for requests given to execute
        self._cancelled: Any = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

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
                return _responses(caller.stream_sync(self._kiln_request()))
            return _response(caller.infer_sync(self._kiln_request()))
        except KilnError as e:
            error = InferenceResponse(error=TritonError(e.message))
            return iter([error]) if decoupled else error

    async def async_exec(self, decoupled: bool = False) -> Any:
        caller = _caller()
        if decoupled:
            return _async_responses(caller, self._kiln_request())
        try:
            server_loop = getattr(caller, "loop", None)
            if server_loop is not None:  # in the server process: await the core across the two event loops
                future = asyncio.run_coroutine_threadsafe(caller.infer(self._kiln_request()), server_loop)
                return _response(await asyncio.wrap_future(future))
            loop = asyncio.get_running_loop()  # in a worker process: the blocking call, off this loop
            return _response(await loop.run_in_executor(None, caller.infer_sync, self._kiln_request()))
        except KilnError as e:
            return InferenceResponse(error=TritonError(e.message))


def _caller() -> Any:
    caller = _state["caller"]
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


async def _async_responses(caller: Any, request: InferRequest) -> AsyncIterator[InferenceResponse]:
    loop = asyncio.get_running_loop()
    for response in await loop.run_in_executor(None, lambda: list(_responses(caller.stream_sync(request)))):
        yield response


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


def triton_string_to_numpy(triton_type_string: str) -> Any:
    dtype = datatypes.BY_CONFIG_NAME[triton_type_string].numpy
    return np.object_ if dtype == np.dtype(np.object_) else dtype.type


# ModelConfig's DataType numbers (fixed by Triton's schema; written out so a worker under another interpreter
# needs only numpy, not protobuf)
_CONFIG_ENUMS = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4, "TYPE_UINT64": 5, "TYPE_INT8": 6,
    "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11, "TYPE_FP64": 12,
    "TYPE_STRING": 13,
}  # fmt: skip


class ModelConfig:
    """What ``auto_complete_config(auto_complete_model_config)`` gets: the config as Triton's JSON, and the calls
    that may fill it in (inputs, outputs, max_batch_size, dynamic batching, the transaction policy)."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def _where(self) -> str:
        return f"in auto-complete-config function for model '{self._config.get('name', '')}'"

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but {self._where()} specified "
                f"max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"configuration specified scheduling_choice as '{other}', but {self._where()} tries to set "
                    f"scheduling_choice as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, entry: dict[str, Any], allowed: tuple[str, ...]) -> None:
        name = entry.get("name")
        extra = [k for k in entry if k not in allowed]
        if extra:
            raise ValueError(
                f"{kind} '{name}' {self._where()} contains properties {extra}; allowed: {allowed}"
            )
        for required in ("name", "data_type", "dims"):
            if required not in entry:
                raise ValueError(f"{kind} '{name or ''}' {self._where()} is missing '{required}' property")
        for current in self._config[kind]:
            if current.get("name") != name:
                continue
            dtype = current.get("data_type", "TYPE_INVALID")
            if dtype not in ("TYPE_INVALID", entry["data_type"]):
                raise ValueError(
                    f"unable to load model '{self._config.get('name', '')}', configuration expects datatype "
                    f"{dtype} for {kind} '{name}', model provides {entry['data_type']}"
                )
            dims = [int(d) for d in current.get("dims", [])]
            if dims and dims != [int(d) for d in entry["dims"]]:
                raise ValueError(
                    f"model '{self._config.get('name', '')}', tensor '{name}': the model expects dims "
                    f"{list(entry['dims'])} but the model configuration specifies dims {dims}"
                )
            if "optional" in entry and "optional" in current and current["optional"] != entry["optional"]:
                raise ValueError(f"model '{self._config.get('name', '')}', tensor '{name}': optional differs")
            current.update(entry)
            return
        self._config[kind].append(dict(entry))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        extra = [k for k in transaction_policy_dict if k != "decoupled"]
        if extra:
            raise ValueError(
                f"model transaction property {self._where()} contains property other than 'decoupled'"
            )
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    f"trying to change decoupled property {self._where()}, which is already set to "
                    f"'{policy['decoupled']}'"
                )
            policy["decoupled"] = wanted


class Logger:
    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        {0: _log.info, 1: _log.warning, 2: _log.error}.get(level, _log.debug)(message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)


_current = threading.local()  # the model whose initialize/execute runs on this thread (metric labels)


class MetricFamily:
    """A custom metric family on Kiln's /metrics. Each ``Metric`` is one label set; ``model`` and ``version``
    labels are added from the model that creates it unless given."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        registry = _state.get("metrics")
        if registry is None:
            raise TritonModelException("custom metrics need a running Kiln server")
        try:
            self._family = registry.family(name, description, kind)
        except KilnError as e:
            raise TritonModelException(e.message) from None
        self.name, self.description, self.kind = name, description, kind

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        return Metric(self, labels, buckets)


class Metric:
    def __init__(
        self, family: MetricFamily, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> None:
        full = dict(labels or {})
        model = getattr(_current, "model", None)
        if model is not None:
            full.setdefault("model", model[0])
            full.setdefault("version", model[1])
        try:
            self._metric = family._family.metric(full, buckets)
        except KilnError as e:
            raise TritonModelException(e.message) from None
        self._family = family._family

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except KilnError as e:
            raise TritonModelException(e.message) from None

    def increment(self, value: float) -> None:
        self._do(self._metric.increment, value)

    def set(self, value: float) -> None:
        self._do(self._metric.set, value)

    def observe(self, value: float) -> None:
        self._do(self._metric.observe, value)

    def value(self) -> float:
        return self._metric.value()

    def __del__(self) -> None:  # Triton removes a metric when its object goes away
        family = getattr(self, "_family", None)
        if family is not None:
            family.remove(self._metric)


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
