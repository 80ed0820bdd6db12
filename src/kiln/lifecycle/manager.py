"""The model manager: control modes, load / unload / reload with zero failed requests, polling, the index.

A (re)load builds the new model *beside* the old one and swaps it in atomically once built; requests already
running finish on the version they started on, and a version is freed only when its last request is done.
Versions whose config and files did not change are carried over instead of being loaded again.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import tempfile
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from kiln.backends import backend_name
from kiln.config import parse_config_json
from kiln.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    KilnError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from kiln.latency import LatencyOptions
from kiln.lifecycle.fingerprints import directory_fingerprint, shared_fingerprint, version_fingerprint
from kiln.lifecycle.uploads import check_model_name, decode_file_overrides, safe_relative_path
from kiln.model import Model
from kiln.repository import ModelRepository
from kiln.scheduling import Scheduler, make_scheduler
from kiln.stats import ModelStats
from kiln.warmup import run_warmup

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


class ControlMode(enum.Enum):
    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


@dataclass(eq=False)
class VersionStatus:
    version: int
    state: ModelState
    reason: str = ""
    model: Model | None = None
    scheduler: Scheduler | None = None
    stats: ModelStats | None = None
    fingerprint: str = ""
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


@dataclass(eq=False)
class ModelEntry:
    name: str
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""  # model-level: config that does not parse, last failed reload, "unloaded", ...
    fingerprint: str = ""  # of the model directory, for polling
    workdir: tempfile.TemporaryDirectory[str] | None = None  # files sent with a load request


@dataclass(frozen=True)
class LifecycleOptions:
    mode: ControlMode = ControlMode.NONE
    startup_models: tuple[str, ...] = ()  # explicit mode: --load-model (``*`` for all)
    poll_interval_s: float = 15.0
    auto_complete: bool = True
    default_max_batch_size: int = 4
    latency: LatencyOptions | None = None
    max_upload_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class ModelManager:
    def __init__(self, repository: ModelRepository, options: LifecycleOptions, executor: Executor) -> None:
        self.repository = repository
        self.options = options
        self.executor = executor
        self.models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    # -- start, poll, stop -------------------------------------------------------------------------------
    async def start(self) -> None:
        found = self.repository.scan()
        if self.options.mode is ControlMode.EXPLICIT and "*" not in self.options.startup_models:
            names = list(self.options.startup_models)
        else:
            names = list(found)
        for name in names:
            if name not in found:
                self.models[name] = ModelEntry(name, reason=f"model '{name}' is not in the model repository")
                log.error("--load-model %s: no such model in the repository", name)
                continue
            await self._load_from(name, found[name], None)
        for name in self.repository.duplicates:
            self.models[name] = ModelEntry(name, reason="model name appears in more than one repository")
        if self.options.mode is ControlMode.POLL:
            self._poller = asyncio.create_task(self._poll_forever(), name="kiln-repository-poller")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll_interval_s)
            try:
                await self.poll()
            except Exception:
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """Apply what changed on disk: new models, removed models, changed configs, files or versions."""
        found = self.repository.scan()
        for name, model_dir in found.items():
            entry = self.models.get(name)
            if entry is None or entry.fingerprint != directory_fingerprint(model_dir):
                log.info("repository poll: %s model '%s'", "loading" if entry is None else "reloading", name)
                await self._load_from(name, model_dir, None)
        for name in [n for n, e in self.models.items() if n not in found and e.workdir is None]:
            log.info("repository poll: model '%s' was removed, unloading it", name)
            await self.unload(name, check_mode=False)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for entry in list(self.models.values()):
            for status in entry.versions.values():
                await _free(status)
            _drop_workdir(entry)
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- the repository API ------------------------------------------------------------------------------
    def _check_mode(self) -> None:
        if self.options.mode is ControlMode.NONE:
            raise FailedPreconditionError(
                "explicit model load / unload is not allowed: the server runs with --model-control-mode none"
            )
        if self.options.mode is ControlMode.POLL:
            raise FailedPreconditionError(
                "explicit model load / unload is not allowed while the repository is polled "
                "(--model-control-mode poll)"
            )

    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> ModelEntry:
        """The repository API's load: (re)load ``name`` from the repository, or from the files sent.
        ``parameters``: the request's, as decoded by a transport: ``config`` (JSON text) and ``file:<path>``."""
        self._check_mode()
        check_model_name(name)
        parameters = parameters or {}
        config_json = parameters.get("config")
        if config_json is not None and not isinstance(config_json, str):
            raise InvalidArgumentError("'config' must be the model config as a JSON string")
        files = decode_file_overrides(parameters)
        override = None
        if config_json is not None:
            override = parse_config_json(config_json, f"config override for model '{name}'")
        workdir = None
        if files:
            if override is None:
                raise InvalidArgumentError(
                    "a load request with file: overrides must also carry a 'config' override"
                )
            workdir, model_dir = self._write_files(name, files)
        else:
            model_dir = self.repository.scan().get(name)
            if model_dir is None:
                raise NotFoundError(f"failed to load '{name}': no such model in the model repository")
        entry = await self._load_from(name, model_dir, override, workdir)
        if entry.state is not ModelState.READY or entry.reason:
            raise InvalidArgumentError(
                f"failed to load '{name}': {entry.reason or 'no version could be loaded'}"
            )
        return entry

    async def unload(
        self, name: str, parameters: Mapping[str, object] | None = None, check_mode: bool = True
    ) -> None:
        """Stop routing requests to ``name``; in-flight requests finish; then its memory is freed.
        (The ``unload_dependents`` parameter concerns ensembles, which Kiln does not have yet: nothing depends
        on a model, so it is checked and has nothing to do.)"""
        if not isinstance((parameters or {}).get("unload_dependents", False), bool):
            raise InvalidArgumentError("'unload_dependents' must be true or false")
        if check_mode:
            self._check_mode()
            check_model_name(name)
        async with self._lock(name):
            entry = self.models.get(name)
            if entry is None:
                raise NotFoundError(f"failed to unload '{name}': the model is not loaded")
            entry.state, entry.reason = ModelState.UNLOADING, ""
            for status in entry.versions.values():
                status.state = ModelState.UNLOADING
            for status in entry.versions.values():
                await _free(status)
            _drop_workdir(entry)
            entry.versions.clear()
            entry.state, entry.reason, entry.fingerprint = ModelState.UNAVAILABLE, "unloaded", ""
            log.info("unloaded model '%s'", name)

    def _write_files(
        self, name: str, files: Mapping[str, bytes]
    ) -> tuple[tempfile.TemporaryDirectory[str], Path]:
        total = sum(len(b) for b in files.values())
        if total > self.options.max_upload_bytes:
            raise ResourceExhaustedError(
                f"model files of {total} bytes exceed the upload limit of {self.options.max_upload_bytes} bytes"
            )
        workdir = tempfile.TemporaryDirectory(prefix=f"kiln-{name}-")
        model_dir = Path(workdir.name) / name
        model_dir.mkdir()
        try:
            for rel, content in files.items():
                target = model_dir / safe_relative_path(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        except BaseException:
            workdir.cleanup()
            raise
        return workdir, model_dir

    def _inside_repository(self, model_dir: Path) -> bool:
        resolved = model_dir.resolve()
        return any(resolved.parent == root.resolve() for root in self.repository.roots)

    # -- (re)loading ---------------------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _load_from(
        self,
        name: str,
        model_dir: Path,
        override: model_config_pb2.ModelConfig | None,
        workdir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> ModelEntry:
        async with self._lock(name):
            old = self.models.get(name)
            if workdir is None and not self._inside_repository(model_dir):
                reason = f"model directory {model_dir} resolves outside the model repository (symlink?)"
                log.error("refusing model '%s': %s", name, reason)
                new = ModelEntry(name, reason=reason)
            else:
                new = await self._build(name, model_dir, override, old)
            new.workdir = workdir
            if old is None or not old.versions:
                self.models[name] = new
                if old is not None:
                    _drop_workdir(old)
                return new
            if new.state is not ModelState.READY:
                # keep the old model serving; report why the new one was refused
                old.reason = f"reload failed, still serving the previous model: {new.reason}"
                old.fingerprint = new.fingerprint
                for status in new.versions.values():
                    if status not in old.versions.values():
                        await _free(status)
                if workdir is not None:
                    workdir.cleanup()
                log.error("model '%s': %s", name, old.reason)
                return old
            self.models[name] = new  # the atomic switch: new requests now resolve to the new versions
            carried = set(new.versions.values())
            for status in old.versions.values():
                if status not in carried:
                    self._retire(status)
            if old.workdir is not None and old.workdir is not workdir:
                self._retire_workdir(old)
            log.info("model '%s' reloaded: versions %s", name, sorted(new.versions))
            return new

    async def _build(
        self,
        name: str,
        model_dir: Path,
        override: model_config_pb2.ModelConfig | None,
        old: ModelEntry | None,
    ) -> ModelEntry:
        entry = ModelEntry(name, state=ModelState.LOADING, fingerprint=directory_fingerprint(model_dir))
        try:
            if override is not None:
                config = model_config_pb2.ModelConfig()
                config.CopyFrom(override)
                if config.name and config.name != name:
                    raise InvalidArgumentError(f"config override names model '{config.name}', not '{name}'")
                config.name = name
            else:
                config = self.repository.read_config(name, model_dir)
            backend = backend_name(config, model_dir)
            versions = self.repository.versions(model_dir, config)
            if not versions:
                raise NotFoundError(f"model '{name}' has no version directory to load")
        except KilnError as e:
            entry.state, entry.reason = ModelState.UNAVAILABLE, e.message
            log.error("failed to load model '%s': %s", name, e.message)
            return entry
        # config + files outside version directories (labels, warm-up data): a change there reloads every version
        shared = hashlib.sha256(
            config.SerializeToString(deterministic=True) + shared_fingerprint(model_dir).encode()
        )
        previous = {v: s for v, s in (old.versions.items() if old else []) if s.state is ModelState.READY}
        for version in versions:
            fingerprint = version_fingerprint(shared, model_dir / str(version))
            carried = previous.get(version)
            if carried is not None and carried.fingerprint == fingerprint:
                entry.versions[version] = carried
                continue
            entry.versions[version] = await self._load_version(
                config, model_dir, version, backend, fingerprint
            )
        ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
        entry.state = ModelState.READY if ready else ModelState.UNAVAILABLE
        if not ready:
            entry.reason = "; ".join(f"version {v.version}: {v.reason}" for v in entry.versions.values())
        return entry

    async def _load_version(
        self,
        config: model_config_pb2.ModelConfig,
        model_dir: Path,
        version: int,
        backend: str,
        fingerprint: str,
    ) -> VersionStatus:
        name = config.name
        status = VersionStatus(version, ModelState.LOADING, fingerprint=fingerprint)
        status.idle.set()
        loop = asyncio.get_running_loop()

        def build() -> Model:
            model = Model.load(
                config,
                model_dir,
                version,
                backend,
                auto_complete=self.options.auto_complete,
                default_max_batch_size=self.options.default_max_batch_size,
            )
            try:
                run_warmup(model, model_dir)
            except BaseException:
                model.unload()
                raise
            return model

        try:
            model = await loop.run_in_executor(self.executor, build)
        except KilnError as e:
            status.state, status.reason = ModelState.UNAVAILABLE, e.message
            log.error("failed to load model '%s' version %d: %s", name, version, e.message)
            return status
        except Exception as e:
            status.state, status.reason = ModelState.UNAVAILABLE, f"unexpected error: {e}"
            log.exception("failed to load model '%s' version %d", name, version)
            return status
        stats = ModelStats.create(name, str(version), self.options.latency)
        scheduler = make_scheduler(
            model.config,
            model.execute,
            len(model.backends),
            self.executor,
            lambda b: stats.record_execution(b.size, b.input_ns, b.infer_ns, b.output_ns),
        )
        await scheduler.start()
        status.model, status.stats, status.scheduler = model, stats, scheduler
        status.state = ModelState.READY
        log.info("loaded model '%s' version %d (%s)", name, version, model.backend.name)
        return status

    def _retire(self, status: VersionStatus) -> None:
        """Free a replaced version once its in-flight requests are done, without holding up the caller."""
        task = asyncio.create_task(_free(status))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _retire_workdir(self, entry: ModelEntry) -> None:
        async def later() -> None:
            await asyncio.gather(*[s.idle.wait() for s in entry.versions.values()])
            _drop_workdir(entry)

        task = asyncio.create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- lookups -------------------------------------------------------------------------------------------
    def resolve(self, name: str, version: str = "") -> VersionStatus:
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

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = []
        names = set(self.models)
        try:
            names |= set(self.repository.scan())
        except OSError:
            pass
        for name in sorted(names):
            entry = self.models.get(name)
            if entry is None:
                rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE.value, "not loaded"))
                continue
            if not entry.versions:
                rows.append(IndexEntry(name, "", entry.state.value, entry.reason))
            for v, status in sorted(entry.versions.items()):
                reason = status.reason or (entry.reason if status.state is ModelState.READY else "")
                rows.append(IndexEntry(name, str(v), status.state.value, reason))
        if ready_only:
            rows = [r for r in rows if r.state == ModelState.READY.value]
        return rows

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.models.values() if e.reason != "unloaded"]


async def _free(status: VersionStatus) -> None:
    await status.idle.wait()
    if status.scheduler is not None:
        await status.scheduler.stop()
    if status.model is not None:
        status.model.unload()
    status.model, status.scheduler = None, None
    status.state = ModelState.UNAVAILABLE


def _drop_workdir(entry: ModelEntry) -> None:
    if entry.workdir is not None:
        entry.workdir.cleanup()
        entry.workdir = None
