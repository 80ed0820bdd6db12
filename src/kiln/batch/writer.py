"""The output folder: one file per finished shard, written atomically, so a rerun skips what is done.

```
OUT/_kiln_batch.json            the job (model, version, input and its fingerprint, shard size, format)
OUT/part-00000.parquet          row_id + one column per output (Parquet), or
OUT/part-00000/                 row_id.npy + <output>.npy (npy)
OUT/part-00000.failures.jsonl   the shard's failed rows (row_id, reason), written before the shard itself
OUT/failures.jsonl              every failure of every shard, rewritten at the end of each run
OUT/summary.json                the last run's summary
```

A shard is finished when its part file (or folder) exists: it is written under a temporary name and renamed
into place, so a killed job leaves no half shard. Tensor outputs are FixedSizeList columns of the flattened
values, with the per-row shape in the field's metadata (``kiln.shape``); :func:`read_output` gives them back as
arrays.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.batch.engine import Failure, Outputs
from kiln.batch.options import OutputFormat
from kiln.errors import FailedPreconditionError, InvalidArgumentError

MANIFEST = "_kiln_batch.json"
_PART = re.compile(r"^part-(\d{5,})(\.parquet)?$")
_SHAPE_KEY = b"kiln.shape"


class ShardStore:
    def __init__(self, folder: Path, output_format: OutputFormat) -> None:
        self.folder = Path(folder)
        self.format = output_format

    def part_path(self, shard: int) -> Path:
        suffix = ".parquet" if self.format is OutputFormat.PARQUET else ""
        return self.folder / f"part-{shard:05d}{suffix}"

    def prepare(self, job: Mapping[str, Any], overwrite: bool) -> None:
        """Create the folder, or check that the shards in it belong to this job (else refuse, or with
        ``overwrite`` remove them); temporary files of an interrupted run are removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST
        if manifest.exists():
            previous = json.loads(manifest.read_text())
            changed = sorted(k for k in job if previous.get(k) != job[k])
            if changed and not overwrite:
                raise FailedPreconditionError(
                    f"{self.folder} holds the output of another job (it differs in {', '.join(changed)}); give "
                    f"--overwrite to start again there, or another --output folder"
                )
            if changed:
                self._clear()
        elif any(self._parts()) and not overwrite:
            raise FailedPreconditionError(
                f"{self.folder} holds part files but no {MANIFEST}; give --overwrite"
            )
        for stale in self.folder.glob(".part-*.tmp-*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        _atomic_write_text(manifest, json.dumps(dict(job), indent=2, sort_keys=True) + "\n")

    def _clear(self) -> None:
        for path in [*self._parts(), *self.folder.glob("part-*.failures.jsonl")]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _parts(self) -> Iterator[Path]:
        return (p for p in sorted(self.folder.iterdir()) if _PART.match(p.name))

    def finished(self) -> set[int]:
        if not self.folder.is_dir():
            return set()
        want = ".parquet" if self.format is OutputFormat.PARQUET else ""
        found = set()
        for path in self._parts():
            match = _PART.match(path.name)
            if match and (match.group(2) or "") == want:
                found.add(int(match.group(1)))
        return found

    def write(self, shard: int, row_ids: Sequence[str], rows: Sequence[Outputs], failures: Sequence[Failure],
              outputs: Sequence[str], metadata: Mapping[str, str]) -> None:  # fmt: skip
        """Commit one shard: its failures first, then its rows (the rename that marks it finished)."""
        failures_path = self.folder / f"part-{shard:05d}.failures.jsonl"
        if failures:
            lines = "".join(json.dumps({"row_id": f.row_id, "reason": f.reason}) + "\n" for f in failures)
            _atomic_write_text(failures_path, lines)
        else:
            failures_path.unlink(missing_ok=True)
        columns = {name: [row[name] for row in rows] for name in outputs} if rows else {}
        target = self.part_path(shard)
        temp = self.folder / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if self.format is OutputFormat.PARQUET:
            _write_parquet(temp, list(row_ids), columns, metadata)
            os.replace(temp, target)
        else:
            _write_npy(temp, list(row_ids), columns)
            os.rename(temp, target)

    def collect_failures(self) -> int:
        """Rewrite OUT/failures.jsonl from every shard's failures; the number of failed rows."""
        lines: list[str] = []
        for path in sorted(self.folder.glob("part-*.failures.jsonl")):
            lines += path.read_text().splitlines(keepends=True)
        target = self.folder / "failures.jsonl"
        if lines:
            _atomic_write_text(target, "".join(lines))
        else:
            target.unlink(missing_ok=True)
        return len(lines)


def _atomic_write_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    temp.write_text(text)
    os.replace(temp, path)


def _stack(name: str, values: list[np.ndarray]) -> np.ndarray:
    shapes = {v.shape for v in values}
    if len(shapes) > 1:
        raise InvalidArgumentError(
            f"output '{name}' has rows of different shapes {sorted(shapes)[:3]}; kiln batch writes outputs whose "
            f"rows share a shape within a shard (use --shard-size 1 for fully dynamic outputs)"
        )
    array = np.stack(values)
    if array.dtype == np.object_:  # BYTES
        array = np.array([v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)],
                         dtype=np.object_).reshape(array.shape)  # fmt: skip
    return array


