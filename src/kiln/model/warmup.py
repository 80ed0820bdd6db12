"""Model warm-up (``model_warmup`` in config.pbtxt): run sample requests on every instance before READY."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError, ModelLoadError
from kiln.model.version import Model
from kiln.types import datatypes, tensors


def warmup_samples(
    config: model_config_pb2.ModelConfig, model_dir: Path
) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(name, count, feeds) for each warm-up entry; data from zeros, random values or ``warmup/<file>``."""
    samples = []
    rng = np.random.default_rng(0)
    for entry in config.model_warmup:
        batch = max(1, entry.batch_size)
        feeds = {}
        for name, spec in entry.inputs.items():
            dtype = datatypes.BY_CONFIG_NAME.get(model_config_pb2.DataType.Name(spec.data_type))
            if dtype is None:
                raise ModelConfigError(f"warm-up '{entry.name}' input '{name}': unsupported data_type")
            dims = [int(d) for d in spec.dims]
            if any(d < 0 for d in dims):
                raise ModelConfigError(
                    f"warm-up '{entry.name}' input '{name}': dims must be fixed, got {dims}"
                )
            shape = tuple(([batch] if config.max_batch_size > 0 else []) + dims)
            feeds[name] = _sample(entry.name, name, dtype, shape, spec, model_dir, rng)
        samples.append((entry.name, max(1, entry.count), feeds))
    return samples


def _sample(warmup: str, name: str, dtype: datatypes.DataType, shape: tuple[int, ...], spec,  # type: ignore[no-untyped-def]
            model_dir: Path, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    kind = spec.WhichOneof("input_data_type")
    count = tensors.element_count(shape)
    if kind == "input_data_file":
        base = (model_dir / "warmup").resolve()
        path = (base / spec.input_data_file).resolve()
        if base not in path.parents:
            raise ModelConfigError(
                f"warm-up '{warmup}': input_data_file must stay inside the warmup/ directory"
            )
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ModelConfigError(f"warm-up '{warmup}': cannot read {path.name}: {e}") from None
        return tensors.from_raw(name, dtype, shape, raw).copy()
    if dtype.name == "BYTES":
        value = b"" if kind == "zero_data" else b"kiln"
        arr = np.empty(count, dtype=np.object_)
        arr[:] = [value] * count
        return arr.reshape(shape)
    if kind == "random_data":
        if dtype.name == "BOOL":
            return rng.integers(0, 2, size=shape).astype(np.bool_)
        if dtype.numpy.kind == "f":
            return rng.random(size=shape).astype(dtype.numpy)
        return rng.integers(0, 100, size=shape).astype(dtype.numpy)
    return np.zeros(shape, dtype=dtype.numpy)


def run_warmup(model: Model, model_dir: Path) -> None:
    """Blocking: every warm-up sample, ``count`` times, on every instance. Failure fails the load."""
    outputs = list(model.outputs)
    for name, count, feeds in warmup_samples(model.config, model_dir):
        for instance in range(len(model.backends)):
            for _ in range(count):
                try:
                    model.execute(feeds, outputs, instance)
                except Exception as e:
                    message = getattr(e, "message", str(e))
                    raise ModelLoadError(
                        f"model '{model.name}': warm-up '{name}' failed: {message}"
                    ) from None
