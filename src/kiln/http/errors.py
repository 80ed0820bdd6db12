"""The HTTP transport's one error table: KilnError codes to statuses, with ``{"error": "..."}`` bodies."""

from __future__ import annotations

import logging

from kiln.errors import ErrorCode, KilnError

log = logging.getLogger("kiln.http.app")

STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.INTERNAL: 500,
}


def error_payload(exc: Exception) -> tuple[int, dict[str, str]]:
    """The one error mapping: a status and ``{"error": ...}``; internals are logged, never sent."""
    if isinstance(exc, KilnError):
        return STATUS[exc.code], {"error": exc.message}
    log.exception("internal error while serving an HTTP request", exc_info=exc)
    return 500, {"error": "internal server error"}
