"""Fingerprints of model directories: what polling compares, and what decides whether a version is reloaded."""

from __future__ import annotations

import hashlib
from pathlib import Path


def directory_fingerprint(model_dir: Path, skip_versions: bool = False) -> str:
    """What polling compares: every file's path, size and modification time under the model directory."""
    h = hashlib.sha256()
    try:
        for path in sorted(model_dir.rglob("*")):
            rel = path.relative_to(model_dir)
            if skip_versions and rel.parts[0].isdigit():
                continue
            if path.is_file():
                st = path.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
        h.update(b"unreadable")
    return h.hexdigest()


def shared_fingerprint(model_dir: Path) -> str:
    return directory_fingerprint(model_dir, skip_versions=True)


def version_fingerprint(shared: hashlib._Hash, version_dir: Path) -> str:
    h = shared.copy()
    h.update(directory_fingerprint(version_dir).encode())
    return h.hexdigest()
