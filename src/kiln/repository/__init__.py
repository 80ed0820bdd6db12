"""The on-disk model repository in Triton's layout: discovery, config files and version policies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from kiln.config import load_config
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError, NotFoundError

log = logging.getLogger(__name__)


class ModelRepository:
    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r) for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise NotFoundError(f"model repository {root} does not exist or is not a directory")

    def scan(self) -> dict[str, Path]:
        """Every model directory, by name. A name found in two repositories is an error for that name."""
        found: dict[str, Path] = {}
        duplicates: set[str] = set()
        for root in self.roots:
            for child in sorted(root.iterdir()):
                if not child.is_dir() or child.name.startswith("."):
                    continue
                if child.name in found:
                    duplicates.add(child.name)
                    continue
                found[child.name] = child
        for name in duplicates:
            log.error("model '%s' appears in more than one model repository; it is not loaded", name)
            found.pop(name)
        self.duplicates = duplicates
        return found

    @staticmethod
    def read_config(name: str, model_dir: Path) -> model_config_pb2.ModelConfig:
        path = model_dir / "config.pbtxt"
        if path.exists():
            config = load_config(path)
        else:
            config = model_config_pb2.ModelConfig()
        if config.name and config.name != name:
            raise ModelConfigError(
                f"{path}: config name '{config.name}' does not match the model directory name '{name}'"
            )
        config.name = name
        return config

    @staticmethod
    def versions(model_dir: Path, config: model_config_pb2.ModelConfig) -> list[int]:
        """Version numbers to load, following ``version_policy`` (default: the latest one)."""
        available = sorted(
            int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
        )
        policy = config.version_policy
        kind = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else "latest"
        if kind == "all":
            return available
        if kind == "specific":
            wanted = sorted(set(policy.specific.versions))
            missing = [v for v in wanted if v not in available]
            if missing:
                log.warning(
                    "model '%s': versions %s named by version_policy are missing", config.name, missing
                )
            return [v for v in wanted if v in available]
        num = policy.latest.num_versions if config.HasField("version_policy") else 1
        return available[-max(1, num) :] if available else []
