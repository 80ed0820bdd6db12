"""The protocol's reserved request parameters (sequence_id, sequence_start/end, priority, timeout): checked and
moved into the request's typed fields before the core schedules it."""

from __future__ import annotations

from typing import Any

from kiln.errors import InvalidArgumentError
from kiln.types.protocol import InferRequest

RESERVED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")


def bind_reserved_parameters(request: InferRequest) -> None:
    """Move the protocol's reserved request parameters into the request's typed fields (checked)."""
    params = request.parameters
    if not params or not any(key in params for key in RESERVED_PARAMETERS):
        return
    if "sequence_id" in params:
        value = params.pop("sequence_id")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str)
            or (isinstance(value, int) and value < 0)
        ):
            raise InvalidArgumentError(
                f"request parameter 'sequence_id' must be an unsigned integer or a string, got {value!r}"
            )
        request.correlation_id = value
    for key in ("sequence_start", "sequence_end"):
        if key in params:
            value = params.pop(key)
            if not isinstance(value, bool):
                raise InvalidArgumentError(f"request parameter '{key}' must be true or false, got {value!r}")
            setattr(request, key, value)
    if "priority" in params:
        request.priority = _uint(params.pop("priority"), "priority")
    if "timeout" in params:
        request.timeout_us = _uint(params.pop("timeout"), "timeout")


def _uint(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"request parameter '{key}' must be an unsigned integer, got {value!r}")
    return value
