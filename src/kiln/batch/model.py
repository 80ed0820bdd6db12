"""A repository model version loaded in-process as ``kiln serve`` loads it, run on batches of rows.

The version comes from the same code as the server's: :class:`~kiln.repository.ModelRepository` reads
``config.pbtxt`` and the version policy, :meth:`kiln.model.Model.load` completes and validates the config and
loads one backend per model instance, ``model_warmup`` runs, and every batch goes through the server's request
checks (:meth:`~kiln.model.Model.prepare`), execution and output conversion (:meth:`~kiln.model.Model.respond`).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.backends import backend_name
from kiln.errors import InvalidArgumentError, NotFoundError
from kiln.model import Model
from kiln.model.version import TensorSpec
from kiln.types import InferRequest, InputTensor


@dataclass(frozen=True)
class ModelRef:
    """Which model to run: enough to load it again elsewhere (a Ray actor)."""

    repository: Path
    name: str
    version: int | None = None

    @property
    def model_dir(self) -> Path:
        return Path(self.repository) / self.name


def resolve_version(ref: ModelRef) -> tuple[int, Path]:
    """The version to run (``ref.version``, else the highest the version policy serves) and its folder."""
    from kiln.repository import ModelRepository

    model_dir = ref.model_dir
    if not (model_dir.is_dir()):
        raise NotFoundError(f"model '{ref.name}' not found: {model_dir} is not a folder")
    config = ModelRepository.read_config(ref.name, model_dir)
    versions = ModelRepository.versions(model_dir, config)
    if ref.version is not None:
        if ref.version not in versions:
            raise NotFoundError(
                f"model '{ref.name}' has no version {ref.version} that its version policy serves "
                f"(available: {versions or 'none'})"
            )
        version = ref.version
    elif versions:
        version = versions[-1]
    else:
        raise NotFoundError(f"model '{ref.name}' has no numbered version folder under {model_dir}")
    return version, model_dir / str(version)


class ModelRunner:
    """One loaded model version. :meth:`run` is thread-safe: each call borrows a free model instance."""

    def __init__(self, model: Model, model_dir: Path) -> None:
        self.model = model
        self.model_dir = model_dir
        self.name = model.name
        self.version = model.version
        self.inputs: dict[str, TensorSpec] = dict(model.inputs)
        self.outputs: dict[str, TensorSpec] = dict(model.outputs)
        self.batched = model.max_batch_size > 0
        self.instances = len(model.backends)
        self._closed = False
        self._free: queue.Queue[int] = queue.Queue()
        for index in range(self.instances):
            self._free.put(index)

    @classmethod
    def load(cls, ref: ModelRef, cpu_count: int | None = None) -> ModelRunner:
        from kiln.model.warmup import run_warmup
        from kiln.repository import ModelRepository

        version, _ = resolve_version(ref)
        config = ModelRepository.read_config(ref.name, ref.model_dir)
        model = Model.load(
            config, ref.model_dir, version, backend_name(config, ref.model_dir), cpu_count=cpu_count
        )
        try:
            if not model.batched:
                raise InvalidArgumentError(
                    f"model '{ref.name}' uses the '{model.backend.name}' backend, which answers requests one by "
                    f"one; kiln batch runs models that execute merged batches"
                )
            run_warmup(model, ref.model_dir)
        except BaseException:
            model.unload()
            raise
        return cls(model, ref.model_dir)

    def best_batch_size(self, requested: int | None = None) -> int:
        """``requested`` (at most max_batch_size), else the largest preferred batch size, else max_batch_size;
        1 for a model without a batch dimension."""
        limit = self.model.max_batch_size
        if limit <= 0:
            return 1
        if requested is not None:
            if requested > limit:
                raise InvalidArgumentError(
                    f"--batch-size {requested} is over model '{self.name}''s max_batch_size {limit}"
                )
            return requested
        preferred = [p for p in self.model.config.dynamic_batching.preferred_batch_size if 0 < p <= limit]
        return max(preferred) if preferred else limit

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows stacked along a leading axis -> every output, one leading row per input row."""
        count = len(next(iter(feeds.values())))
        if not self.batched:  # the model takes one row without a batch dimension
            rows = [self._run_once({k: v[i] for k, v in feeds.items()}) for i in range(count)]
            return {name: np.stack([r[name] for r in rows]) for name in self.outputs}
        return self._run_once(feeds)

    def _run_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = InferRequest(
            self.name,
            str(self.version),
            inputs=[
                InputTensor(name, self.inputs[name].datatype, tuple(array.shape), array)
                for name, array in feeds.items()
            ],
        )
        prepared = self.model.prepare(request)
        instance = self._free.get()
        try:
            results = self.model.execute(prepared.feeds, [o.name for o in prepared.outputs], instance)
        finally:
            self._free.put(instance)
        response = self.model.respond(request, prepared, results)
        return {tensor.name: tensor.data for tensor in response.outputs}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.model.unload()
