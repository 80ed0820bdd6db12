"""Model lifecycle state: what the manager keeps per model and per version."""

from __future__ import annotations

import asyncio
import enum
import tempfile
from dataclasses import dataclass, field
from typing import Any

from kiln.model import Model
from kiln.scheduling import Scheduler
from kiln.stats import ModelStats
from kiln.stats.latency import LatencyOptions


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
    # the version requests without a version go to, cached by resolve(); an entry's versions only ever leave
    # READY once it is visible (a reload builds a new entry), so a cached READY one is still the latest
    latest: VersionStatus | None = None


@dataclass(frozen=True)
class LifecycleOptions:
    mode: ControlMode = ControlMode.NONE
    startup_models: tuple[str, ...] = ()  # explicit mode: --load-model (``*`` for all)
    poll_interval_s: float = 15.0
    auto_complete: bool = True
    default_max_batch_size: int = 4
    latency: LatencyOptions | None = None
    max_upload_bytes: int = 256 * 1024 * 1024
    custom_metrics: Any = None  # kiln.stats.custom.CustomMetrics: families backends register (Python models)
    response_cache: bool = False  # the server has a response cache (--cache-config): models may enable it


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str
    composing: tuple[str, ...] = ()  # the models this version calls (an ensemble's steps, BLS targets)
