"""build.json: everything the build did and measured, next to the artifact it describes."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from kiln.builder.options import BuildOptions
from kiln.builder.report import Reporter
from kiln.builder.write import sha256, tool_versions

if TYPE_CHECKING:
    from kiln.builder.pipeline import Candidate


def manifest(
    chosen: Candidate,
    candidates: list[Candidate],
    source: onnx.ModelProto,
    artifact: Path,
    options: BuildOptions,
    version: int,
    started: float,
    reporter: Reporter,
    config_changes: list[str],
) -> dict[str, Any]:
    from kiln.perf.bench import host

    def opts(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: opts(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [opts(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return getattr(value, "value", value)

    return {
        "kiln_build": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.time() - started, 3),
        "source": {"path": str(Path(options.source).resolve()), "sha256": sha256(Path(options.source))},
        "artifact": {
            "file": artifact.name,
            "sha256": sha256(artifact),
            "size_bytes": sum(f.stat().st_size for f in artifact.parent.iterdir() if f.is_file()),
            "version": version,
            "target": options.target.value,
            "device": options.device.value,
            "precision": chosen.precision.value,
        },
        "tools": tool_versions(),
        "host": host(),
        "options": opts(asdict(options)),
        "stages": [
            {"name": s.name, "seconds": round(s.seconds, 4), "details": s.details} for s in reporter.stages
        ],
        "candidates": [
            {
                "precision": c.precision.value,
                "passed": c.passed,
                "accuracy": c.accuracy.to_dict() if c.accuracy else None,
                "speed": c.speed.to_dict() if c.speed else None,
                "chosen": c is chosen,
            }
            for c in candidates
        ],
        "accuracy": chosen.accuracy.to_dict() if chosen.accuracy else None,
        "gate": {
            "passed": chosen.passed,
            "failures": chosen.accuracy.failures if chosen.accuracy else [],
            "accepted_accuracy_drop": not chosen.passed and options.accept_accuracy_drop,
            "min_validation_samples": options.min_validation_samples,
        },
        "config_changes": config_changes,
        "speed": chosen.speed.to_dict() if chosen.speed else None,
        "source_nodes": len(source.graph.node),
    }
