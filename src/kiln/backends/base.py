"""The small backend interface: load -> signature -> execute(batch) -> unload.

A backend knows one runtime and nothing about transports, batching or statistics. The core validates requests
against the (completed) config before calling :meth:`Backend.execute`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from tritonclient.grpc import model_config_pb2

from kiln.config import ModelIO, int_parameter, string_parameter


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets from the server besides its config and file."""

    cpu_count: int = os.cpu_count() or 1
    instance_count: int = 1  # CPU instances of this model sharing the cores
    kind: str = "CPU"  # "CPU" or "GPU"
    device_id: int = 0


class Backend(ABC):
    #: ``backend`` name in config.pbtxt, and the platform string Triton reports for it
    name: ClassVar[str]
    platform: ClassVar[str]
    default_filename: ClassVar[str]

    def __init__(
        self, config: model_config_pb2.ModelConfig, model_path: Path, context: BackendContext
    ) -> None:
        self.config = config
        self.model_path = model_path
        self.context = context

    @classmethod
    def gpu_available(cls) -> bool:
        """Whether this backend can run on a GPU here (KIND_GPU / KIND_AUTO instance groups)."""
        return False

    @abstractmethod
    def load(self) -> None:
        """Create the runtime session. Raise ModelLoadError with the reason on failure."""

    @abstractmethod
    def signature(self) -> tuple[list[ModelIO], list[ModelIO]]:
        """The model file's own inputs and outputs (used to auto-complete and validate the config)."""

    @abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) request. Inputs already match the config; return the named outputs."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""

    def parameter(self, key: str, default: str | None = None) -> str | None:
        """A string value from config ``parameters { key: ... value: { string_value: ... } }``."""
        value = string_parameter(self.config, key)
        return default if value is None else value

    def int_parameter(self, key: str, default: int) -> int:
        return int_parameter(self.config, key, default)
