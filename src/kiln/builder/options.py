"""Typed options of ``kiln build``: the CLI parses its flags into these, the Python API takes them as they are."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import InvalidArgumentError


class Precision(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BEST = "best"  # try fp32, fp16 and int8; keep the fastest that passes the accuracy gate


class CalibrationMethod(enum.Enum):
    ENTROPY = "entropy"
    MINMAX = "minmax"
    PERCENTILE = "percentile"


class Target(enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    NCNN = "ncnn"  # via pnnx; FP32 compute, FP16-stored weights for --precision fp16


class Device(enum.Enum):
    CPU = "cpu"
    GPU = "gpu"  # CUDA / TensorRT execution providers (onnxruntime target); a clear error without a GPU


class Preprocessing(enum.Enum):
    """How images become float NCHW tensors (as TensorRT's samples and Triton's image_client name them)."""

    NONE = "none"  # uint8 values as float, 0..255
    UNIT = "unit"  # x / 255
    INCEPTION = "inception"  # x / 127.5 - 1
    VGG = "vgg"  # BGR, minus the ImageNet channel means (0..255 scale)
    IMAGENET = "imagenet"  # x / 255, minus mean, over std (torchvision)


def parse_shape_spec(text: str) -> dict[str, tuple[int, ...]]:
    """``name:1x3x224x224,other:1x128`` (trtexec's syntax) -> ``{"name": (1, 3, 224, 224), ...}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise InvalidArgumentError(f"shape '{item}' must be NAME:DxDxD, e.g. input:1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise InvalidArgumentError(
                f"shape '{item}': dimensions must be integers separated by 'x'"
            ) from None
        if any(d < 1 for d in shape):
            raise InvalidArgumentError(f"shape '{item}': dimensions must be >= 1")
        shapes[name] = shape
    return shapes


def format_shape_spec(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items())


@dataclass(frozen=True)
class ShapeProfile:
    """Dynamic-shape profile, as trtexec's --minShapes/--optShapes/--maxShapes. ``opt`` is also the shape used
    for calibration-free runs (validation inputs, benchmark)."""

    min: dict[str, tuple[int, ...]] = field(default_factory=dict)
    opt: dict[str, tuple[int, ...]] = field(default_factory=dict)
    max: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def fixed(cls, shapes: dict[str, tuple[int, ...]]) -> ShapeProfile:
        return cls(dict(shapes), dict(shapes), dict(shapes))

    def is_empty(self) -> bool:
        return not (self.min or self.opt or self.max)


@dataclass(frozen=True)
class Tolerance:
    """The accuracy gate. ``None`` leaves a criterion unchecked. ``max_rel_error`` is max |ref - out| divided by
    max |ref| per output (normalised, so outputs near zero don't blow it up)."""

    min_cosine: float | None = None
    max_rel_error: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None  # in points of accuracy (0.5 = half a percentage point)

    @classmethod
    def default_for(cls, precision: Precision) -> Tolerance:
        if precision is Precision.FP32:
            return cls(min_cosine=0.99999, max_rel_error=1e-3, min_top1_agreement=0.99, max_accuracy_drop=0.1)
        if precision is Precision.FP16:
            return cls(min_cosine=0.9995, max_rel_error=2e-2, min_top1_agreement=0.97, max_accuracy_drop=0.5)
        return cls(min_cosine=0.99, max_rel_error=None, min_top1_agreement=0.9, max_accuracy_drop=1.0)

    @classmethod
    def parse(cls, text: str, base: Tolerance | None = None) -> Tolerance:
        """``cosine=0.999,rel=0.01,abs=0.1,top1=0.95,accuracy_drop=0.5`` over ``base`` (the precision's default)."""
        keys = {
            "cosine": "min_cosine",
            "rel": "max_rel_error",
            "abs": "max_abs_error",
            "top1": "min_top1_agreement",
            "accuracy_drop": "max_accuracy_drop",
        }
        values = dict(vars(base or cls()))
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in keys:
                raise InvalidArgumentError(
                    f"tolerance '{item}' must be KEY=VALUE with KEY one of {', '.join(keys)}"
                )
            try:
                values[keys[key]] = None if value.lower() == "none" else float(value)
            except ValueError:
                raise InvalidArgumentError(f"tolerance '{item}': '{value}' is not a number") from None
        return cls(**values)


@dataclass(frozen=True)
class CalibrationOptions:
    data: Path | None = None  # folder of .npy/.npz files or images
    method: CalibrationMethod | None = (
        None  # None: the target's default (entropy for ONNX Runtime, NNCF's own)
    )
    preprocessing: Preprocessing | None = None  # images: required (or recorded for the model folder)
    max_samples: int = 256
    holdout_fraction: float = 0.2  # kept aside as validation data when no --validation-data is given
    per_channel: bool = True
    reduce_range: bool | None = (
        None  # 7-bit weights; None: when the CPU's U8S8 kernels saturate (kiln.builder.cpu)
    )
    percentile: float = 99.999
    keep_fp32: tuple[str, ...] = ()  # node names (or op types) left in float
    op_types: tuple[str, ...] = ()  # op types to quantise; () = the default for the model (see int8_ort)
    mixed_precision: bool = True  # keep the most sensitive layers in float until the gate passes
    search_budget_s: float = 600.0  # wall-clock bound of the mixed-precision search
    search_samples: int = 128  # calibration samples the search measures on (the gate uses validation data)


@dataclass(frozen=True)
class BuildOptions:
    source: Path
    output: Path  # REPO/NAME
    precision: Precision = Precision.FP32
    target: Target = Target.ONNXRUNTIME
    device: Device = Device.CPU
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    validation_data: Path | None = (
        None  # .npy/.npz/images; labels.npy (or "labels" in .npz) for task accuracy
    )
    validation_labels: Path | None = None  # one integer class per validation sample (.npy or text)
    validation_samples: int = 128  # random samples when no validation data is given
    min_validation_samples: int = 100  # the gate refuses to pass on fewer
    tolerance: Tolerance | None = None  # None: Tolerance.default_for(precision)
    accept_accuracy_drop: bool = False
    profile: ShapeProfile = field(default_factory=ShapeProfile)
    example_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # torch sources: input shapes
    fp16_keep_io_types: bool = True
    optimize: bool = True
    max_batch_size: int | None = None  # None: from the max profile, else 8 for batchable models
    threads: int | None = None  # intra-op threads recorded in config.pbtxt (None: the server's default)
    version: int | None = None  # None: next free version number
    labels: Path | None = None  # class names, one per line: copied into the model folder as label_filename
    benchmark: bool = True  # measure batch sizes to pick dynamic_batching preferred sizes
    seed: int = 0
    progress: bool = True

    def tolerance_for(self, precision: Precision) -> Tolerance:
        return self.tolerance or Tolerance.default_for(precision)
