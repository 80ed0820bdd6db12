"""The repository index (the HTTP/gRPC RepositoryIndex extension): what the manager holds and what is on disk."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.lifecycle.state import IndexEntry, ModelEntry, ModelState
from kiln.repository import ModelRepository


def repository_index(
    models: Mapping[str, ModelEntry], repository: ModelRepository, ready_only: bool = False
) -> list[IndexEntry]:
    """The repository index: every model known or on disk, a row per version (state, reason, composing models)."""
    rows = []
    names = set(models)
    try:
        names |= set(repository.scan())
    except OSError:
        pass
    for name in sorted(names):
        entry = models.get(name)
        if entry is None:
            rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE.value, "not loaded"))
            continue
        if not entry.versions:
            rows.append(IndexEntry(name, "", entry.state.value, entry.reason))
        for v, status in sorted(entry.versions.items()):
            reason = status.reason or (entry.reason if status.state is ModelState.READY else "")
            state = status.state.value
            health = status.model.health() if status.model is not None else None
            if health is not None and status.state is ModelState.READY:
                state, reason = ModelState.UNAVAILABLE.value, health
            composing = tuple(status.model.dependencies) if status.model is not None else ()
            rows.append(IndexEntry(name, str(v), state, reason, composing))
    if ready_only:
        rows = [r for r in rows if r.state == ModelState.READY.value]
    return rows
