"""Which loaded models call which (ensemble steps, declared BLS targets): for ``unload_dependents``."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.lifecycle.state import ModelEntry


def dependencies(models: Mapping[str, ModelEntry], name: str) -> set[str]:
    """The models ``name``'s loaded versions call."""
    entry = models.get(name)
    if entry is None:
        return set()
    return {
        d for status in entry.versions.values() if status.model is not None for d in status.model.dependencies
    }


def dependents(models: Mapping[str, ModelEntry], name: str) -> set[str]:
    """The loaded models that call ``name``."""
    return {other for other in models if other != name and name in dependencies(models, other)}
