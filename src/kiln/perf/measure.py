"""Timing and memory: warm-up, a timed loop of ``iterations`` or ``duration``, latency percentiles, peak RSS."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.perf.inputs import random_inputs
from kiln.perf.runners import Runner

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the process peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemorySampler:
    """Samples RSS on a thread; ``peak - baseline`` is the memory the artifact took (load + runs)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self.steady = 0  # resident bytes held after the measured step, above the baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def used_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


@dataclass
class LatencyStats:
    iterations: int
    batch: int
    total_s: float  # wall-clock time of the timed runs (loop overhead included, as trtexec counts it)
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # inferences (samples) per second
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_latencies(
        cls, latencies_s: list[float], batch: int, wall_s: float | None = None
    ) -> LatencyStats:
        ms = np.asarray(latencies_s) * 1000.0
        total = float(wall_s if wall_s is not None else np.sum(latencies_s))
        p = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            iterations=len(ms),
            batch=batch,
            total_s=total,
            min_ms=float(ms.min()),
            mean_ms=float(ms.mean()),
            median_ms=float(p[0]),
            p90_ms=float(p[1]),
            p95_ms=float(p[2]),
            p99_ms=float(p[3]),
            max_ms=float(ms.max()),
            throughput=batch * len(ms) / total if total > 0 else 0.0,
            latencies_ms=[float(v) for v in ms],
        )


def make_feeds(
    runner: Runner, batch: int, shapes: Mapping[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    return random_inputs(runner.inputs, dict(shapes), batch, np.random.default_rng(seed))


def load_feeds(path: Path, runner: Runner, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` rows of each input's array in an .npz (repeated when it holds fewer)."""
    from kiln.errors import InvalidArgumentError

    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot read input data {path}: {e}") from None
    feeds = {}
    with data:
        for spec in runner.inputs:
            if spec.name not in data.files:
                raise InvalidArgumentError(f"{path} has no array named '{spec.name}' (has {data.files})")
            arr = np.asarray(data[spec.name]).astype(spec.dtype, copy=False)
            reps = -(-batch // len(arr))
            feeds[spec.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
    return feeds


def time_runs(
    runner: Runner,
    feeds: Mapping[str, np.ndarray],
    iterations: int | None = None,
    duration_s: float | None = 3.0,
    warmup_s: float = 0.5,
    min_iterations: int = 5,
    timed: Callable[[bool], None] | None = None,
) -> tuple[list[float], float]:
    """Latencies (seconds) of consecutive runs after ``warmup_s`` of warm-up (at least one run), and the
    wall-clock seconds the timed runs took. ``timed(True)`` / ``timed(False)`` are called around the timed runs
    (a profiler counts only those)."""
    end = time.perf_counter() + warmup_s
    runner.run(feeds)
    while time.perf_counter() < end:
        runner.run(feeds)
    if timed is not None:
        timed(True)
    try:
        return _timed_loop(runner, feeds, iterations, duration_s, min_iterations)
    finally:
        if timed is not None:
            timed(False)


def _timed_loop(
    runner: Runner,
    feeds: Mapping[str, np.ndarray],
    iterations: int | None,
    duration_s: float | None,
    min_iterations: int,
) -> tuple[list[float], float]:
    latencies: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.run(feeds)
        latencies.append(time.perf_counter() - t0)
        if iterations is not None:
            if len(latencies) >= iterations:
                break
        elif len(latencies) >= min_iterations and time.perf_counter() - start >= (duration_s or 0):
            break
    return latencies, time.perf_counter() - start
