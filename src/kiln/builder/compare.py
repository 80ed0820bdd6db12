"""``kiln build --compare``: the source model and the built artifact timed side by side, in one process, their
timed runs alternating (what ``kiln bench --compare SOURCE ARTIFACT`` does), recorded in the build's
``build.json`` under ``"compare"``. Works for every target the build writes (ONNX Runtime, OpenVINO, ncnn) and
every source it reads (ONNX, TorchScript, ``.pt2``): both sides go through the runners of :mod:`kiln.perf`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.builder.pipeline import BuildResult
    from kiln.perf.bench import BenchResult

DEFAULT_BATCH = 8  # when the build measured no preferred batch size (and the model batches that far)


def compare_batch(result: BuildResult) -> int:
    """The batch to compare at: the largest preferred batch size the build measured, else 8 clamped to the
    model's ``max_batch_size`` (1 for a model without a batch dimension)."""
    preferred = (result.manifest.get("speed") or {}).get("preferred_batch_sizes") or []
    if preferred:
        return int(max(preferred))
    max_batch = result.max_batch_size
    return min(DEFAULT_BATCH, max_batch) if max_batch > 0 else 1


def compare_with_source(
    result: BuildResult,
    source: Path,
    batch: int | None = None,
    duration_s: float = 4.0,
    rounds: int = 4,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[BenchResult]:
    """Time ``source`` and ``result.artifact`` side by side and add the figures to ``build.json``."""
    from kiln.perf import BenchOptions, bench
    from kiln.perf.report import results_json

    size = batch or compare_batch(result)
    results = bench(
        BenchOptions(
            artifacts=(Path(source), result.artifact),
            batch=size,
            duration_s=duration_s,
            warmup_s=min(1.0, duration_s / 4),
            rounds=rounds,
            shapes=dict(shapes or {}),
        )
    )
    summary = results_json(results)
    record: dict[str, Any] = {
        "batch": size,
        "rounds": rounds,
        "duration_s": duration_s,
        "source": _short(results[0]),
        "artifact": _short(results[1]),
        "ratios_artifact_over_source": summary["ratios_b_over_a"],
    }
    path = result.version_dir / "build.json"
    manifest = json.loads(path.read_text())
    manifest["compare"] = record
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    result.manifest["compare"] = record
    return results


def _short(result: BenchResult) -> dict[str, Any]:
    lat = result.latency
    return {
        "artifact": result.artifact,
        "backend": result.backend,
        "threads": result.threads,
        "throughput": lat.throughput,
        "median_ms": lat.median_ms,
        "p99_ms": lat.p99_ms,
        "peak_memory_mb": result.peak_memory_mb,
    }
