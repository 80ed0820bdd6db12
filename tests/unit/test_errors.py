"""The one error hierarchy: one KilnError subclass per ErrorCode, carrying its code and a client message."""

from __future__ import annotations

import pytest

from kiln import errors
from kiln.errors import ErrorCode, KilnError


def error_class(code: ErrorCode) -> type[KilnError]:
    """The subclass named after the code: INVALID_ARGUMENT -> InvalidArgumentError."""
    return getattr(errors, "".join(w.capitalize() for w in code.value.split("_")) + "Error")


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_each_code_has_its_error_class(code: ErrorCode) -> None:
    cls = error_class(code)
    assert issubclass(cls, KilnError) and cls.code is code
    with pytest.raises(cls, match=f"^{code.value} on purpose$") as err:
        raise cls(f"{code.value} on purpose")
    assert err.value.code is code and err.value.message == f"{code.value} on purpose"


def test_specific_errors_keep_the_code_of_what_they_are() -> None:
    assert errors.ModelConfigError("bad").code is ErrorCode.INVALID_ARGUMENT
    assert isinstance(errors.ModelConfigError("bad"), errors.InvalidArgumentError)
    assert errors.ModelLoadError("broken").code is ErrorCode.UNAVAILABLE
    missing = errors.MissingDependencyError("torch", "torch")
    assert missing.code is ErrorCode.UNAVAILABLE
    assert missing.message == "torch is not installed; install it with: pip install 'kiln[torch]'"


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_error_class_by_code_is_the_named_class(code: ErrorCode) -> None:
    """What rebuilds an error that crossed a process (the Python backend's workers) picks the right class."""
    assert errors.error_class(code) is error_class(code)
