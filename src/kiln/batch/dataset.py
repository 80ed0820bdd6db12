"""Datasets of rows: a folder of images, ``.npy``/``.npz`` files, or Parquet/CSV columns (``tables``).

A :class:`Dataset` knows how many rows it has, each row's id and how to read one row as ``{input name: array
without a batch dimension}``. Reading a row may fail (an undecodable image, a file that is not an array): that
raises :class:`RowError` for that row only. :func:`check_row` then fits the arrays to the model's inputs
(datatype, dims) or raises :class:`RowError`. Datasets are cheap to pickle (the spec they were opened from), so a
Ray actor opens the same one.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.batch.options import Preprocessing
from kiln.errors import InvalidArgumentError
from kiln.model.version import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")
TABLE_SUFFIXES = (".parquet", ".csv")
Row = dict[str, np.ndarray]


class RowError(Exception):
    """One row cannot be used; ``reason`` is recorded in the failures file and the job goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DatasetSpec:
    """How to open a dataset (what travels to Ray actors)."""

    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    id_column: str | None = None
    preprocessing: Preprocessing | None = None  # resolved before opening (images only)
    preprocessing_source: str = ""  # where it came from, or why there is none (for messages)


class Dataset(ABC):
    kind: str = ""

    def __init__(self, spec: DatasetSpec, inputs: Mapping[str, TensorSpec]) -> None:
        self.spec = spec
        self.inputs = dict(inputs)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def row_id(self, index: int) -> str: ...

    @abstractmethod
    def read(self, index: int) -> Row:
        """The row's arrays as stored (raise RowError when it cannot be read)."""

    def files(self) -> list[Path]:
        return []

    def fingerprint(self) -> str:
        """Changes when the dataset's files change (sizes, modification times), so a rerun can tell."""
        digest = hashlib.sha256(f"{self.kind}:{len(self)}".encode())
        for path in self.files():
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_dataset, (self.spec, self.inputs))