def _write_parquet(path: Path, row_ids: list[str], columns: dict[str, list[np.ndarray]],
                   metadata: Mapping[str, str]) -> None:  # fmt: skip
    from kiln.batch.tables import pyarrow

    pa = pyarrow()
    arrays, fields = [pa.array(row_ids, pa.string())], [pa.field("row_id", pa.string())]
    for name, values in columns.items():
        array = _stack(name, values)
        shape = array.shape[1:]
        flat = array.reshape(len(array), -1) if array.size else array.reshape(len(array), int(np.prod(shape)))
        if array.dtype == np.object_:
            column = pa.array(list(flat.reshape(-1)), pa.binary())
        else:
            column = pa.array(flat.reshape(-1))
        size = int(np.prod(shape)) if shape else 1
        if shape:
            column = pa.FixedSizeListArray.from_arrays(column, size)
        arrays.append(column)
        fields.append(pa.field(name, column.type, metadata={_SHAPE_KEY: json.dumps(list(shape)).encode()}))
    schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})
    pa.parquet.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _write_npy(folder: Path, row_ids: list[str], columns: dict[str, list[np.ndarray]]) -> None:
    folder.mkdir()
    np.save(folder / "row_id.npy", np.array(row_ids, dtype=np.str_))
    for name, values in columns.items():
        array = _stack(name, values)
        if array.dtype == np.object_:
            array = array.astype(np.bytes_)
        np.save(folder / f"{_safe(name)}.npy", array, allow_pickle=False)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def read_output(folder: Path) -> dict[str, np.ndarray]:
    """Every finished shard of ``folder``, in row order: ``{"row_id": ..., output name: array}``."""
    folder = Path(folder)
    store_format = OutputFormat(json.loads((folder / MANIFEST).read_text())["format"])
    store = ShardStore(folder, store_format)
    parts: list[dict[str, np.ndarray]] = []
    for shard in sorted(store.finished()):
        path = store.part_path(shard)
        part = _read_parquet(path) if store_format is OutputFormat.PARQUET else _read_npy(path)
        if len(part["row_id"]):
            parts.append(part)
    if not parts:
        return {"row_id": np.array([], dtype=np.str_)}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    from kiln.batch.tables import pyarrow

    table = pyarrow().parquet.read_table(path)
    out: dict[str, np.ndarray] = {}
    for field in table.schema:
        column = table.column(field.name).combine_chunks()
        shape = (
            json.loads(field.metadata[_SHAPE_KEY]) if field.metadata and _SHAPE_KEY in field.metadata else []
        )
        if shape:
            values = column.flatten().to_numpy(zero_copy_only=False)
            out[field.name] = values.reshape(len(column), *shape)
        else:
            out[field.name] = column.to_numpy(zero_copy_only=False)
    out["row_id"] = out["row_id"].astype(np.str_)
    return out


def _read_npy(folder: Path) -> dict[str, np.ndarray]:
    out = {"row_id": np.load(folder / "row_id.npy")}
    for path in sorted(folder.glob("*.npy")):
        if path.stem != "row_id":
            out[path.stem] = np.load(path)
    return out
