"""Calibration and validation data: folders of .npy/.npz files or images, read as iterators of input dicts.

A sample is ``{input name: array with a leading batch dimension of 1}`` (for models whose first dimension is
a batch). Labels, when present, come from ``labels.npy`` / ``labels.txt`` in the folder or a ``labels`` array
in an ``.npz``.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from kiln.builder.options import Preprocessing
from kiln.errors import InvalidArgumentError, MissingDependencyError
from kiln.perf.inputs import InputSpec, random_inputs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")
Sample = dict[str, np.ndarray]

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.BOOL: np.bool_,
}


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initialisers excluded), with numpy dtypes and -1 for dynamic dims."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type not in _ONNX_TO_NUMPY:
            raise InvalidArgumentError(
                f"input '{vi.name}' has ONNX element type {onnx.TensorProto.DataType.Name(tt.elem_type)}; "
                "kiln build handles numeric inputs only"
            )
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, np.dtype(_ONNX_TO_NUMPY[tt.elem_type]), shape))
    return specs


class _FileCache:
    """Arrays of the file being read, one file at a time: .npy files are memory-mapped, an .npz is read when its
    first sample is asked for and dropped when another file's sample is."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._arrays: dict[str, np.ndarray] = {}

    def arrays(self, path: Path) -> dict[str, np.ndarray]:
        if path != self._path:
            self._arrays = {}
            if path.suffix == ".npy":
                self._arrays = {"": np.load(path, mmap_mode="r")}
            else:
                with np.load(path) as z:
                    self._arrays = {k: z[k] for k in z.files}
            self._path = path
        return self._arrays


@dataclass(frozen=True)
class _Part:
    """Sample ``index`` of the stack ``key`` in ``path``, for input ``spec``."""

    path: Path
    key: str
    index: int
    spec: InputSpec


class _ArraySample:
    def __init__(self, parts: list[_Part], cache: _FileCache) -> None:
        self.parts = parts
        self.cache = cache

    def __call__(self) -> Sample:
        sample = {}
        for part in self.parts:
            array = self.cache.arrays(part.path)[part.key]
            if array.ndim == len(part.spec.shape) - 1:
                array = array[None]
            chunk = np.asarray(array[part.index : part.index + 1]).astype(part.spec.dtype, copy=False)
            sample[part.spec.name] = np.ascontiguousarray(chunk)
        return sample


@dataclass
class Dataset:
    """Samples loaded on demand: iterating reads them one by one (an iterator of input dicts), so a set larger
    than memory can calibrate. ``labels`` (one integer class per sample) are small and kept."""

    loaders: Sequence[Callable[[], Sample]]
    labels: np.ndarray | None = None

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], labels: np.ndarray | None = None) -> Dataset:
        return cls([functools.partial(dict, s) for s in samples], labels)

    def __len__(self) -> int:
        return len(self.loaders)

    def __iter__(self) -> Iterator[Sample]:
        for load in self.loaders:
            yield load()

    def take(self, count: int) -> list[Sample]:
        return [load() for load in self.loaders[:count]]

    def subset(self, start: int, stop: int | None = None) -> Dataset:
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset(self.loaders[start:stop], labels)

    def split(self, holdout_fraction: float, min_holdout: int = 0) -> tuple[Dataset, Dataset]:
        """(calibration, hold-out validation): the hold-out is the last ``holdout_fraction`` of the samples, or
        ``min_holdout`` if that is more and leaves at least half of them for calibration."""
        n = len(self)
        k = min(n - 1, max(1, round(n * holdout_fraction))) if n > 1 else 0
        if min_holdout > k and min_holdout <= n // 2:
            k = min_holdout
        return self.subset(0, n - k), self.subset(n - k)

    def batches(self, batch: int, full_only: bool = False) -> Iterator[Sample]:
        """Samples concatenated into batches of ``batch``, read as they are needed (the last one may be smaller,
        unless ``full_only``)."""
        chunk: list[Sample] = []
        for sample in self:
            chunk.append(sample)
            if len(chunk) == batch:
                yield _concat(chunk)
                chunk = []
        if chunk and not full_only:
            yield _concat(chunk)


