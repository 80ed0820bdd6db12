"""``kiln bench``: load one artifact (or two, with --compare), warm up, time, and report."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import InvalidArgumentError
from kiln.perf.measure import LatencyStats, MemorySampler, load_feeds, make_feeds, rss_bytes, time_runs
from kiln.perf.profile import Profile, collect, profiling_class
from kiln.perf.runners import Artifact, Runner, open_runner, resolve


@dataclass(frozen=True)
class BenchOptions:
    artifacts: tuple[Path, ...]  # one, or two to compare side by side
    iterations: int | None = None  # a fixed count of timed runs, else --duration
    duration_s: float = 3.0
    warmup_s: float = 0.5
    batch: int = 1
    threads: int | None = None  # None: as kiln serve runs it (config.pbtxt, else cores / CPU instances)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rounds: int = 1  # with several artifacts, alternate A, B, A, B ... this many times
    input_data: Path | None = None  # .npz of real inputs (like trtexec --loadInputs); else random data
    seed: int = 0
    profile: bool = False  # per-node times of the timed runs (ONNX Runtime and OpenVINO artifacts)


@dataclass
class BenchResult:
    label: str  # the artifact as given
    artifact: str
    backend: str
    threads: int | None  # intra-op threads in force
    settings: dict[str, object]  # the backend's runtime settings: version, threads, providers, optimisation
    batch: int
    size_mb: float
    load_s: float
    peak_memory_mb: float
    latency: LatencyStats
    profile: Profile | None = None

    def to_dict(self, with_latencies: bool = False) -> dict[str, object]:
        lat = {k: v for k, v in vars(self.latency).items() if with_latencies or k != "latencies_ms"}
        plain = {k: v for k, v in vars(self).items() if k not in ("latency", "profile")}
        return {**plain, "latency": lat, "profile": self.profile.to_dict() if self.profile else None}


def artifact_size_mb(path: Path) -> float:
    # OpenVINO IR (.xml) and ncnn (.param) keep their weights in a .bin beside the model file
    files = [path, path.with_suffix(".bin")] if path.suffix in (".xml", ".param") else [path]
    files += list(path.parent.glob(f"{path.name}.data")) + list(path.parent.glob("*.onnx_data"))
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def bench(options: BenchOptions) -> list[BenchResult]:
    """Benchmark each artifact; with two, their timed runs alternate in ``rounds`` so drift hits both."""
    if not options.artifacts:
        raise InvalidArgumentError("nothing to benchmark: give an artifact or a repository model folder")
    if options.batch < 1:
        raise InvalidArgumentError("--batch must be >= 1")
    artifacts = [resolve(path) for path in options.artifacts]
    # an unsupported backend fails before anything loads
    classes = [profiling_class(a.backend) if options.profile else None for a in artifacts]
    loaded = [
        _load(path, artifact, klass, options)
        for path, artifact, klass in zip(options.artifacts, artifacts, classes, strict=True)
    ]
    latencies: list[list[float]] = [[] for _ in loaded]
    walls = [0.0 for _ in loaded]
    rounds = max(1, options.rounds)
    iterations = None if options.iterations is None else max(1, options.iterations // rounds)
    for _ in range(rounds):
        for i, (_artifact, runner, feeds, _load_s, memory) in enumerate(loaded):
            timed = getattr(runner.backend, "set_timing", None)
            with MemorySampler() as during:
                runs, wall = time_runs(
                    runner, feeds, iterations, options.duration_s / rounds, options.warmup_s, timed=timed
                )
            latencies[i] += runs
            walls[i] += wall
            # memory this artifact holds plus what a run adds on top (other loaded artifacts don't count)
            memory.peak = max(memory.peak, memory.baseline + memory.steady + during.peak - during.baseline)
    results = []
    for (artifact, runner, _feeds, load_s, memory), lat, wall in zip(loaded, latencies, walls, strict=True):
        results.append(
            BenchResult(
                label=runner.name,
                artifact=str(artifact.path),
                backend=artifact.backend,
                threads=runner.threads,
                settings=runner.settings(),
                batch=options.batch,
                size_mb=round(artifact_size_mb(artifact.path), 3),
                load_s=load_s,
                peak_memory_mb=memory.used_mb,
                latency=LatencyStats.from_latencies(lat, options.batch, wall),
                profile=collect(runner.backend, runner.name) if options.profile else None,
            )
        )
        runner.close()
    return results


def _load(
    path: Path, artifact: Artifact, klass: type | None, options: BenchOptions
) -> tuple[Artifact, Runner, dict, float, MemorySampler]:
    gc.collect()
    with MemorySampler() as memory:
        t0 = time.perf_counter()
        runner = open_runner(artifact, options.threads, name=str(path), klass=klass)
        load_s = time.perf_counter() - t0
    memory.steady = rss_bytes() - memory.baseline
    feeds = (
        load_feeds(options.input_data, runner, options.batch)
        if options.input_data
        else make_feeds(runner, options.batch, options.shapes, options.seed)
    )
    return artifact, runner, feeds, load_s, memory


def host() -> dict[str, object]:
    return {"machine": platform.machine(), "processor": _cpu_name(), "cores": os.cpu_count() or 1}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
