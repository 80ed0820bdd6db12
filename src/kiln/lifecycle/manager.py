"""The model manager: control modes, load / unload / reload with zero failed requests, polling, the index.

A (re)load builds the new model *beside* the old one and swaps it in atomically once built; requests already
running finish on the version they started on, and a version is freed only when its last request is done.
Versions whose config and files did not change are carried over instead of being loaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import Mapping
from concurrent.futures import Executor
from contextvars import ContextVar
from pathlib import Path

from kiln.backends import ModelCaller, backend_name
from kiln.config import parse_config_json
from kiln.config.ensemble import is_ensemble, step_models
from kiln.config.schema import model_config_pb2
from kiln.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    KilnError,
    ModelConfigError,
    NotFoundError,
    UnavailableError,
    error_class,
)
from kiln.lifecycle.fingerprints import directory_fingerprint, shared_fingerprint, version_fingerprint
from kiln.lifecycle.graph import dependencies, dependents
from kiln.lifecycle.index import repository_index
from kiln.lifecycle.loader import free_version, load_version
from kiln.lifecycle.state import (
    ControlMode,
    IndexEntry,
    LifecycleOptions,
    ModelEntry,
    ModelState,
    VersionStatus,
)
from kiln.lifecycle.uploads import check_model_name, decode_file_overrides, write_files
from kiln.repository import ModelRepository

log = logging.getLogger(__name__)

# the ensembles whose loads led to the load running now (a cycle of ensembles is refused)
_LOADING: ContextVar[tuple[str, ...]] = ContextVar("kiln_loading_chain", default=())


class ModelManager:
    def __init__(
        self,
        repository: ModelRepository,
        options: LifecycleOptions,
        executor: Executor,
        caller: ModelCaller | None = None,
    ) -> None:
        self.repository = repository
        self.caller = caller  # handed to backends that call other models
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
            if name in self.models:
                continue  # loaded already, as a step of an ensemble listed before it
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
                await free_version(status, self.executor)
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
        ``parameters``: the request's, as decoded by a transport: ``config`` (JSON text) and ``file:<path>``.
        Every failure says ``failed to load '<name>'`` first, as Triton's does (clients match on it)."""
        self._check_mode()
        try:
            return await self._load(name, parameters)
        except KilnError as e:
            if e.message.startswith("failed to load"):
                raise
            raise error_class(e.code)(f"failed to load '{name}': {e.message}") from None

    async def _load(self, name: str, parameters: Mapping[str, object] | None) -> ModelEntry:
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
            workdir, model_dir = write_files(name, files, self.options.max_upload_bytes)
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
        ``unload_dependents``: also unload the models ``name`` depends on (ensemble steps, declared BLS targets)
        that no other loaded model still needs, as Triton does."""
        cascade = (parameters or {}).get("unload_dependents", False)
        if not isinstance(cascade, bool):
            raise InvalidArgumentError("'unload_dependents' must be true or false")
        if check_mode:
            self._check_mode()
            check_model_name(name)
        needed = dependencies(self.models, name) if cascade else set()
        await self._unload_one(name)
        for dependency in sorted(needed):
            if dependency in self.models and not dependents(self.models, dependency):
                log.info("unloading '%s': '%s' depended on it (unload_dependents)", dependency, name)
                await self.unload(dependency, {"unload_dependents": True}, check_mode=False)

    async def _unload_one(self, name: str) -> None:
        async with self._lock(name):
            entry = self.models.get(name)
            if entry is None:
                raise NotFoundError(f"failed to unload '{name}': the model is not loaded")
            entry.state, entry.reason = ModelState.UNLOADING, ""
            for status in entry.versions.values():
                status.state = ModelState.UNLOADING
            for status in entry.versions.values():
                await free_version(status, self.executor)
            _drop_workdir(entry)
            entry.versions.clear()
            entry.state, entry.reason, entry.fingerprint = ModelState.UNAVAILABLE, "unloaded", ""
            log.info("unloaded model '%s'", name)

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
                        await free_version(status, self.executor)
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
            if is_ensemble(config):
                await self._load_steps(name, config)
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

    async def _load_steps(self, name: str, config: model_config_pb2.ModelConfig) -> None:
        """Before an ensemble: load the step models it needs that are not loaded yet (as Triton does, in every
        control mode), refusing a cycle of ensembles."""
        chain = (*_LOADING.get(), name)
        found: dict[str, Path] | None = None
        for step in step_models(config):
            if step in chain:
                raise ModelConfigError(
                    f"circular dependency between ensembles: {' -> '.join((*chain, step))}"
                )
            entry = self.models.get(step)
            if entry is not None and entry.state is ModelState.READY:
                continue
            found = self.repository.scan() if found is None else found
            if step not in found:
                continue  # the ensemble's load then says the step is not available
            token = _LOADING.set(chain)
            try:
                log.info("loading model '%s' (a step of ensemble '%s')", step, name)
                await self._load_from(step, found[step], None)
            finally:
                _LOADING.reset(token)

    async def _load_version(
        self,
        config: model_config_pb2.ModelConfig,
        model_dir: Path,
        version: int,
        backend: str,
        fingerprint: str,
    ) -> VersionStatus:
        return await load_version(
            config, model_dir, version, backend, fingerprint, self.options, self.executor, self.caller
        )

    def _retire(self, status: VersionStatus) -> None:
        """Free a replaced version once its in-flight requests are done, without holding up the caller."""
        task = asyncio.create_task(free_version(status, self.executor))
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
            latest = entry.latest
            if latest is not None and latest.state is ModelState.READY:
                return latest  # the common case: the cached serving version is still ready
            ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
            if not ready:
                why = f": {entry.reason}" if entry.reason else ""
                raise UnavailableError(f"Request for unknown model: '{name}' has no available versions{why}")
            entry.latest = max(ready, key=lambda v: v.version)
            return entry.latest
        try:
            number = int(version)
        except ValueError:
            raise InvalidArgumentError(f"model version must be an integer, got '{version}'") from None
        status = entry.versions.get(number)
        if status is None:
            raise NotFoundError(f"Request for unknown model: '{name}' version {number} is not found")
        if status.state is not ModelState.READY:
            why = f": {status.reason}" if status.reason else ""
            raise UnavailableError(
                f"Request for unknown model: '{name}' version {number} is not at ready state{why}"
            )
        return status

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return repository_index(self.models, self.repository, ready_only)

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.models.values() if e.reason != "unloaded"]


def _drop_workdir(entry: ModelEntry) -> None:
    if entry.workdir is not None:
        entry.workdir.cleanup()
        entry.workdir = None
