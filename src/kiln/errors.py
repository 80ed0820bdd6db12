"""One error hierarchy for all of Kiln.

Core code raises :class:`KilnError` subclasses carrying a transport-neutral :class:`ErrorCode`; each transport
maps the code once (HTTP: a status table, gRPC: an interceptor). Messages are written for the client.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


class KilnError(Exception):
    """Base of every error Kiln raises on purpose. ``code`` decides the transport status."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(KilnError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(KilnError):
    code = ErrorCode.NOT_FOUND


class UnavailableError(KilnError):
    code = ErrorCode.UNAVAILABLE


class AlreadyExistsError(KilnError):
    code = ErrorCode.ALREADY_EXISTS


class UnimplementedError(KilnError):
    """A feature Kiln does not implement (yet): said plainly instead of half-working."""

    code = ErrorCode.UNIMPLEMENTED


class PermissionDeniedError(KilnError):
    code = ErrorCode.PERMISSION_DENIED


class ResourceExhaustedError(KilnError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(KilnError):
    code = ErrorCode.DEADLINE_EXCEEDED


class CancelledError(KilnError):
    code = ErrorCode.CANCELLED


class FailedPreconditionError(KilnError):
    """The request is valid but not allowed in the server's current mode (e.g. model control disabled)."""

    code = ErrorCode.FAILED_PRECONDITION


class InternalError(KilnError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[KilnError]] = {}


def error_class(code: ErrorCode) -> type[KilnError]:
    """The error class that stands for ``code`` (for errors that crossed a process or wire as code + message)."""
    if not _BY_CODE:
        for cls in (InvalidArgumentError, NotFoundError, UnavailableError, AlreadyExistsError, UnimplementedError,
                    PermissionDeniedError, ResourceExhaustedError, DeadlineExceededError, CancelledError,
                    FailedPreconditionError, InternalError):  # fmt: skip
            _BY_CODE[cls.code] = cls
    return _BY_CODE.get(code, InternalError)


class ModelConfigError(InvalidArgumentError):
    """A config.pbtxt that does not parse or does not fit its model."""


class ModelLoadError(KilnError):
    """A model that could not be loaded; the reason is shown in the repository index and the logs."""

    code = ErrorCode.UNAVAILABLE


class MissingDependencyError(KilnError):
    """An optional runtime (torch, openvino, ...) is not installed."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed; install it with: pip install 'kiln[{extra}]'")
