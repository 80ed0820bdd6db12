"""The inference protocol's data, independent of any wire format (no HTTP, no protobuf here).

A request carries its whole identity to the backend: id, parameters, correlation id, sequence flags, priority,
timeout, the outputs asked for and a cancellation signal. Wire-only switches (HTTP's ``binary_data``) stay in
the transport that has them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.types.datatypes import DataType

CorrelationId = int | str


class Cancellation:
    """A request's cancellation signal, safe to read from any thread (a backend polls :meth:`is_cancelled`).
    Cheap to create: the lock and the callback list exist only once a callback is registered."""

    __slots__ = ("_callbacks", "_lock", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] | None = None
        self._lock: threading.Lock | None = None

    def is_cancelled(self) -> bool:
        return self.cancelled

    def cancel(self) -> None:
        if self.cancelled:
            return
        lock = self._lock
        if lock is None:
            self.cancelled = True
            return
        with lock:
            if self.cancelled:
                return
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when cancelled (at once if already cancelled)."""
        if self._lock is None:
            self._lock = threading.Lock()
        with self._lock:
            if not self.cancelled:
                self._callbacks = [*(self._callbacks or []), callback]
                return
        callback()


@dataclass
class InputTensor:
    name: str
    datatype: DataType
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0  # top-k classification extension; 0 = plain tensor
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's own, reserved keys removed
    correlation_id: CorrelationId = 0  # Triton's ``sequence_id``; 0 / "" = not part of a sequence
    sequence_start: bool = False
    sequence_end: bool = False
    priority: int = 0  # 0 = the model's default priority level
    timeout_us: int | None = None
    cancellation: Cancellation = field(default_factory=Cancellation)


@dataclass
class OutputTensor:
    name: str
    datatype: DataType
    shape: tuple[int, ...]
    data: np.ndarray
    shared_memory: bool = False  # written into the client's shared-memory region: no data on the wire


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    final: bool = True  # the last response for its request (decoupled models send several)
    error: BaseException | None = None  # a decoupled model's error response that does not end the stream
    #: where the server spent the request's time (queue, compute input, compute infer, compute output, in ns),
    #: set on the last response; an ensemble adds its steps' up for its own statistics, as Triton does
    durations: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]