def open_dataset(spec: DatasetSpec, inputs: Mapping[str, TensorSpec]) -> Dataset:
    """The dataset at ``spec.path``, by what it holds."""
    from kiln.batch import tables

    path = Path(spec.path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        raise InvalidArgumentError(f"input {path} does not exist")
    tabular = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    arrays = [p for p in files if p.suffix in (".npy", ".npz") and p.stem != "labels"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    found = [kind for kind, group in (("tables", tabular), ("arrays", arrays), ("images", images)) if group]
    if len(found) > 1:
        raise InvalidArgumentError(f"{path} mixes {' and '.join(found)}; give a folder that holds one kind")
    if tabular:
        return tables.open_table(spec, inputs, tabular)
    if arrays:
        return ArrayDataset(spec, inputs, arrays)
    if images:
        return ImageDataset(spec, inputs, images)
    raise InvalidArgumentError(f"{path} holds no images, .npy/.npz, Parquet or CSV files")


class ArrayDataset(Dataset):
    """``.npy`` files (one-input models: each a stack of rows or one row; or one ``<input>.npy`` per input) and
    ``.npz`` files (one array per input name). Row ids: ``file:row``."""

    kind = "arrays"

    def __init__(self, spec: DatasetSpec, inputs: Mapping[str, TensorSpec], paths: Sequence[Path]) -> None:
        super().__init__(spec, inputs)
        self.paths = list(paths)
        self._lock = threading.Lock()
        self._cache: dict[Path, dict[str, np.ndarray] | RowError] = {}
        named = {p.stem: p for p in self.paths if p.suffix == ".npy" and p.stem in self.inputs}
        self.per_input = len(self.inputs) > 1 and bool(named)
        if self.per_input:
            if set(named) != set(self.inputs):
                raise InvalidArgumentError(
                    f"per-input .npy files must cover every input: {sorted(self.inputs)}"
                )
            counts = {self._rows_in(p) for p in named.values()}
            if len(counts) != 1:
                raise InvalidArgumentError(
                    f"per-input .npy files hold different numbers of rows: {sorted(counts)}"
                )
            self.paths = [named[n] for n in self.inputs]
            self.starts = [0]
            self.total = counts.pop()
            return
        if len(self.inputs) > 1 and any(p.suffix == ".npy" for p in self.paths):
            raise InvalidArgumentError(
                f"a model with several inputs needs .npz files (one array per input name) or one .npy per input "
                f"named after it: {sorted(self.inputs)}"
            )
        self.starts = list(np.cumsum([0] + [self._rows_in(p) for p in self.paths]))
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return self.total

    def files(self) -> list[Path]:
        return self.paths

    def _locate(self, index: int) -> tuple[Path, int]:
        if self.per_input:
            return self.paths[0], index
        file = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.paths[file], index - int(self.starts[file])

    def row_id(self, index: int) -> str:
        if self.per_input:
            return str(index)
        path, row = self._locate(index)
        return f"{path.relative_to(self._root()).as_posix()}:{row}"

    def _root(self) -> Path:
        return Path(self.spec.path) if Path(self.spec.path).is_dir() else Path(self.spec.path).parent

    def read(self, index: int) -> Row:
        if self.per_input:
            return {
                name: self._arrays(path)[name][index]
                for name, path in zip(self.inputs, self.paths, strict=True)
            }
        path, row = self._locate(index)
        arrays = self._arrays(path)
        return {
            name: array if array.ndim == self._sample_rank(name) else array[row]
            for name, array in arrays.items()
        }

    def _sample_rank(self, name: str) -> int:
        return len(self.inputs[name].dims)

    def _rows_in(self, path: Path) -> int:
        """Rows a file holds; 1 for a file that cannot be read (that row then fails with the reason)."""
        arrays = self._cached(path)
        if isinstance(arrays, RowError) or not arrays:
            return 1
        name, array = next(iter(arrays.items()))
        if array.ndim == self._sample_rank(name) or array.ndim == 0:
            return 1
        return int(array.shape[0])

    def _arrays(self, path: Path) -> dict[str, np.ndarray]:
        """The file's arrays by input name; RowError when it cannot be read."""
        arrays = self._cached(path)
        if isinstance(arrays, RowError):
            raise arrays
        return arrays

    def _cached(self, path: Path) -> dict[str, np.ndarray] | RowError:
        with self._lock:
            cached = self._cache.get(path)
            if cached is None:
                cached = self._cache[path] = self._load(path)
                while len(self._cache) > 4:  # rows are read in order: keep the files in use
                    self._cache.pop(next(iter(self._cache)))
        return cached

    def _load(self, path: Path) -> dict[str, np.ndarray] | RowError:
        try:
            if path.suffix == ".npy":
                name = path.stem if self.per_input else next(iter(self.inputs))
                return {name: np.load(path, mmap_mode="r", allow_pickle=False)}
            with np.load(path, allow_pickle=False) as z:
                missing = sorted(set(self.inputs) - set(z.files))
                if missing:
                    return RowError(
                        f"{path.name} has no array for inputs {missing} (it holds {sorted(z.files)})"
                    )
                return {name: z[name] for name in self.inputs}
        except Exception as e:
            return RowError(f"cannot read {path.name}: {e}")


class ImageDataset(Dataset):
    """Image files, decoded, resized and scaled by ``kiln build``'s own image reader (``--preprocessing``: none,
    unit, inception, vgg, imagenet). Row ids: the file's path relative to the input folder."""

    kind = "images"

    def __init__(self, spec: DatasetSpec, inputs: Mapping[str, TensorSpec], paths: Sequence[Path]) -> None:
        super().__init__(spec, inputs)
        from kiln.perf.inputs import InputSpec

        if len(self.inputs) != 1:
            raise InvalidArgumentError(
                f"images need a model with one image input, this one has {sorted(inputs)}"
            )
        if spec.preprocessing is None:
            raise InvalidArgumentError(
                f"images need a pre-processing and none is recorded for this model ({spec.preprocessing_source}): "
                f"give --preprocessing none|unit|inception|vgg|imagenet"
            )
        name, tensor = next(iter(self.inputs.items()))
        dims = tensor.dims
        size = dims[1:] if len(dims) == 3 and dims[0] in (1, 3) else dims[:2]
        if len(dims) != 3 or any(d < 1 for d in size):
            raise InvalidArgumentError(
                f"input '{name}' has dims {list(dims)}: images need a fixed-size CHW or HWC image input"
            )
        self.paths = list(paths)
        self.name = name
        self.preprocessing = spec.preprocessing
        self._spec = [InputSpec(name, tensor.datatype.numpy, (-1, *dims))]
        self._root = Path(spec.path) if Path(spec.path).is_dir() else Path(spec.path).parent

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[Path]:
        return self.paths

    def row_id(self, index: int) -> str:
        return self.paths[index].relative_to(self._root).as_posix()

    def read(self, index: int) -> Row:
        from kiln.builder.data import load_image

        try:  # kiln build's own image reading and scaling: a sample {input: [1, ...]}
            sample = load_image(self.paths[index], self._spec, self.preprocessing)
        except Exception as e:
            raise RowError(f"cannot decode image: {e}") from None
        return {self.name: sample[self.name][0]}


def check_row(row: Row, inputs: Mapping[str, TensorSpec]) -> Row:
    """The row's arrays in the inputs' datatypes and dims (a flat vector of the right size is reshaped)."""
    fitted: Row = {}
    for name, spec in inputs.items():
        if name not in row:
            if spec.optional:
                continue
            raise RowError(f"no value for input '{name}'")
        fitted[name] = _fit(name, np.asarray(row[name]), spec)
    return fitted


def _fit(name: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.datatype.name == "BYTES":
        if array.dtype.kind not in "OSU":
            raise RowError(f"input '{name}' takes strings (BYTES), got {array.dtype}")
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        array = np.array(flat, dtype=np.object_).reshape(array.shape)
    else:
        array = _cast(name, array, spec.datatype.numpy)
    dims = spec.dims
    if array.shape != dims and not spec.accepts(array.shape):
        size = int(np.prod(dims)) if all(d > 0 for d in dims) else -1
        if array.ndim == 1 and array.size == size:
            return array.reshape(dims)
        raise RowError(f"input '{name}': shape {list(array.shape)} does not fit dims {list(dims)}")
    return array


def _cast(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if array.dtype.kind not in "biuf":
        raise RowError(f"input '{name}' takes {dtype}, got values of type {array.dtype}")
    cast = array.astype(dtype)
    if dtype.kind in "biu" and array.dtype.kind == "f" and not np.array_equal(cast, array):
        raise RowError(f"input '{name}' takes {dtype}; its values are not whole numbers")
    return cast


def shard_ranges(rows: int, shard_size: int) -> list[range]:
    return [range(start, min(rows, start + shard_size)) for start in range(0, rows, shard_size)]
