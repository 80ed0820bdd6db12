"""Request-check messages in Triton's words: Triton's clients and tests match on these texts, so each starts with
Triton's sentence and adds Kiln's detail after it (docs/decisions.md lists them)."""

from __future__ import annotations

from collections.abc import Sequence


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(map(str, dims)) + "]"  # Triton's DimsListToString: no spaces


def unexpected_shape(name: str, model: str, dims: Sequence[int], batching: bool, got: Sequence[int]) -> str:
    expected = [-1, *dims] if batching else list(dims)
    note = (
        " NOTE: a non-zero max_batch_size needs a batch dimension before each input's dims."
        if batching and len(got) == len(dims)
        else ""
    )
    return (
        f"unexpected shape for input '{name}' for model '{model}'. Expected {_dims(expected)}, "
        f"got {_dims(got)}.{note}"
    )


def wrong_datatype(name: str, model: str, got: str, expected: str) -> str:
    return f"inference input '{name}' data-type is '{got}', but model '{model}' expects '{expected}'"


def batch_too_large(model: str, max_batch_size: int, got: int) -> str:
    return f"inference request batch-size must be <= {max_batch_size} for '{model}' (got {got})"


def wrong_input_count(model: str, given: Sequence[str], required: Sequence[str], total: int) -> str:
    missing = [n for n in required if n not in given]
    count = (
        f"expected {total} inputs"
        if len(required) == total
        else f"expected number of inputs between {len(required)} and {total}"
    )
    return (
        f"{count} but got {len(given)} inputs for model '{model}'. Got input(s) {_names(given)}, but missing "
        f"required input(s) {_names(missing)}. Please provide all required input(s)."
    )


def _names(names: Sequence[str]) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"