def _concat(chunk: list[Sample]) -> Sample:
    return {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}


def load_dataset(
    folder: Path,
    inputs: Sequence[InputSpec],
    preprocessing: Preprocessing | None = None,
    max_samples: int | None = None,
    labels_file: Path | None = None,
) -> Dataset:
    """The samples of ``folder`` (read on demand). Images need ``preprocessing``: their scaling cannot be
    guessed, and a wrong one gives a silently wrong calibration."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"data folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    arrays = [p for p in files if p.suffix in (".npy", ".npz") and p.stem != "labels"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays:
        dataset = _index_arrays(arrays, inputs)
    elif images:
        if preprocessing is None:
            raise InvalidArgumentError(
                f"{folder} holds images: give --preprocessing (none|unit|inception|vgg|imagenet), the scaling "
                "the model was trained with; kiln build does not guess it (a wrong one calibrates and validates "
                "on wrong inputs without any error)"
            )
        _check_image_input(inputs)
        dataset = Dataset([functools.partial(load_image, p, inputs, preprocessing) for p in images])
    else:
        raise InvalidArgumentError(f"{folder} holds no .npy, .npz or image files")
    labels = read_labels(labels_file) if labels_file is not None else _folder_labels(folder)
    if labels is not None:
        dataset.labels = labels
    if dataset.labels is not None and len(dataset.labels) != len(dataset):
        raise InvalidArgumentError(f"{folder}: {len(dataset.labels)} labels for {len(dataset)} samples")
    if max_samples is not None and len(dataset) > max_samples:
        dataset = dataset.subset(0, max_samples)
    return dataset


def read_labels(path: Path) -> np.ndarray:
    """Integer classes, one per sample: a .npy array or whitespace-separated text."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"labels file {path} does not exist")
    if path.suffix == ".npy":
        return np.load(path).astype(np.int64).reshape(-1)
    try:
        return np.array([int(v) for v in path.read_text().split()], dtype=np.int64)
    except ValueError:
        raise InvalidArgumentError(f"{path}: labels must be integers separated by whitespace") from None


def _folder_labels(folder: Path) -> np.ndarray | None:
    for name in ("labels.npy", "labels.txt"):
        if (folder / name).is_file():
            return read_labels(folder / name)
    return None


