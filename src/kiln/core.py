"""The data plane: liveness, readiness, metadata, config, inference and model states.

The one home of serving logic: the HTTP and gRPC transports only decode, call a method here, and encode.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

import kiln
from kiln.backends import backend_name
from kiln.errors import (
    InvalidArgumentError,
    KilnError,
    NotFoundError,
    UnavailableError,
    UnimplementedError,
)
from kiln.latency import LatencyOptions
from kiln.model import Model
from kiln.repository import ModelRepository
from kiln.scheduling import Scheduler, Work, make_scheduler
from kiln.stats import ModelStats
from kiln.types import InferRequest, InferResponse, ModelMetadata, ServerMetadata

log = logging.getLogger(__name__)

EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "statistics"]


class ModelState(enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass
class VersionStatus:
    version: int
    state: ModelState
    reason: str = ""
    model: Model | None = None
    scheduler: Scheduler | None = None
    stats: ModelStats | None = None


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""  # model-level failure (config that does not parse, unknown backend, ...)


@dataclass(frozen=True)
class CoreOptions:
    auto_complete: bool = True
    default_max_batch_size: int = 4
    strict_readiness: bool = True
    executor_threads: int = 32
    latency: LatencyOptions | None = None


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class Core:
    def __init__(self, repository: ModelRepository, options: CoreOptions | None = None) -> None:
        self.repository = repository
        self.options = options or CoreOptions()
        self.models: dict[str, ModelEntry] = {}
        self.executor = ThreadPoolExecutor(self.options.executor_threads, thread_name_prefix="kiln-exec")
        self.live = True

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def load_all(self) -> None:
        for name, model_dir in self.repository.scan().items():
            await self.load_model(name, model_dir)
        for name in self.repository.duplicates:
            self.models[name] = ModelEntry(name, reason="model name appears in more than one repository")

    async def load_model(self, name: str, model_dir: Path) -> ModelEntry:
        entry = ModelEntry(name, state=ModelState.LOADING)
        self.models[name] = entry
        try:
            config = self.repository.read_config(name, model_dir)
            backend = backend_name(config, model_dir)
            versions = self.repository.versions(model_dir, config)
            if not versions:
                raise NotFoundError(f"model '{name}' has no version directory to load")
        except KilnError as e:
            return self._fail(entry, e.message)
        loop = asyncio.get_running_loop()
        for version in versions:
            status = VersionStatus(version, ModelState.LOADING)
            entry.versions[version] = status
            try:
                model = await loop.run_in_executor(
                    self.executor,
                    lambda v=version: Model.load(
                        config,
                        model_dir,
                        v,
                        backend,
                        auto_complete=self.options.auto_complete,
                        default_max_batch_size=self.options.default_max_batch_size,
                    ),
                )
            except KilnError as e:
                status.state, status.reason = ModelState.UNAVAILABLE, e.message
                log.error("failed to load model '%s' version %d: %s", name, version, e.message)
                continue
            except Exception as e:
                status.state, status.reason = ModelState.UNAVAILABLE, f"unexpected error: {e}"
                log.exception("failed to load model '%s' version %d", name, version)
                continue
            stats = ModelStats.create(name, str(version), self.options.latency)
            scheduler = make_scheduler(
                model.config,
                model.execute,
                len(model.backends),
                self.executor,
                lambda b, s=stats: s.record_execution(b.size, b.input_ns, b.infer_ns, b.output_ns),
            )
            await scheduler.start()
            status.model, status.stats, status.scheduler = model, stats, scheduler
            status.state = ModelState.READY
            log.info("loaded model '%s' version %d (%s)", name, version, model.backend.name)
        ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
        entry.state = ModelState.READY if ready else ModelState.UNAVAILABLE
        if not ready:
            entry.reason = "; ".join(v.reason for v in entry.versions.values())
        return entry

    def _fail(self, entry: ModelEntry, reason: str) -> ModelEntry:
        entry.state, entry.reason = ModelState.UNAVAILABLE, reason
        log.error("failed to load model '%s': %s", entry.name, reason)
        return entry

    def failed_models(self) -> list[ModelEntry]:
        return [e for e in self.models.values() if e.state is not ModelState.READY]

    async def close(self) -> None:
        for entry in self.models.values():
            for status in entry.versions.values():
                if status.scheduler is not None:
                    await status.scheduler.stop()
                if status.model is not None:
                    status.model.unload()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- health and metadata -------------------------------------------------------------------------------
    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        if not self.live:
            return False
        if self.options.strict_readiness:
            return all(e.state is ModelState.READY for e in self.models.values())
        return True

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("kiln", kiln.__version__, list(EXTENSIONS))

    def get_model(self, name: str, version: str = "") -> Model:
        return self._version(name, version).model  # type: ignore[return-value]

    def _version(self, name: str, version: str) -> VersionStatus:
        entry = self.models.get(name)
        if entry is None:
            raise NotFoundError(f"Request for unknown model: '{name}' is not found")
        if not version:
            ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
            if not ready:
                why = f": {entry.reason}" if entry.reason else ""
                raise UnavailableError(f"model '{name}' is not ready{why}")
            return max(ready, key=lambda v: v.version)
        try:
            number = int(version)
        except ValueError:
            raise InvalidArgumentError(f"model version must be an integer, got '{version}'") from None
        status = entry.versions.get(number)
        if status is None:
            raise NotFoundError(f"Request for unknown model: '{name}' version {number} is not found")
        if status.state is not ModelState.READY:
            why = f": {status.reason}" if status.reason else ""
            raise UnavailableError(f"model '{name}' version {number} is not ready{why}")
        return status

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._version(name, version)
        except (UnavailableError, NotFoundError):
            if name not in self.models:
                raise
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.get_model(name, version)
        entry = self.models[name]
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

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = []
        for name in sorted(self.models):
            entry = self.models[name]
            if not entry.versions:
                rows.append(IndexEntry(name, "", entry.state.value, entry.reason))
            for v, status in sorted(entry.versions.items()):
                rows.append(IndexEntry(name, str(v), status.state.value, status.reason))
        if ready_only:
            rows = [r for r in rows if r.state == ModelState.READY.value]
        return rows

    # -- inference -----------------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        status = self._version(request.model_name, request.model_version)
        model, stats, scheduler = status.model, status.stats, status.scheduler
        assert model is not None and stats is not None and scheduler is not None
        start = time.perf_counter_ns()
        stats.pending += 1
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
        if name:
            if version:
                statuses = [self._version(name, version)]
            else:
                self._version(name, "")  # unknown / not ready -> error
                statuses = [s for s in self.models[name].versions.values() if s.stats is not None]
        else:
            statuses = [s for e in self.models.values() for s in e.versions.values() if s.stats is not None]
        return [s.stats.as_dict() for s in statuses if s.stats is not None]

    def all_stats(self) -> list[ModelStats]:
        return [s.stats for e in self.models.values() for s in e.versions.values() if s.stats is not None]


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
