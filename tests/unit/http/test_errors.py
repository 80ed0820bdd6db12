"""The HTTP error table: every ErrorCode becomes its status with a ``{"error": message}`` body; anything else
becomes 500 with a generic message (and a log line), so internals are not leaked."""

from __future__ import annotations

import logging

import orjson
import pytest

from kiln.errors import ErrorCode, error_class
from kiln.http.app import error_response
from kiln.http.errors import STATUS

EXPECTED = {
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


def test_the_table_maps_every_code() -> None:
    assert STATUS == EXPECTED


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_each_code_becomes_its_status_and_an_error_body(code: ErrorCode) -> None:
    response = error_response(error_class(code)(f"{code.value} on purpose"))
    assert response.status_code == EXPECTED[code]
    assert response.media_type == "application/json"
    assert orjson.loads(response.body) == {"error": f"{code.value} on purpose"}


def test_an_unknown_exception_is_a_generic_500_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kiln.http.app"):
        response = error_response(KeyError("/srv/secret/path.onnx"))
    assert response.status_code == 500
    assert orjson.loads(response.body) == {"error": "internal server error"}
    (record,) = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
