"""Loading one model version off the event loop: backend instances, warm-up, statistics and its scheduler."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path

from kiln.backends import ModelCaller
from kiln.config.schema import model_config_pb2
from kiln.errors import KilnError
from kiln.lifecycle.state import LifecycleOptions, ModelState, VersionStatus
from kiln.model import Model
from kiln.model.warmup import run_warmup
from kiln.scheduling import Batch, Scheduler, make_scheduler
from kiln.scheduling.ensemble import EnsembleScheduler
from kiln.scheduling.sequence import SequenceBatcher
from kiln.stats import ModelStats

log = logging.getLogger("kiln.lifecycle.manager")


async def load_version(
    config: model_config_pb2.ModelConfig,
    model_dir: Path,
    version: int,
    backend: str,
    fingerprint: str,
    options: LifecycleOptions,
    executor: Executor,
    caller: ModelCaller | None = None,
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
            auto_complete=options.auto_complete,
            default_max_batch_size=options.default_max_batch_size,
            caller=caller,
            metrics=options.custom_metrics,
            response_cache=options.response_cache,
        )
        try:
            run_warmup(model, model_dir)
        except BaseException:
            model.unload()
            raise
        return model

    try:
        model = await loop.run_in_executor(executor, build)
    except KilnError as e:
        status.state, status.reason = ModelState.UNAVAILABLE, e.message
        log.error("failed to load model '%s' version %d: %s", name, version, e.message)
        return status
    except Exception as e:
        status.state, status.reason = ModelState.UNAVAILABLE, f"unexpected error: {e}"
        log.exception("failed to load model '%s' version %d", name, version)
        return status
    stats = ModelStats.create(name, str(version), options.latency, decoupled=model.decoupled)

    def on_execution(b: Batch) -> None:
        stats.record_execution(b.size, b.input_ns, b.infer_ns, b.output_ns)

    scheduler: Scheduler
    if model.ensemble is not None and caller is not None:
        types = {n: spec.datatype for n, spec in model.inputs.items()}
        scheduler = EnsembleScheduler(model.ensemble, types, caller, on_execution)
    elif model.sequence is not None:
        scheduler = SequenceBatcher(
            model, len(model.backends), executor, on_execution, model.sequence, name, model.max_batch_size
        )
    else:
        scheduler = make_scheduler(model.config, model, len(model.backends), executor, on_execution)
    await scheduler.start()
    status.model, status.stats, status.scheduler = model, stats, scheduler
    status.state = ModelState.READY
    log.info(
        "loaded model '%s' version %d (%s: %s)", name, version, model.backend.name, model.backend.settings()
    )
    return status


async def free_version(status: VersionStatus, executor: Executor) -> None:
    """Once the version's last request is done: stop its scheduler, then release the runtime off the loop."""
    await status.idle.wait()
    if status.scheduler is not None:
        await status.scheduler.stop()
    model = status.model
    status.model, status.scheduler = None, None
    status.state = ModelState.UNAVAILABLE
    if model is not None:
        await asyncio.get_running_loop().run_in_executor(executor, model.unload)
