"""Input signatures and runnable shapes, shared by the build stages and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import InvalidArgumentError


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @property
    def batched(self) -> bool:
        return len(self.shape) >= 1 and self.shape[0] in (-1, 1)


def concrete_shape(spec: InputSpec, shapes: dict[str, tuple[int, ...]], batch: int) -> tuple[int, ...]:
    """A runnable shape: the given one (its batch replaced), else the model's with the batch filled in."""
    if spec.name in shapes:
        given = shapes[spec.name]
        return (batch, *given[1:]) if spec.batched else given
    dims = list(spec.shape)
    if spec.batched:
        dims[0] = batch
    if any(d == -1 for d in dims):
        raise InvalidArgumentError(
            f"input '{spec.name}' has dynamic dimensions {list(spec.shape)}; give its shape with --shapes "
            f"(e.g. {spec.name}:{'x'.join(str(d if d > 0 else 1) for d in spec.shape)})"
        )
    return tuple(dims)


def random_inputs(
    inputs: list[InputSpec], shapes: dict[str, tuple[int, ...]], batch: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random feeds: standard-normal floats, 0/1 booleans, small non-negative integers (valid token ids)."""
    feeds = {}
    for spec in inputs:
        shape = concrete_shape(spec, shapes, batch)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
    return feeds
