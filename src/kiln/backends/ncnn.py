"""ncnn backend (``backend: "ncnn"``, a Kiln platform of its own; ``model.param`` + ``model.bin`` in the version
folder), on CPU through the ``ncnn`` PyPI package. Imported only when such a model is loaded.

- Names: the param file's blob names are the tensor names: the inputs are the ``Input`` layers' blobs, the outputs
  the blobs no layer consumes (``net.input_names()`` / ``net.output_names()``). A config may name any other blob
  as an output too (ncnn extracts intermediate blobs).
- Datatype: FP32 only (ncnn's Mat holds floats); ncnn's FP16/BF16 storage and arithmetic are switched off, so the
  model computes in FP32 as its ONNX source did (``.bin`` weights stored in FP16 are widened on load).
- Batching: an ncnn Mat has no batch dimension (one sample, up to 4 dims: ``w``, ``h,w``, ``c,h,w``, ``c,d,h,w``).
  In Kiln every ncnn tensor's first dimension is the sample dimension: with ``max_batch_size > 0`` it is
  Triton's batch dimension, with ``max_batch_size: 0`` the first of ``dims``. The backend runs the net once per
  sample (one extractor each) and stacks the outputs; an output is reshaped to the config's dims when they are
  fixed and hold the same number of values (ncnn drops size-1 dimensions).
- Signature: when every ``Input`` layer carries its shape (``0=w 1=h 11=d 2=c``, as ``kiln build --target ncnn``
  writes), the inputs are known and one run on zeros gives the outputs' shapes, so the config auto-completes;
  otherwise (pnnx's own output, hand-written models) ``config.pbtxt`` must list the inputs and outputs.
- ``num_threads`` (config parameter; default cores / instances).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import (
    InternalError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelConfigError,
    ModelLoadError,
)
from kiln.types.datatypes import from_numpy

PARAM_MAGIC = "7767517"
MAX_SAMPLE_RANK = 4  # ncnn Mat: w / h,w / c,h,w / c,d,h,w


def import_ncnn():  # type: ignore[no-untyped-def]
    """The ncnn module, or a clear error naming the extra to install."""
    try:
        import ncnn
    except ImportError:
        raise MissingDependencyError("ncnn", "ncnn") from None
    return ncnn


def input_shapes(param: Path) -> dict[str, tuple[int, ...] | None]:
    """Each ``Input`` layer's blob and the per-sample shape its params give (``c, d, h, w`` with the unset ones
    left out), or None where the layer gives none."""
    lines = [line.split() for line in param.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != [PARAM_MAGIC]:
        raise ModelLoadError(f"{param.name} is not an ncnn param file (the first line must be {PARAM_MAGIC})")
    shapes: dict[str, tuple[int, ...] | None] = {}
    for parts in lines[2:]:
        if len(parts) < 4 or parts[0] != "Input":
            continue
        bottoms, tops = int(parts[2]), int(parts[3])
        names = parts[4 + bottoms : 4 + bottoms + tops]
        params = dict(p.split("=", 1) for p in parts[4 + bottoms + tops :] if "=" in p)
        w, h, d, c = (int(float(params.get(k, "0"))) for k in ("0", "1", "11", "2"))
        dims = (c, d, h, w) if d > 0 else (c, h, w)
        shape = tuple(x for x in dims if x > 0)
        for name in names:
            shapes[name] = shape or None
    return shapes


class NcnnBackend(Backend):
    name = "ncnn"
    platform = "ncnn"
    default_filename = "model.param"
    threads_parameter = "num_threads"

    def load(self) -> None:
        try:
            ncnn = import_ncnn()
        except MissingDependencyError as e:
            raise ModelLoadError(e.message) from None
        if self.context.kind == "GPU":
            raise ModelLoadError("the ncnn backend serves on CPU only in Kiln; use instance_group KIND_CPU")
        threads = self.int_parameter("num_threads", self.default_threads())
        if threads < 1:
            raise ModelConfigError(
                f"model '{self.config.name}': parameter 'num_threads' must be >= 1, got {threads}"
            )
        weights = self.model_path.with_suffix(".bin")
        if not self.model_path.is_file():
            raise ModelLoadError(f"{self.model_path} does not exist")
        if not weights.is_file():
            raise ModelLoadError(f"{self.model_path.name} has no weights file {weights.name} beside it")
        for kind, entries in (("input", self.config.input), ("output", self.config.output)):
            for entry in entries:
                if entry.data_type not in (model_config_pb2.TYPE_INVALID, model_config_pb2.TYPE_FP32):
                    raise ModelConfigError(
                        f"model '{self.config.name}' {kind} '{entry.name}': the ncnn backend takes TYPE_FP32 "
                        f"only, got {model_config_pb2.DataType.Name(entry.data_type)}"
                    )
        self._hints = input_shapes(self.model_path)
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = threads
        for switch in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(opt, switch, False)  # FP32 compute, as the model's source
        if net.load_param(str(self.model_path)) != 0:
            raise ModelLoadError(f"ncnn could not read {self.model_path.name}")
        if net.load_model(str(weights)) != 0:
            raise ModelLoadError(
                f"ncnn could not read {weights.name} (does it match {self.model_path.name}?)"
            )
        self._net = net
        self._threads = threads
        self._lock = threading.Lock()
        self._inputs = list(net.input_names())
        self._outputs = list(net.output_names())
        blobs = {b.name for b in net.blobs()}
        for entry in self.config.input:
            if entry.name not in self._inputs:
                raise ModelConfigError(
                    f"model '{self.config.name}' input '{entry.name}': no such input blob in "
                    f"{self.model_path.name}; its inputs are {self._inputs}"
                )
        for entry in self.config.output:
            if entry.name not in blobs:
                raise ModelConfigError(
                    f"model '{self.config.name}' output '{entry.name}': no such blob in {self.model_path.name}; "
                    f"its outputs are {self._outputs}"
                )
        skip = 0 if self.config.max_batch_size > 0 else 1  # the sample dimension is in dims when not batching
        self._reshape = {
            e.name: tuple(e.dims)[skip:]
            for e in self.config.output
            if not e.HasField("reshape") and e.dims and all(d > 0 for d in tuple(e.dims)[skip:])
        }
        self._signature = self._read_signature()

    def _read_signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        shapes = [self._hints.get(name) for name in self._inputs]
        if not self._inputs or any(s is None for s in shapes):
            return None  # the param file does not say the input shapes: config.pbtxt lists them
        fp32 = from_numpy(np.dtype(np.float32))
        feeds = {n: np.zeros((1, *s), np.float32) for n, s in zip(self._inputs, shapes, strict=True) if s}
        try:
            produced = self._run(feeds, self._outputs)
        except (InvalidArgumentError, InternalError) as e:
            raise ModelLoadError(
                f"ncnn could not run {self.model_path.name} on its declared input shapes: {e}"
            ) from None
        return (
            [ModelIO(n, fp32, (-1, *feeds[n].shape[1:])) for n in self._inputs],
            [ModelIO(n, fp32, (-1, *produced[n].shape[1:])) for n in self._outputs],
        )

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        return self._signature

    def settings(self) -> dict[str, object]:
        try:
            from ncnn import __version__ as version
        except ImportError:  # pragma: no cover
            version = "?"
        out: dict[str, object] = {"runtime": f"ncnn {version}", "device": "CPU"}
        if hasattr(self, "_threads"):
            out["num_threads"] = self._threads
            out["batching"] = "one ncnn run per sample"
            out["signature"] = "param file" if self._signature is not None else "config.pbtxt"
        return out

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:  # one net per instance; the core runs at most one batch per instance anyway
            results = self._run(inputs, outputs)
        return {name: self._fit(name, value) for name, value in results.items()}

    def _run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import ncnn

        arrays = {name: np.asarray(a) for name, a in inputs.items()}
        for name, array in arrays.items():
            if not 2 <= array.ndim <= MAX_SAMPLE_RANK + 1:
                raise InvalidArgumentError(
                    f"input '{name}' has shape {list(array.shape)}: ncnn takes 1 to {MAX_SAMPLE_RANK} dimensions "
                    f"per sample after the first (sample) dimension"
                )
            hint = self._hints.get(name)
            if hint is not None and array.shape[1:] != hint:
                # ncnn does not check shapes itself: a wrong one computes garbage, or worse
                raise InvalidArgumentError(
                    f"input '{name}' has shape {list(array.shape)}; {self.model_path.name} takes "
                    f"{[-1, *hint]} (one sample of {list(hint)} per row of the first dimension)"
                )
        counts = {a.shape[0] for a in arrays.values()}
        if len(counts) != 1:
            raise InvalidArgumentError(
                "ncnn inputs must share their first (sample) dimension: got "
                + ", ".join(f"{n}{list(a.shape)}" for n, a in arrays.items())
            )
        (count,) = counts
        collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for i in range(count):
            extractor = self._net.create_extractor()
            mats: list[Any] = []  # kept alive until the outputs are extracted
            for name, array in arrays.items():
                sample = np.ascontiguousarray(array[i], dtype=np.float32)
                mat = ncnn.Mat(sample)
                mats.append((sample, mat))
                if extractor.input(name, mat) != 0:
                    raise InvalidArgumentError(f"'{name}' is not an input of {self.model_path.name}")
            for name in outputs:
                code, mat = extractor.extract(name)
                if code != 0:
                    raise InternalError(f"ncnn could not compute output '{name}' (error {code})")
                collected[name].append(np.array(mat, dtype=np.float32, copy=True))
        try:
            return {name: np.stack(values) for name, values in collected.items()}
        except ValueError:
            raise InternalError(
                "ncnn gave outputs of different shapes for the samples of one batch: "
                + ", ".join(f"{n}{[list(v.shape) for v in vs]}" for n, vs in collected.items())
            ) from None

    def _fit(self, name: str, value: np.ndarray) -> np.ndarray:
        shape = self._reshape.get(name)
        if shape is not None and value.shape[1:] != shape and value[0].size == int(np.prod(shape)):
            return value.reshape(value.shape[0], *shape)
        return value

    def unload(self) -> None:
        self.__dict__.pop("_net", None)
