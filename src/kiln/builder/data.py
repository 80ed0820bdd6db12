"""Calibration and validation data: folders of .npy/.npz files or images, as lists of input dicts.

A sample is ``{input name: array with a leading batch dimension of 1}`` (for models whose first dimension is
a batch). Labels, when present, come from ``labels.npy`` / ``labels.txt`` in the folder or a ``labels`` array
in an ``.npz``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


@dataclass
class Dataset:
    samples: list[Sample]
    labels: np.ndarray | None = None  # one integer class per sample

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, holdout_fraction: float) -> tuple[Dataset, Dataset]:
        """(calibration, hold-out validation); the hold-out is the last ``holdout_fraction`` of the samples."""
        n = len(self.samples)
        k = min(n - 1, max(1, round(n * holdout_fraction))) if n > 1 else 0
        cut = n - k
        labels = self.labels
        return (
            Dataset(self.samples[:cut], None if labels is None else labels[:cut]),
            Dataset(self.samples[cut:], None if labels is None else labels[cut:]),
        )

    def batches(self, batch: int) -> Iterator[Sample]:
        """Samples concatenated into batches of ``batch`` (the last one may be smaller)."""
        for i in range(0, len(self.samples), batch):
            chunk = self.samples[i : i + batch]
            yield {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}


def load_dataset(
    folder: Path,
    inputs: Sequence[InputSpec],
    preprocessing: Preprocessing = Preprocessing.NONE,
    max_samples: int | None = None,
) -> Dataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"data folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    arrays = [p for p in files if p.suffix in (".npy", ".npz") and p.stem != "labels"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays:
        dataset = _load_arrays(arrays, inputs)
    elif images:
        dataset = Dataset([{inputs[0].name: _load_image(p, inputs, preprocessing)} for p in images])
    else:
        raise InvalidArgumentError(f"{folder} holds no .npy, .npz or image files")
    labels = _folder_labels(folder)
    if labels is not None:
        dataset.labels = labels
    if dataset.labels is not None and len(dataset.labels) != len(dataset.samples):
        raise InvalidArgumentError(
            f"{folder}: {len(dataset.labels)} labels for {len(dataset.samples)} samples"
        )
    if max_samples is not None and len(dataset) > max_samples:
        dataset = Dataset(
            dataset.samples[:max_samples], None if dataset.labels is None else dataset.labels[:max_samples]
        )
    return dataset


def _folder_labels(folder: Path) -> np.ndarray | None:
    if (folder / "labels.npy").is_file():
        return np.load(folder / "labels.npy").astype(np.int64).reshape(-1)
    if (folder / "labels.txt").is_file():
        lines = (folder / "labels.txt").read_text().split()
        return np.array([int(v) for v in lines], dtype=np.int64)
    return None


def _load_arrays(paths: Sequence[Path], inputs: Sequence[InputSpec]) -> Dataset:
    by_name = {i.name: i for i in inputs}
    samples: list[Sample] = []
    labels: list[np.ndarray] = []
    named = {p.stem: p for p in paths if p.suffix == ".npy" and p.stem in by_name}
    if named:  # one .npy per input, each a stack of samples
        if set(named) != set(by_name):
            raise InvalidArgumentError(f"per-input .npy files must cover every input: {sorted(by_name)}")
        stacks = {n: _as_batch(np.load(p), by_name[n], p) for n, p in named.items()}
        counts = {len(v) for v in stacks.values()}
        if len(counts) != 1:
            raise InvalidArgumentError(f"per-input .npy files hold different sample counts: {counts}")
        samples = [{n: v[i : i + 1] for n, v in stacks.items()} for i in range(counts.pop())]
        return Dataset(samples)
    for p in paths:
        if p.suffix == ".npz":
            with np.load(p) as z:
                missing = set(by_name) - set(z.files)
                if missing:
                    raise InvalidArgumentError(f"{p.name} lacks arrays for inputs {sorted(missing)}")
                stacks = {n: _as_batch(z[n], spec, p) for n, spec in by_name.items()}
                if "labels" in z.files:
                    labels.append(np.asarray(z["labels"], dtype=np.int64).reshape(-1))
        else:
            if len(inputs) != 1:
                raise InvalidArgumentError(
                    f"{p.name}: a model with several inputs needs .npz files (one array per input name) "
                    f"or one .npy per input named after it: {sorted(by_name)}"
                )
            stacks = {inputs[0].name: _as_batch(np.load(p), inputs[0], p)}
        n = len(next(iter(stacks.values())))
        samples.extend({k: v[i : i + 1] for k, v in stacks.items()} for i in range(n))
    return Dataset(samples, np.concatenate(labels) if labels else None)


def _as_batch(array: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    """A stack of samples with a leading batch axis, in the input's dtype."""
    rank = len(spec.shape)
    if array.ndim == rank - 1 and spec.batched:
        array = array[None]
    elif array.ndim != rank:
        raise InvalidArgumentError(
            f"{path.name}: array of shape {list(array.shape)} does not fit input '{spec.name}' "
            f"of shape {list(spec.shape)}"
        )
    for got, want in zip(array.shape[1:], spec.shape[1:], strict=True):
        if want != -1 and got != want:
            raise InvalidArgumentError(
                f"{path.name}: array of shape {list(array.shape)} does not fit input '{spec.name}' "
                f"of shape {list(spec.shape)}"
            )
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False))


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _load_image(path: Path, inputs: Sequence[InputSpec], preprocessing: Preprocessing) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("Pillow (image calibration data)", "images") from None
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidArgumentError("image data needs a model with one 4-D image input (NCHW or NHWC)")
    spec = inputs[0]
    nchw = spec.shape[1] in (1, 3)
    if nchw:
        channels, h, w = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        h, w, channels = spec.shape[1], spec.shape[2], spec.shape[3]
    if h < 1 or w < 1:
        raise InvalidArgumentError(f"input '{spec.name}' has a dynamic image size; give --shapes to fix it")
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
    return np.ascontiguousarray(x[None].astype(spec.dtype))


def random_dataset(
    inputs: Sequence[InputSpec], shapes: dict[str, tuple[int, ...]], count: int, seed: int
) -> Dataset:
    """Random inputs (standard normal floats, small non-negative integers) for checks without user data."""
    rng = np.random.default_rng(seed)
    return Dataset([random_inputs(list(inputs), shapes, 1, rng) for _ in range(count)])
