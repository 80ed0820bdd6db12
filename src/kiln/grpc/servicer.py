"""The gRPC transport: Triton's ``inference.GRPCInferenceService``, thin methods over the core."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from kiln.core import Core
from kiln.errors import ErrorCode, InvalidArgumentError, KilnError, NotFoundError
from kiln.grpc import converters
from kiln.logsettings import access
from kiln.restricted import NO_RESTRICTIONS, Restrictions
from kiln.shm import refuse_cuda
from kiln.tracing.context import carrier_from, incoming

log = logging.getLogger(__name__)

STATUS = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def error_status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, KilnError):
        return STATUS[exc.code], exc.message
    log.exception("internal error while serving a gRPC request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal server error"


def _metadata(context: grpc.aio.ServicerContext) -> Callable[[str], str | None]:
    def lookup(key: str) -> str | None:
        for k, v in context.invocation_metadata() or ():
            if k.lower() == key:
                return v if isinstance(v, str) else v.decode("latin-1")
        return None

    return lookup


def guarded(api: str) -> Callable[[Method], Method]:
    """The one error mapping for unary methods (KilnError code -> gRPC status), and the API restriction."""

    def decorate(fn: Method) -> Method:
        @functools.wraps(fn)
        async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self.restrictions.check(api, _metadata(context))
                return await fn(self, request, context)
            except Exception as e:
                code, message = error_status(e)
            await context.abort(code, message)

        return wrapper

    return decorate


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: Core, restrictions: Restrictions = NO_RESTRICTIONS) -> None:
        self.core = core
        self.restrictions = restrictions

    @guarded("model-repository")
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelLoadResponse:
        await self.core.load_model(request.model_name, converters.params_from_pb(request.parameters))
        return service_pb2.RepositoryModelLoadResponse()

    @guarded("model-repository")
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> service_pb2.RepositoryModelUnloadResponse:
        await self.core.unload_model(request.model_name, converters.params_from_pb(request.parameters))
        return service_pb2.RepositoryModelUnloadResponse()

    @guarded("health")
    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.core.is_live())

    @guarded("health")
    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.core.is_ready())

    @guarded("health")
    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        ready = await self.core.model_ready_checked(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=ready)

    @guarded("metadata")
    async def ServerMetadata(self, request: Any, context: Any) -> service_pb2.ServerMetadataResponse:
        return converters.server_metadata_to_pb(self.core.server_metadata())

    @guarded("metadata")
    async def ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        return converters.model_metadata_to_pb(self.core.model_metadata(request.name, request.version))

    @guarded("model-config")
    async def ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        return service_pb2.ModelConfigResponse(config=self.core.model_config(request.name, request.version))

    @guarded("inference")
    async def ModelInfer(self, request: Any, context: Any) -> service_pb2.ModelInferResponse:
        started = time.perf_counter_ns()
        status = "OK"
        try:
            with incoming(self._trace_context(context)):
                return await self._infer(request)
        except Exception as e:
            status = error_status(e)[0].name
            raise
        finally:
            access("gRPC", request.model_name, request.model_version, status, time.perf_counter_ns() - started,
                   context.peer())  # fmt: skip

    def _trace_context(self, context: Any) -> dict[str, str] | None:
        """The caller's W3C trace context from the metadata (OpenTelemetry tracing only)."""
        tracing = self.core.tracing
        return carrier_from(_metadata(context)) if tracing is not None and tracing.propagates else None

    async def _infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        response = await self.core.infer(converters.infer_request_from_pb(request))
        return converters.infer_response_to_pb(response)

    @guarded("statistics")
    async def ModelStatistics(self, request: Any, context: Any) -> service_pb2.ModelStatisticsResponse:
        return converters.statistics_to_pb(self.core.statistics(request.name, request.version))

    @guarded("logging")
    async def LogSettings(self, request: Any, context: Any) -> Any:
        changes: dict[str, object] = {}
        for key, value in request.settings.items():
            kind = value.WhichOneof("parameter_choice")
            if kind is None:
                raise InvalidArgumentError(f"log setting '{key}' has no value")
            changes[key] = getattr(value, kind)
        settings = self.core.log_settings(changes or None)
        response = service_pb2.LogSettingsResponse()
        for key, value in settings.items():
            slot = response.settings[key]
            if isinstance(value, bool):
                slot.bool_param = value
            elif isinstance(value, int):
                slot.uint32_param = value
            else:
                slot.string_param = str(value)
        return response

    @guarded("trace")
    async def TraceSetting(self, request: Any, context: Any) -> service_pb2.TraceSettingResponse:
        changes: dict[str, object] = {}
        for key, setting in request.settings.items():
            values = list(setting.value)
            # tritonclient sends a cleared setting without values, the level as a list, the others as one string
            if key == "trace_level" or not values:
                changes[key] = values or None
            elif len(values) == 1:
                changes[key] = values[0]
            else:
                raise InvalidArgumentError(f"trace setting '{key}' takes one value, got {len(values)}")
        settings = self.core.trace_settings(request.model_name, changes or None)
        response = service_pb2.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [str(value)])
        return response

    # -- the shared memory extension (system; CUDA only where there is a GPU) -----------------------------
    @guarded("shared-memory")
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        status = service_pb2.SystemSharedMemoryStatusResponse
        regions = self.core.shared_memory.status(request.name)
        return status(
            regions={
                r.name: status.RegionStatus(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
                for r in regions
            }
        )

    @guarded("shared-memory")
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        self.core.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @guarded("shared-memory")
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        self.core.shared_memory.unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    @guarded("shared-memory")
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        if request.name:
            raise NotFoundError(f"Unable to find cuda shared memory region: '{request.name}'")
        return service_pb2.CudaSharedMemoryStatusResponse()  # none: no GPU

    @guarded("shared-memory")
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        refuse_cuda()

    @guarded("shared-memory")
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return service_pb2.CudaSharedMemoryUnregisterResponse()  # nothing registered: nothing to do

    @guarded("model-repository")
    async def RepositoryIndex(self, request: Any, context: Any) -> service_pb2.RepositoryIndexResponse:
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        rows = self.core.index(ready_only=request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[entry(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; every response (several per request for a decoupled model)
        or error is sent as it is produced. ``triton_enable_empty_final_response`` in a request: its responses
        carry ``triton_final_response``, and a final flag sent without a response becomes an empty response."""
        try:
            self.restrictions.check("inference", _metadata(context))
        except KilnError as e:
            code, message = error_status(e)
            await context.abort(code, message)
        queue: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        trace_context = self._trace_context(context)  # the stream's requests are traced as its children

        async def handle(request: service_pb2.ModelInferRequest) -> None:
            empty_final = False
            try:
                infer_request = converters.infer_request_from_pb(request)
                empty_final = _take_bool(infer_request.parameters, "triton_enable_empty_final_response")
                async for response in self.core.stream(infer_request):
                    if response.error is not None:
                        await queue.put(_error_reply(request, response.error))
                        continue
                    if not response.outputs and response.final and not empty_final:
                        continue  # a bare final flag: Triton sends nothing unless asked to
                    pb = converters.infer_response_to_pb(response, empty_final)
                    await queue.put(service_pb2.ModelStreamInferResponse(infer_response=pb))
            except Exception as e:
                await queue.put(_error_reply(request, e))

        async def read() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    tasks.add(asyncio.create_task(handle(request)))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await queue.put(None)

        with incoming(trace_context):
            reader = asyncio.create_task(read())
        try:
            while (reply := await queue.get()) is not None:
                yield reply
        finally:
            reader.cancel()


def _error_reply(request: service_pb2.ModelInferRequest, error: BaseException) -> Any:
    _, message = error_status(error if isinstance(error, Exception) else Exception(str(error)))
    reply = service_pb2.ModelStreamInferResponse(error_message=message)
    reply.infer_response.id = request.id
    reply.infer_response.model_name = request.model_name
    return reply


def _take_bool(params: dict[str, Any], key: str) -> bool:
    value = params.pop(key, False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"request parameter '{key}' must be true or false")
    return value
