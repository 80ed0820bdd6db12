"""The small backend interface: load -> signature -> execute -> unload.

A backend knows one runtime and nothing about transports, queues or statistics. It picks one of two execution
shapes:

- ``BATCHED``: the runtime takes one merged batch of tensors (ONNX Runtime, OpenVINO, TorchScript, TF, TFLite).
  The scheduler merges the requests of a batch, calls :meth:`Backend.execute`, and splits the outputs; if a merged
  batch fails, each request is retried alone so one bad request fails only itself.
- ``PER_REQUEST``: the backend gets the scheduled requests themselves (:meth:`Backend.execute_requests`) and
  answers each one through its :class:`~kiln.scheduling.work.ResponseSender`: one response, or (decoupled models)
  zero or more and then the final flag. The Python backend works this way, as Triton's does.

A backend that calls other models (BLS, ensembles) uses ``context.caller``, which the composition root injects:
it goes through the core, so scheduling, statistics and metrics apply to the inner calls too.
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from kiln.config import ModelIO, int_parameter, string_parameter
from kiln.config.schema import model_config_pb2
from kiln.errors import UnimplementedError
from kiln.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from kiln.scheduling.work import Work


class ExecutionShape(enum.Enum):
    BATCHED = "batched"
    PER_REQUEST = "per-request"


class ModelCaller(Protocol):
    """Model-to-model calls through the core (injected; backends never import the core)."""

    async def infer(self, request: InferRequest) -> InferResponse: ...

    def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]: ...

    def infer_sync(self, request: InferRequest) -> InferResponse:
        """From a backend's worker thread (never the event loop): blocks until the answer."""
        ...

    def stream_sync(self, request: InferRequest) -> Iterator[InferResponse]: ...

    # the repository API, for models that load others (Python's pb_utils.load_model ...), from worker threads
    def load_sync(self, name: str, parameters: Mapping[str, object]) -> None: ...

    def unload_sync(self, name: str, parameters: Mapping[str, object]) -> None: ...

    def ready_sync(self, name: str, version: str = "") -> bool: ...

    def config_sync(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """The completed config of a ready model version (raises a KilnError when there is none)."""
        ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets from the server besides its config and file."""

    cpu_count: int = os.cpu_count() or 1
    instance_count: int = 1  # CPU instances of this model sharing the cores
    kind: str = "CPU"  # "CPU" or "GPU"
    device_id: int = 0
    instance_name: str = ""
    caller: ModelCaller | None = None  # None outside a server (kiln bench, kiln build)
    auto_complete: bool = (
        True  # --disable-auto-complete-config turns it off (backends that complete the config)
    )
    metrics: Any = None  # custom metric families a backend may register (kiln.stats.custom.CustomMetrics)


class Backend(ABC):
    #: ``backend`` name in config.pbtxt, and the platform string Triton reports for it
    name: ClassVar[str]
    platform: ClassVar[str]
    default_filename: ClassVar[str]
    shape: ClassVar[ExecutionShape] = ExecutionShape.BATCHED
    #: the ``platform`` written into the completed config ("" for backends Triton names by ``backend`` only)
    config_platform: ClassVar[str] = ""
    #: False for models without instances of their own (ensembles): ``instance_group`` is refused
    has_instances: ClassVar[bool] = True
    #: PER_REQUEST: ``execute_requests`` may run on the event loop when it is measured fast, in a
    #: :mod:`kiln.bridge` greenlet: its calls into the core must be the caller's sync methods, which switch to the
    #: loop there instead of blocking it (an instance attribute where it depends on the model)
    runs_inline: bool = False
    #: whether :meth:`execute_requests_async` is what to call: a PER_REQUEST backend that only waits for another
    #: process (the Python backend's process isolation) is awaited on the loop, no server thread blocked
    async_requests: bool = False
    #: whether :meth:`ready_check` asks the model anything (else readiness checks skip the thread hop)
    checks_readiness: bool = False
    #: the config parameter that sets the CPU threads (what ``kiln bench --threads`` writes)
    threads_parameter: ClassVar[str] = "intra_op_thread_count"

    def __init__(
        self, config: model_config_pb2.ModelConfig, model_path: Path, context: BackendContext
    ) -> None:
        self.config = config
        self.model_path = model_path  # a file, or a folder (SavedModel, Python model version folder)
        self.context = context

    @classmethod
    def gpu_available(cls) -> bool:
        """Whether this backend can run on a GPU here (KIND_GPU / KIND_AUTO instance groups)."""
        return False

    @abstractmethod
    def load(self) -> None:
        """Create the runtime session. Raise ModelLoadError with the reason on failure."""

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        """The model file's own inputs and outputs (to auto-complete and validate the config), or None when the
        runtime cannot read them (TorchScript, Python models): the config alone then describes the model."""
        return None

    def settings(self) -> dict[str, object]:
        """The runtime settings in force (threads, providers, ...): shown by ``kiln bench`` and the load log."""
        return {}

    def health(self) -> str | None:
        """None while the instance can serve; else why not (a crashed worker being restarted, ...)."""
        return None

    def ready_check(self) -> str | None:
        """Blocking, run on a worker thread when a client asks whether the model is ready (only where
        ``checks_readiness``): the model's own readiness check, such as a Python model's ``is_ready()``. None:
        ready; else why not."""
        return None

    def dependencies(self) -> list[str]:
        """Models this one calls (ensemble steps, declared BLS targets): the lifecycle keeps the graph."""
        return []

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """BATCHED: run one (possibly merged) batch. Inputs already match the config; return the named outputs."""
        raise UnimplementedError(f"backend '{self.name}' does not execute merged batches")

    def execute_requests(self, works: list[Work]) -> None:
        """PER_REQUEST: run the scheduled requests and answer each through ``work.sender`` (from this thread or
        later from any other). An exception fails every request of the call that is not answered yet."""
        raise UnimplementedError(f"backend '{self.name}' does not execute per request")

    async def execute_requests_async(self, works: list[Work]) -> None:
        """PER_REQUEST with ``async_requests``: :meth:`execute_requests`, awaited on the event loop."""
        raise UnimplementedError(f"backend '{self.name}' has no execute_requests_async")

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""

    def parameter(self, key: str, default: str | None = None) -> str | None:
        """A string value from config ``parameters { key: ... value: { string_value: ... } }``."""
        value = string_parameter(self.config, key)
        return default if value is None else value

    def int_parameter(self, key: str, default: int) -> int:
        return int_parameter(self.config, key, default)

    def default_threads(self) -> int:
        """Cores shared between this model's CPU instances, so N instances don't oversubscribe the machine."""
        return max(1, self.context.cpu_count // max(1, self.context.instance_count))
