"""The data plane: liveness, readiness, metadata, config, inference and model states.

The one home of serving logic: the HTTP and gRPC transports only decode, call a method here, and encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import kiln
from kiln.cache import CacheOptions, ResponseCache, cache_key
from kiln.calls import CoreCaller
from kiln.config.schema import model_config_pb2
from kiln.errors import (
    NotFoundError,
    UnavailableError,
    UnimplementedError,
)
from kiln.lifecycle import IndexEntry, LifecycleOptions, ModelEntry, ModelManager, ModelState, VersionStatus
from kiln.logsettings import LogControl
from kiln.model import Model, PreparedRequest
from kiln.repository import ModelRepository
from kiln.scheduling import Batch, ResponseSender, Scheduler, Work
from kiln.shm import SharedMemoryRegistry
from kiln.stats import ModelStats
from kiln.types import InferRequest, InferResponse, ModelMetadata, ServerMetadata
from kiln.types.parameters import bind_reserved_parameters

if TYPE_CHECKING:
    from kiln.tracing import TraceManager
    from kiln.tracing.trace import Trace

log = logging.getLogger(__name__)

EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "logging",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "sequence",
    "statistics",
    "system_shared_memory",
    "trace",
]


@dataclass(frozen=True)
class CoreOptions:
    cache: CacheOptions | None = None  # the response cache (--cache-config); None: no cache
    strict_readiness: bool = True
    server_name: str = "triton"  # Triton's clients check server metadata's name; Kiln's version stays Kiln's
    executor_threads: int = 32
    lifecycle: LifecycleOptions = field(default_factory=LifecycleOptions)


class Core:
    def __init__(self, repository: ModelRepository, options: CoreOptions | None = None) -> None:
        self.options = options or CoreOptions()
        self.executor = ThreadPoolExecutor(self.options.executor_threads, thread_name_prefix="kiln-exec")
        self.caller = CoreCaller(self)  # the infer callable handed to backends (BLS, ensembles)
        self.manager = ModelManager(repository, self.options.lifecycle, self.executor, self.caller)
        self.shared_memory = SharedMemoryRegistry()  # the system shared memory extension's regions
        self.cache = ResponseCache(self.options.cache) if self.options.cache is not None else None
        self.log_control: LogControl | None = None  # the logging extension (set by the server)
        self.tracing: TraceManager | None = None  # the trace extension (set by the server)
        self.tracer: TraceManager | None = None  # the same while a trace setting can sample: the one check
        self.live = True

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.caller.loop = asyncio.get_running_loop()
        await self.manager.start()

    def failed_models(self) -> list[ModelEntry]:
        return [e for e in self.manager.loaded() if e.state is not ModelState.READY]

    async def close(self) -> None:
        await self.manager.close()
        self.shared_memory.close()
        if self.tracing is not None:
            self.tracing.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        await self.manager.load(name, parameters)

    async def unload_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        await self.manager.unload(name, parameters)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.manager.index(ready_only)

    def log_settings(self, changes: Mapping[str, object] | None = None) -> dict[str, object]:
        """The logging extension: the settings, after applying ``changes`` when given."""
        if self.log_control is None:
            raise UnimplementedError("the logging extension needs a running server")
        return self.log_control.update(changes) if changes else self.log_control.as_dict()

    def trace_settings(
        self, model: str = "", changes: Mapping[str, object] | None = None
    ) -> dict[str, object]:
        """The trace extension: the global or one model's settings, after applying ``changes`` when given."""
        if self.tracing is None:
            raise UnimplementedError("the trace extension needs a running server")
        if model:
            self.manager.resolve(model, "")  # an unknown or unready model is an error
        return self.tracing.get(model) if changes is None else self.tracing.update(model, changes)

    # -- health and metadata -------------------------------------------------------------------------------
    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        if not self.live:
            return False
        if self.options.strict_readiness:
            return all(e.state is ModelState.READY for e in self.manager.loaded())
        return True

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(self.options.server_name, kiln.__version__, list(EXTENSIONS))

    def get_model(self, name: str, version: str = "") -> Model:
        return self.manager.resolve(name, version).model  # type: ignore[return-value]

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            status = self.manager.resolve(name, version)
        except (UnavailableError, NotFoundError):
            if name not in self.manager.models:
                raise
            return False
        return status.model is None or status.model.health() is None

    async def model_ready_checked(self, name: str, version: str = "") -> bool:
        """:meth:`model_ready`, and then the model's own readiness check (a Python model's ``is_ready()``): what
        the readiness endpoints answer."""
        if not self.model_ready(name, version):
            return False
        model = self.manager.resolve(name, version).model
        return model is None or await model.ready_check() is None

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.get_model(name, version)
        entry = self.manager.models[name]
        versions = [str(v) for v, s in sorted(entry.versions.items()) if s.state is ModelState.READY]
        return ModelMetadata(
            name,
            versions,
            model.backend.platform,
            model.metadata_tensors("input"),
            model.metadata_tensors("output"),
        )

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.get_model(name, version).config

    # -- inference -----------------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (HTTP, unary gRPC, BLS). A decoupled model is refused: it may answer with
        any number of responses, which only a stream can carry."""
        binding = self.shared_memory.bind(request)
        if binding is not None:
            try:
                response = await self._infer(request)
                binding.write(response)
                return response
            finally:
                binding.release()
        return await self._infer(request)

    async def _infer(self, request: InferRequest) -> InferResponse:
        admitted = self._admit(request, streaming=False)
        work = admitted.work
        key = None
        if admitted.model.response_cache and self.cache is not None:
            looked_up = time.perf_counter_ns()
            key = cache_key(request, str(admitted.model.version))
            cached = self.cache.get(key, request.id)
            lookup_ns = time.perf_counter_ns() - looked_up
            if cached is not None:
                admitted.release()
                admitted.stats.record_cache_hit(time.perf_counter_ns() - admitted.start_ns, lookup_ns)
                return cached
        try:
            await admitted.scheduler.submit(work)
            reply = await work.sender.result()
            returned_at = time.perf_counter_ns()
            if reply.error is not None:
                raise reply.error
            assert reply.outputs is not None
            response = admitted.model.respond(request, admitted.prepared, reply.outputs, reply.parameters)
        except BaseException as e:
            admitted.record_failure(e, cancel=isinstance(e, asyncio.CancelledError))
            raise
        finally:
            admitted.release()
        response.durations = admitted.record_success(returned_at)
        if key is not None and self.cache is not None:
            inserting = time.perf_counter_ns()
            self.cache.put(key, response)
            admitted.stats.cache_miss.add(lookup_ns + time.perf_counter_ns() - inserting)
        return response

    async def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Every response of one request as it is produced (gRPC ModelStreamInfer, decoupled BLS calls); the last
        has ``final`` set. A non-decoupled model yields exactly one response. A final flag sent alone (no
        outputs) comes as a response without outputs."""
        model = self.get_model(request.model_name, request.model_version)
        if not model.decoupled:
            yield await self.infer(request)
            return
        binding = self.shared_memory.bind(request)
        try:
            async for response in self._stream(request):
                if binding is not None:
                    binding.write(response)  # each response overwrites the region, as in Triton
                yield response
        finally:
            if binding is not None:
                binding.release()

    async def _stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        admitted = self._admit(request, streaming=True)
        model, work, prepared = admitted.model, admitted.work, admitted.prepared
        submitted = asyncio.ensure_future(admitted.scheduler.submit(work))
        submitted.add_done_callback(lambda t: _fail_on_rejection(t, work))
        failed: BaseException | None = None
        first = admitted.stats.first_response  # time to the first response (histogram_latencies=true)
        try:
            while True:
                reply = await work.sender.next()
                if first is not None:
                    first.observe((time.perf_counter_ns() - admitted.start_ns) / 1e6)
                    first = None
                if reply.error is not None:
                    failed = reply.error
                    if reply.final:
                        raise reply.error
                    yield InferResponse(
                        model.name, str(model.version), request.id, [], final=False, error=failed
                    )
                    continue
                if reply.outputs is None:
                    yield InferResponse(
                        model.name, str(model.version), request.id, [], dict(reply.parameters)
                    )
                else:
                    response = model.respond(request, prepared, reply.outputs, reply.parameters, reply.final)
                    yield response
                if reply.final:
                    break
            await submitted
        except BaseException as e:
            admitted.record_failure(
                e, cancel=not work.sender.closed or isinstance(e, (asyncio.CancelledError, GeneratorExit))
            )
            raise
        finally:
            admitted.release()
        if failed is not None:
            admitted.record_failure(failed)
            return
        admitted.record_success(time.perf_counter_ns())

    def _admit(self, request: InferRequest, streaming: bool) -> _Admitted:
        """Resolve the model, check the request, and build its Work (counted as pending from here)."""
        start = time.perf_counter_ns()
        status = self.manager.resolve(request.model_name, request.model_version)
        model, stats = status.model, status.stats
        assert model is not None and stats is not None
        if model.decoupled and not streaming:
            raise UnimplementedError(
                f"this end point doesn't support models with decoupled transaction policy: model "
                f"'{model.name}' may send any number of responses per request, which a one-response endpoint "
                f"cannot carry; use gRPC ModelStreamInfer"
            )
        stats.pending += 1
        status.enter()
        try:
            bind_reserved_parameters(request)
            prepared = model.prepare(request)
        except BaseException as e:
            stats.pending -= 1
            status.leave()
            stats.record_failure(time.perf_counter_ns() - start, e)
            raise
        sender = ResponseSender(asyncio.get_running_loop(), decoupled=model.decoupled)
        work = Work(request, prepared.feeds, [o.name for o in prepared.outputs], prepared.batch_size, sender)
        assert status.scheduler is not None
        tracer = self.tracer
        trace = None if tracer is None else tracer.begin(request, model, work, start)
        return _Admitted(
            status, model, stats, status.scheduler, work, prepared, start, time.perf_counter_ns(), trace
        )

    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Every ready version, or one model (all its ready versions), or one version; typed: each transport
        renders them in its own format."""
        models = self.manager.models
        if name:
            if version:
                statuses = [self.manager.resolve(name, version)]
            else:
                self.manager.resolve(name, "")  # unknown / not ready -> error
                statuses = [s for s in models[name].versions.values() if s.stats is not None]
        else:
            statuses = [s for e in models.values() for s in e.versions.values() if s.stats is not None]
        return [s.stats for s in statuses if s.stats is not None]

    def all_stats(self) -> list[ModelStats]:
        return [
            s.stats for e in self.manager.models.values() for s in e.versions.values() if s.stats is not None
        ]


class _Admitted:
    """A checked request on its way through one model version."""

    __slots__ = (
        "model",
        "prepared",
        "prepared_ns",
        "scheduler",
        "start_ns",
        "stats",
        "status",
        "trace",
        "work",
    )

    def __init__(
        self,
        status: VersionStatus,
        model: Model,
        stats: ModelStats,
        scheduler: Scheduler,
        work: Work,
        prepared: PreparedRequest,
        start_ns: int,
        prepared_ns: int,  # when the request checks were done
        trace: Trace | None = None,  # set when the request is traced (kiln.tracing)
    ) -> None:
        self.status, self.model, self.stats, self.scheduler = status, model, stats, scheduler
        self.work, self.prepared, self.start_ns, self.prepared_ns = work, prepared, start_ns, prepared_ns
        self.trace = trace

    def record_failure(self, error: BaseException, cancel: bool = False) -> None:
        if cancel:
            self.work.request.cancellation.cancel()
        if self.trace is not None:
            self.trace.error = error
        self.stats.record_failure(time.perf_counter_ns() - self.start_ns, error)

    def release(self) -> None:
        self.stats.pending -= 1
        self.status.leave()
        if self.trace is not None:
            self.trace.end(self.start_ns, self.prepared_ns, self.work.timing)

    def record_success(self, returned_at: int) -> tuple[int, int, int, int]:
        """Triton's split: compute_input includes the checks before queueing, compute_output the response
        building after the backend returned. Returns the four durations (queue, input, infer, output)."""
        end = time.perf_counter_ns()
        b = self.work.timing or Batch(self.prepared.batch_size)
        durations = (
            b.queue_ns,
            self.prepared_ns - self.start_ns + b.input_ns,
            b.infer_ns,
            b.output_ns + end - returned_at,
        )
        self.stats.record_success(end - self.start_ns, *durations, self.prepared.batch_size)
        return durations


def _fail_on_rejection(task: asyncio.Task[None], work: Work) -> None:
    """A stream's scheduler refused or timed out its request before execution: end the stream with that error."""
    if not task.cancelled() and task.exception() is not None:
        work.sender.fail_if_open(task.exception())  # type: ignore[arg-type]
