"""What pb_utils and its companion modules share: Triton's exception types and the per-process state (the model
caller and metrics registry, set when a Python model loads; the model running in this context)."""

from __future__ import annotations

import contextvars
from typing import Any

state: dict[str, Any] = {"caller": None, "metrics": None}
# (name, version) while a model's initialize/execute runs (on a worker thread, or in a greenlet on the loop)
current_model: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "kiln_python_model", default=None
)


class TritonError(Exception):
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass
