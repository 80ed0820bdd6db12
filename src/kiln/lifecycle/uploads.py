"""What the repository API accepts from clients: model names, ``file:`` override paths and their content."""

from __future__ import annotations

import base64
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from kiln.errors import InvalidArgumentError, ResourceExhaustedError

NAME_MAX = 255  # bytes in one path component (Linux)
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def check_model_name(name: str) -> None:
    """A model name is one safe path component: no separators, no '..', nothing hidden."""
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise InvalidArgumentError(
            f"invalid model name '{name}': use letters, digits, '_', '-' and '.', starting with a letter, digit or '_'"
        )


def safe_relative_path(rel: str) -> PurePosixPath:
    """A ``file:`` override path: relative, normalised, never leaving the model's directory, each component a
    valid file name. Messages start with Triton's "Invalid file path", which its model-control example matches."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or "\\" in rel or any(part in ("..", "") for part in rel.split("/")):
        raise InvalidArgumentError(
            f"Invalid file path '{rel}': must be a relative path inside the model directory"
        )
    if path.parts[0] == "." or any(part.startswith(".") for part in path.parts):
        raise InvalidArgumentError(f"Invalid file path '{rel}': hidden or '.' components are not allowed")
    too_long = [p for p in path.parts if len(p.encode()) > NAME_MAX]
    if too_long:
        raise InvalidArgumentError(
            f"Invalid file path '{rel[:64]}...': a component is {len(too_long[0].encode())} bytes long, "
            f"more than the {NAME_MAX} a file name may have"
        )
    return path


def decode_file_overrides(parameters: Mapping[str, object]) -> dict[str, bytes]:
    """``file:<path>`` load parameters: bytes (gRPC) or base64 text (HTTP JSON)."""
    files = {}
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        rel = key[len("file:") :]
        if isinstance(value, bytes):
            files[rel] = value
        elif isinstance(value, str):
            try:
                files[rel] = base64.b64decode(value, validate=True)
            except ValueError:
                raise InvalidArgumentError(f"'{key}' must be base64-encoded file content") from None
        else:
            raise InvalidArgumentError(f"'{key}' must carry the file's bytes (base64 in JSON)")
    return files


def write_files(
    name: str, files: Mapping[str, bytes], max_bytes: int
) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """Model files sent with a load request, written to a private folder that lives as long as the model."""
    total = sum(len(b) for b in files.values())
    if total > max_bytes:
        raise ResourceExhaustedError(
            f"model files of {total} bytes exceed the upload limit of {max_bytes} bytes"
        )
    workdir = tempfile.TemporaryDirectory(prefix=f"kiln-{name}-")
    model_dir = Path(workdir.name) / name
    model_dir.mkdir()
    try:
        for rel, content in files.items():
            target = model_dir / safe_relative_path(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    except BaseException:
        workdir.cleanup()
        raise
    return workdir, model_dir