def _stack_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of a .npy/.npz file from their headers, without reading the data."""
    if path.suffix == ".npy":
        return {"": tuple(np.load(path, mmap_mode="r").shape)}
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shapes[info.filename[:-4]] = tuple(read(f)[0])
    return shapes


def _index_arrays(paths: Sequence[Path], inputs: Sequence[InputSpec]) -> Dataset:
    by_name = {i.name: i for i in inputs}
    cache = _FileCache()
    named = {p.stem: p for p in paths if p.suffix == ".npy" and p.stem in by_name}
    if named:  # one .npy per input, each a stack of samples
        if set(named) != set(by_name):
            raise InvalidArgumentError(f"per-input .npy files must cover every input: {sorted(by_name)}")
        counts = {n: _count(_stack_shapes(p)[""], by_name[n], p) for n, p in named.items()}
        if len(set(counts.values())) != 1:
            raise InvalidArgumentError(
                f"per-input .npy files hold different sample counts: {set(counts.values())}"
            )
        n = next(iter(counts.values()))
        # each input from its own file: one mapped array per file, so no cache eviction between them
        caches = {name: _FileCache() for name in named}
        loaders: list[Callable[[], Sample]] = [
            _MultiSample([(_Part(named[k], "", i, by_name[k]), caches[k]) for k in named]) for i in range(n)
        ]
        return Dataset(loaders)
    loaders = []
    labels: list[np.ndarray] = []
    for p in paths:
        shapes = _stack_shapes(p)
        if p.suffix == ".npz":
            missing = set(by_name) - set(shapes)
            if missing:
                raise InvalidArgumentError(f"{p.name} lacks arrays for inputs {sorted(missing)}")
            keys = {n: n for n in by_name}
            if "labels" in shapes:
                with np.load(p) as z:
                    labels.append(np.asarray(z["labels"], dtype=np.int64).reshape(-1))
        else:
            if len(inputs) != 1:
                raise InvalidArgumentError(
                    f"{p.name}: a model with several inputs needs .npz files (one array per input name) "
                    f"or one .npy per input named after it: {sorted(by_name)}"
                )
            keys = {inputs[0].name: ""}
        counts = {_count(shapes[key], by_name[name], p) for name, key in keys.items()}
        if len(counts) != 1:
            raise InvalidArgumentError(f"{p.name}: its arrays hold different sample counts: {counts}")
        for i in range(counts.pop()):
            loaders.append(
                _ArraySample([_Part(p, key, i, by_name[name]) for name, key in keys.items()], cache)
            )
    return Dataset(loaders, np.concatenate(labels) if labels else None)


class _MultiSample:
    def __init__(self, parts: list[tuple[_Part, _FileCache]]) -> None:
        self.parts = parts

    def __call__(self) -> Sample:
        sample: Sample = {}
        for part, cache in self.parts:
            sample.update(_ArraySample([part], cache)())
        return sample


def _count(shape: tuple[int, ...], spec: InputSpec, path: Path) -> int:
    """Samples in a stack of ``shape`` for input ``spec``, after checking that it fits."""
    rank = len(spec.shape)
    if len(shape) == rank - 1 and spec.batched:
        shape = (1, *shape)
    ok = len(shape) == rank and all(w in (-1, g) for g, w in zip(shape[1:], spec.shape[1:], strict=True))
    if not ok:
        raise InvalidArgumentError(
            f"{path.name}: array of shape {list(shape)} does not fit input '{spec.name}' "
            f"of shape {list(spec.shape)}"
        )
    return shape[0]


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _check_image_input(inputs: Sequence[InputSpec]) -> None:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidArgumentError("image data needs a model with one 4-D image input (NCHW or NHWC)")
    spec = inputs[0]
    h, w = spec.shape[1:3] if spec.shape[3] in (1, 3) else spec.shape[2:4]
    if h < 1 or w < 1:
        raise InvalidArgumentError(f"input '{spec.name}' has a dynamic image size; give --shapes to fix it")


def load_image(path: Path, inputs: Sequence[InputSpec], preprocessing: Preprocessing) -> Sample:
    """One image file as the model's input sample: decoded, resized to the input's H x W, laid out NCHW or NHWC
    and scaled by ``preprocessing`` (what kiln build's calibration and kiln batch both use)."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("Pillow (image calibration data)", "images") from None
    spec = inputs[0]
    nchw = spec.shape[1] in (1, 3)
    channels, h, w = (
        (spec.shape[1], spec.shape[2], spec.shape[3]) if nchw else (spec.shape[3], *spec.shape[1:3])
    )
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if preprocessing is Preprocessing.UNIT:
        x = x / 255.0
    elif preprocessing is Preprocessing.INCEPTION:
        x = x / 127.5 - 1.0
    elif preprocessing is Preprocessing.VGG:
        x = x[..., ::-1] - _VGG_MEAN_BGR if channels == 3 else x - _VGG_MEAN_BGR.mean()
    elif preprocessing is Preprocessing.IMAGENET:
        x = (x / 255.0 - _IMAGENET_MEAN[:channels]) / _IMAGENET_STD[:channels]
    if nchw:
        x = x.transpose(2, 0, 1)
    return {spec.name: np.ascontiguousarray(x[None].astype(spec.dtype))}


def is_image_folder(folder: Path | None) -> bool:
    """A folder whose samples are images (no .npy/.npz arrays)."""
    if folder is None or not Path(folder).is_dir():
        return False
    files = [p for p in Path(folder).iterdir() if p.is_file()]
    has_arrays = any(p.suffix in (".npy", ".npz") and p.stem != "labels" for p in files)
    return not has_arrays and any(p.suffix.lower() in IMAGE_SUFFIXES for p in files)


def random_dataset(
    inputs: Sequence[InputSpec], shapes: dict[str, tuple[int, ...]], count: int, seed: int
) -> Dataset:
    """Random inputs (standard normal floats, small non-negative integers) for checks without user data."""
    rng = np.random.default_rng(seed)
    return Dataset.from_samples([random_inputs(list(inputs), shapes, 1, rng) for _ in range(count)])
