"""Stage 4, dynamic-shape profiles: check --shapes / --min/opt/max-shapes against the model's inputs and derive
the batch limit. The profile goes into config.pbtxt (and into TensorRT's profile options on the GPU path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.builder.data import InputSpec
from kiln.builder.options import ShapeProfile
from kiln.builder.report import StageRecord
from kiln.errors import InvalidArgumentError

DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class ResolvedProfile:
    profile: ShapeProfile
    max_batch_size: int  # 0: the model does not batch
    opt_shapes: dict[
        str, tuple[int, ...]
    ]  # one runnable shape per input (batch 1), for checks and benchmarks


def resolve_profile(
    inputs: Sequence[InputSpec],
    profile: ShapeProfile,
    max_batch_size: int | None,
    record: StageRecord,
) -> ResolvedProfile:
    by_name = {i.name: i for i in inputs}
    for kind, shapes in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        for name, shape in shapes.items():
            spec = by_name.get(name)
            if spec is None:
                raise InvalidArgumentError(
                    f"--{kind}-shapes names '{name}', not an input of the model: {sorted(by_name)}"
                )
            if len(shape) != len(spec.shape):
                raise InvalidArgumentError(
                    f"--{kind}-shapes {name}: rank {len(shape)}, the model's input has rank {len(spec.shape)} "
                    f"{list(spec.shape)}"
                )
            for i, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
                if want != -1 and got != want and not (i == 0 and spec.batched):
                    raise InvalidArgumentError(
                        f"--{kind}-shapes {name}: dimension {i} is {got}, the model fixes it to {want}"
                    )
    for name in set(profile.min) | set(profile.max):
        lo, hi = profile.min.get(name), profile.max.get(name)
        opt = profile.opt.get(name)
        for a, b in ((lo, opt), (opt, hi), (lo, hi)):
            if a is not None and b is not None and any(x > y for x, y in zip(a, b, strict=True)):
                raise InvalidArgumentError(
                    f"shape profile for '{name}': need min <= opt <= max, got {a} > {b}"
                )
    batchable = bool(inputs) and all(i.batched and i.shape[0] == -1 for i in inputs)
    if max_batch_size is None:
        batches = [s[0] for s in profile.max.values() if s]
        max_batch_size = max(batches) if batches and batchable else (DEFAULT_MAX_BATCH if batchable else 0)
    if max_batch_size > 0 and not batchable:
        raise InvalidArgumentError(
            f"max batch size {max_batch_size} asked for, but the model's inputs have a fixed first dimension "
            f"({', '.join(f'{i.name}{list(i.shape)}' for i in inputs)})"
        )
    opt_shapes: dict[str, tuple[int, ...]] = {}
    for spec in inputs:
        given = profile.opt.get(spec.name) or profile.max.get(spec.name) or profile.min.get(spec.name)
        if given is not None:
            opt_shapes[spec.name] = (1, *given[1:]) if spec.batched else given
        elif any(d == -1 for d in spec.shape[1 if spec.batched else 0 :]):
            raise InvalidArgumentError(
                f"input '{spec.name}' has dynamic dimensions {list(spec.shape)} besides the batch; give "
                f"--shapes {spec.name}:{'x'.join(str(d if d > 0 else 1) for d in spec.shape)} (or min/opt/max)"
            )
        else:
            opt_shapes[spec.name] = tuple(
                1 if (i == 0 and spec.batched) else d for i, d in enumerate(spec.shape)
            )
    record.details["max_batch_size"] = max_batch_size
    record.details["opt"] = ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in opt_shapes.items())
    if not profile.is_empty():
        record.details["profile"] = "min/opt/max given"
    return ResolvedProfile(profile, max_batch_size, opt_shapes)
