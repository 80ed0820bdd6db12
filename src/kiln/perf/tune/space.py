"""What ``kiln tune`` varies, and how one choice becomes a config.pbtxt that keeps every other field of the user's.

A :class:`Candidate` is one point of the search space: instance count, intra-op threads per instance, the
batch limit, the preferred batch sizes and the batcher's queue delay. :func:`render` applies it to the user's
config; nothing else in that config changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from kiln.config.schema import model_config_pb2

_GROUP = model_config_pb2.ModelInstanceGroup
THREADS_PARAMETER = "intra_op_thread_count"
#: the preferred-batch-size choices: "max/4" prefers max/4, max/2 and max (powers of two up to the limit)
PREFERRED_CHOICES = ("none", "max", "max/2", "max/4")


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int | None  # intra-op threads per instance; None: Kiln's default (cores / instances)
    max_batch_size: int  # 0: the model does not batch (the batching fields are left as they are)
    preferred: str = "none"  # one of PREFERRED_CHOICES
    delay_us: int | None = None  # max_queue_delay_microseconds; None: no dynamic_batching block

    def preferred_sizes(self) -> tuple[int, ...]:
        if self.delay_us is None or self.max_batch_size <= 1 or self.preferred == "none":
            return ()
        divisor = {"max": 1, "max/2": 2, "max/4": 4}[self.preferred]
        sizes, size = [], self.max_batch_size
        while size >= max(1, self.max_batch_size // divisor) and size >= 2:
            sizes.append(size)
            size //= 2
        return tuple(sorted(sizes))

    def effective_threads(self, cores: int | None = None) -> int:
        return self.threads or max(1, (cores or os.cpu_count() or 1) // max(1, self.instances))

    def key(self, cores: int | None = None) -> tuple[object, ...]:
        """Equal for candidates that render to the same served configuration."""
        batching = (self.max_batch_size, self.preferred_sizes(), self.delay_us) if self.max_batch_size else ()
        return (self.instances, self.effective_threads(cores), *batching)

    def label(self) -> str:
        threads = f"t{self.threads}" if self.threads else "t=auto"
        parts = [f"inst {self.instances}", threads]
        if self.max_batch_size:
            parts.append(f"mbs {self.max_batch_size}")
            if self.delay_us is None:
                parts.append("no batcher")
            else:
                sizes = self.preferred_sizes()
                parts.append(f"pref [{','.join(map(str, sizes))}]" if sizes else "pref -")
                parts.append(f"delay {self.delay_us}us")
        return " ".join(parts)


@dataclass(frozen=True)
class SearchSpace:
    """The values each dimension may take, in order (coordinate ascent steps to the neighbouring value)."""

    instances: tuple[int, ...] = (1, 2)
    threads: tuple[int | None, ...] = (None,)
    max_batch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    preferred: tuple[str, ...] = PREFERRED_CHOICES
    delays_us: tuple[int | None, ...] = (None, 0, 500, 2000, 8000)

    @classmethod
    def default(cls, cores: int | None = None) -> SearchSpace:
        """Instances 1 .. min(4, cores) (powers of two), threads auto and 1 .. cores (powers of two)."""
        cores = cores or os.cpu_count() or 1
        powers = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= cores]
        return cls(instances=tuple(n for n in powers if n <= 4), threads=(None, *powers))

    def dimensions(self, batching: bool) -> tuple[str, ...]:
        """The fields of :class:`Candidate` searched, most influential first."""
        dims = ("max_batch_size", "delay_us", "preferred") if batching else ()
        return (*dims, "instances", "threads")

    def values(self, dimension: str) -> tuple[object, ...]:
        return {
            "instances": self.instances,
            "threads": self.threads,
            "max_batch_size": self.max_batch_sizes,
            "preferred": self.preferred,
            "delay_us": self.delays_us,
        }[dimension]

    def step(self, candidate: Candidate, dimension: str, direction: int) -> Candidate | None:
        """The neighbour one value up (+1) or down (-1) along ``dimension``, or None at the end of its range."""
        values = self.values(dimension)
        current = getattr(candidate, dimension)
        index = values.index(current) if current in values else nearest_index(values, current)
        target = index + direction
        if not 0 <= target < len(values):
            return None
        return replace(candidate, **{dimension: values[target]})

    def start(self, max_batch_size: int) -> Candidate:
        """Where the search begins: one instance, default threads, a middle batch limit, a short delay."""
        if max_batch_size <= 0:
            return Candidate(self.instances[0], self.threads[0], 0)
        sizes = self.max_batch_sizes
        mbs = sizes[(len(sizes) - 1) // 2]
        delays = [d for d in self.delays_us if d is not None]
        delay = delays[min(1, len(delays) - 1)] if delays else None
        preferred = "max/2" if "max/2" in self.preferred else self.preferred[0]
        return Candidate(self.instances[0], self.threads[0], mbs, preferred, delay)


def nearest_index(values: tuple[object, ...], current: object) -> int:
    numeric = [
        (abs(v - current), i) for i, v in enumerate(values) if isinstance(v, int) and isinstance(current, int)
    ]
    return min(numeric)[1] if numeric else 0


def render(
    base: model_config_pb2.ModelConfig, candidate: Candidate, kind: int = _GROUP.KIND_CPU
) -> model_config_pb2.ModelConfig:
    """``base`` with the candidate's instance group, batching and threads; every other field kept.

    The first instance group keeps its name and other fields; further groups are merged into it (one group of
    ``candidate.instances`` instances). ``kind`` is KIND_CPU unless the caller has checked a GPU is usable."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(base)
    group = _GROUP()
    if base.instance_group:
        group.CopyFrom(base.instance_group[0])
    group.count = candidate.instances
    group.kind = kind
    if kind != _GROUP.KIND_GPU:
        del group.gpus[:]
    del config.instance_group[:]
    config.instance_group.append(group)
    if candidate.max_batch_size > 0:
        config.max_batch_size = candidate.max_batch_size
        if candidate.delay_us is None:
            config.ClearField("dynamic_batching")
        else:
            batching = config.dynamic_batching
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.extend(candidate.preferred_sizes())
            batching.max_queue_delay_microseconds = candidate.delay_us
    if candidate.threads:
        config.parameters[THREADS_PARAMETER].string_value = str(candidate.threads)
    elif THREADS_PARAMETER in config.parameters:
        del config.parameters[THREADS_PARAMETER]
    return config


def instance_kind(base: model_config_pb2.ModelConfig, gpu_available: bool) -> int:
    """KIND_CPU unless a GPU is really usable by the backend here and the user's config asks for one (or for
    KIND_AUTO). A CPU-only host is never tuned into KIND_GPU configs."""
    wants = {g.kind for g in base.instance_group} or {_GROUP.KIND_AUTO}
    if gpu_available and wants & {_GROUP.KIND_GPU, _GROUP.KIND_AUTO}:
        return _GROUP.KIND_GPU
    return _GROUP.KIND_CPU
