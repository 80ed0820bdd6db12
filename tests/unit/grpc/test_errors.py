"""The gRPC error table: every ErrorCode becomes its gRPC status code with the message; anything else becomes
INTERNAL with a generic message (and a log line), so internals are not leaked."""

from __future__ import annotations

import logging

import grpc
import pytest

from kiln.errors import ErrorCode, error_class
from kiln.grpc.servicer import STATUS, error_status

EXPECTED = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


def test_the_table_maps_every_code() -> None:
    assert STATUS == EXPECTED


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_each_code_becomes_its_status_code_and_message(code: ErrorCode) -> None:
    assert error_status(error_class(code)(f"{code.value} on purpose")) == (
        EXPECTED[code],
        f"{code.value} on purpose",
    )


def test_an_unknown_exception_is_a_generic_internal_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kiln.grpc.servicer"):
        status = error_status(KeyError("/srv/secret/path.onnx"))
    assert status == (grpc.StatusCode.INTERNAL, "internal server error")
    (record,) = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
