"""The data plane: liveness, readiness, metadata, config, inference and model states.

The one home of serving logic: the HTTP and gRPC transports only decode, call a method here, and encode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import model_config_pb2

import kiln
from kiln.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnimplementedError,
)
from kiln.lifecycle import IndexEntry, LifecycleOptions, ModelEntry, ModelManager, ModelState
from kiln.model import Model
from kiln.repository import ModelRepository
from kiln.scheduling import Work
from kiln.stats import ModelStats
from kiln.types import InferRequest, InferResponse, ModelMetadata, ServerMetadata

log = logging.getLogger(__name__)

EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "model_repository", "statistics"]


@dataclass(frozen=True)
class CoreOptions:
    strict_readiness: bool = True
    executor_threads: int = 32
    lifecycle: LifecycleOptions = field(default_factory=LifecycleOptions)


class Core:
    def __init__(self, repository: ModelRepository, options: CoreOptions | None = None) -> None:
        self.options = options or CoreOptions()
        self.executor = ThreadPoolExecutor(self.options.executor_threads, thread_name_prefix="kiln-exec")
        self.manager = ModelManager(repository, self.options.lifecycle, self.executor)
        self.live = True

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.manager.start()

    def failed_models(self) -> list[ModelEntry]:
        return [e for e in self.manager.loaded() if e.state is not ModelState.READY]

    async def close(self) -> None:
        await self.manager.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        await self.manager.load(name, parameters)

    async def unload_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        await self.manager.unload(name, parameters)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.manager.index(ready_only)

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
        return ServerMetadata("kiln", kiln.__version__, list(EXTENSIONS))

    def get_model(self, name: str, version: str = "") -> Model:
        return self.manager.resolve(name, version).model  # type: ignore[return-value]

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.manager.resolve(name, version)
        except (UnavailableError, NotFoundError):
            if name not in self.manager.models:
                raise
            return False
        return True

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
        status = self.manager.resolve(request.model_name, request.model_version)
        model, stats, scheduler = status.model, status.stats, status.scheduler
        assert model is not None and stats is not None and scheduler is not None
        start = time.perf_counter_ns()
        stats.pending += 1
        status.enter()
        try:
            _refuse_unsupported_parameters(request)
            prepared = model.prepare(request)
            work = Work(
                prepared.feeds,
                [o.name for o in prepared.outputs],
                prepared.batch_size,
                _uint_parameter(request, "priority") or 0,
                _uint_parameter(request, "timeout"),
            )
            prepared_at = time.perf_counter_ns()
            result = await scheduler.submit(work)
            returned_at = time.perf_counter_ns()
            response = model.respond(request, prepared, result.outputs)
        except BaseException as e:
            stats.record_failure(time.perf_counter_ns() - start, e)
            raise
        finally:
            stats.pending -= 1
            status.leave()
        end = time.perf_counter_ns()
        b = result.batch
        stats.record_success(
            end - start, b.queue_ns, prepared_at - start + b.input_ns, b.infer_ns, b.output_ns + end - returned_at,
            prepared.batch_size,
        )  # fmt: skip
        return response

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's model_stats entries: every ready version, or one model (all its ready versions), or one
        version."""
        models = self.manager.models
        if name:
            if version:
                statuses = [self.manager.resolve(name, version)]
            else:
                self.manager.resolve(name, "")  # unknown / not ready -> error
                statuses = [s for s in models[name].versions.values() if s.stats is not None]
        else:
            statuses = [s for e in models.values() for s in e.versions.values() if s.stats is not None]
        return [s.stats.as_dict() for s in statuses if s.stats is not None]

    def all_stats(self) -> list[ModelStats]:
        return [
            s.stats for e in self.manager.models.values() for s in e.versions.values() if s.stats is not None
        ]


def _uint_parameter(request: InferRequest, key: str) -> int | None:
    value = request.parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"request parameter '{key}' must be an unsigned integer, got {value!r}")
    return value


def _refuse_unsupported_parameters(request: InferRequest) -> None:
    for tensor in request.inputs:
        if "shared_memory_region" in tensor.parameters:
            raise UnimplementedError(
                "shared-memory tensors are not supported by Kiln yet; send the data inline"
            )
    for out in request.outputs or ():
        if "shared_memory_region" in out.parameters:
            raise UnimplementedError("shared-memory outputs are not supported by Kiln yet")
